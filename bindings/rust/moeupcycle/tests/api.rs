use moeupcycle::{LayerConfig, MoELayer, Model, Runtime, Weight};
use std::path::PathBuf;

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}

#[test]
fn threading_markers() {
    assert_send::<Runtime>();
    assert_sync::<Runtime>();
    assert_send::<MoELayer<'static>>();
    assert_send::<Model<'static>>();
}

#[test]
fn version_matches_header() {
    assert_eq!(moeupcycle::version_number(), moeupcycle_sys::MOE_VERSION_NUMBER);
    assert_eq!(moeupcycle::version_string(), moeupcycle_sys::MOE_VERSION_STRING);
}

#[test]
fn runtime_info() {
    let rt = Runtime::new(2).unwrap();
    let info = rt.info().unwrap();
    assert_eq!(info.workers, 2);
    assert!(info.cores >= 1);
}

#[test]
fn invalid_config_is_error_with_field() {
    let rt = Runtime::new(2).unwrap();
    // top_k > experts
    let err = MoELayer::new(&rt, LayerConfig::new(16, 32, 4, 5)).err().expect("must fail");
    assert_eq!(err.code, -1);
    assert!(err.message.contains("top_k"), "message: {}", err.message);
    // hidden not set
    let err = MoELayer::new(&rt, LayerConfig::new(0, 32, 4, 2)).err().expect("must fail");
    assert_eq!(err.code, -1);
    assert!(err.message.contains("hidden"), "message: {}", err.message);
    assert!(err.to_string().contains("hidden"));
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert!(!boxed.to_string().is_empty());
}

#[test]
fn small_layer_forward_backward() {
    let rt = Runtime::new(2).unwrap();
    let (h, t) = (16usize, 3usize);
    let mut layer = MoELayer::new(&rt, LayerConfig::new(16, 32, 4, 2)).unwrap();
    layer.init_random(7, 0.1).unwrap();
    let x: Vec<f32> = (0..t * h).map(|i| ((i as f32) * 0.37).sin()).collect();
    let y = layer.forward(&x, t).unwrap();
    assert_eq!(y.len(), t * h);
    assert!(y.iter().all(|v| v.is_finite()));
    assert!(y.iter().any(|&v| v != 0.0));

    let stats = layer.stats().unwrap();
    assert_eq!(stats.tokens, 3);
    assert_eq!(stats.assignments, 6);
    assert_eq!(stats.tokens_per_expert.iter().sum::<u64>(), 6);

    let gx = layer.backward(&vec![1.0f32; t * h]).unwrap();
    assert_eq!(gx.len(), t * h);
    assert!(gx.iter().all(|v| v.is_finite()));
    let g = layer.grad(Weight::Router, -1).unwrap();
    assert_eq!(g.len(), 4 * 16);
    assert!(g.iter().any(|&v| v != 0.0));
    layer.zero_grad().unwrap();
    assert!(layer.grad(Weight::Router, -1).unwrap().iter().all(|&v| v == 0.0));

    // backward consumed the saved forward
    assert_eq!(layer.backward(&vec![1.0f32; t * h]).unwrap_err().code, -1);

    // set_weight / weight round trip for one expert
    let n = layer.weight_count(Weight::Gate, 1).unwrap();
    assert_eq!(n, 32 * 16);
    let w: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
    layer.set_weight(Weight::Gate, 1, &w).unwrap();
    assert_eq!(layer.weight(Weight::Gate, 1).unwrap(), w);

    // inference forward gives the same output as a saved one
    let y2 = layer.infer(&x, t).unwrap();
    let y3 = layer.forward(&x, t).unwrap();
    assert_eq!(y2, y3);
}

#[test]
fn slice_length_mismatch_is_caught_in_rust() {
    let rt = Runtime::new(1).unwrap();
    let mut layer = MoELayer::new(&rt, LayerConfig::new(16, 32, 4, 2)).unwrap();
    let err = layer.forward(&[0.0; 47], 3).unwrap_err();
    assert_eq!(err.code, -1);
    assert!(err.message.contains("x: 47"), "{}", err.message);
    let err = layer.set_weight(Weight::Router, -1, &[0.0; 3]).unwrap_err();
    assert_eq!(err.code, moeupcycle::MOE_ERR_SHAPE);
    // backward without forward, and with wrong length after forward
    assert_eq!(layer.backward(&[0.0; 48]).unwrap_err().code, -1);
    layer.forward(&[0.0; 48], 3).unwrap();
    let err = layer.backward(&[0.0; 10]).unwrap_err();
    assert!(err.message.contains("grad_out"), "{}", err.message);
}

#[test]
fn layers_on_threads() {
    let rt = Runtime::new(2).unwrap();
    std::thread::scope(|s| {
        for seed in 0..2u64 {
            let rt = &rt;
            s.spawn(move || {
                let mut l = MoELayer::new(rt, LayerConfig::new(16, 32, 4, 2)).unwrap();
                l.init_random(seed, 0.1).unwrap();
                let y = l.forward(&[0.5; 32], 2).unwrap();
                assert!(y.iter().all(|v| v.is_finite()));
            });
        }
    });
}

#[test]
fn smollm2_tokenize_and_logits() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../.cache/materials/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipping: {} not found", path.display());
        return;
    }
    let rt = Runtime::new(0).unwrap();
    let mut model = Model::load(&rt, &path).unwrap();
    let ids = model.tokenize("The capital of France is").unwrap();
    assert_eq!(ids, vec![504, 3575, 282, 4649, 314]);
    assert_eq!(model.detokenize(&ids, true).unwrap(), "The capital of France is");
    let v = model.vocab_size();
    let logits = model.logits(&ids).unwrap();
    assert_eq!(logits.len(), ids.len() * v);
    assert!(logits.iter().all(|x| x.is_finite()));
    let last = &logits[(ids.len() - 1) * v..];
    let argmax = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
    let word = model.detokenize(&[argmax as i32], true).unwrap();
    eprintln!("next token after prompt: {argmax} {word:?}");
    assert!(Model::load(&rt, "/nonexistent/model.gguf").is_err());
}
