use moeupcycle::{
    Dtype, DropSelect, Format, GenerateOptions, GranularScaling, Importance, LayerConfig, LrSchedule, Method, MoELayer, Model, ModelOptions,
    NonFinite, PartitionSelect, Placement, RouterInit, Routing, Runtime, StopReason, TextFormat, TrainOnly, Trainer,
    TrainerOptions, UpcycleOptions, Weight, ALL_EXPERTS, MOE_ERR_BUFFER_TOO_SMALL, MOE_ERR_EXISTS,
    MOE_ERR_INVALID_ARGUMENT, MOE_ERR_SHAPE,
};
use moeupcycle_sys as sys;
use std::fmt::Debug;
use std::path::PathBuf;
use std::str::FromStr;

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}

#[test]
fn threading_markers() {
    assert_send::<Runtime>();
    assert_sync::<Runtime>();
    assert_send::<MoELayer<'static>>();
    assert_send::<Model<'static>>();
    assert_send::<Trainer<'static, 'static>>();
}

#[test]
fn version_matches_header() {
    assert_eq!(moeupcycle::version_number(), sys::MOE_VERSION_NUMBER);
    assert_eq!(moeupcycle::version_string(), sys::MOE_VERSION_STRING);
    assert_eq!(moeupcycle::version_string(), "0.8.0");
}

// ------------------------------------------------------------------ names

fn upper_underscores(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

/// One enum: the library's names of ALL (in the header's order) are
/// `expected`, values run from 0 without gaps, and every name round-trips
/// through from_name (also upper case with '_'); an unknown name is an
/// invalid argument whose message lists the valid names.
fn check_names<E>(all: &[E], expected: &[&str], name: fn(E) -> &'static str, raw: fn(E) -> i32)
where
    E: Copy + PartialEq + Debug + FromStr<Err = moeupcycle::Error>,
{
    let names: Vec<&str> = all.iter().map(|&e| name(e)).collect();
    assert_eq!(names, expected);
    for (i, &e) in all.iter().enumerate() {
        assert_eq!(raw(e), i as i32, "{e:?}");
        assert_eq!(expected[i].parse::<E>().unwrap(), e);
        assert_eq!(upper_underscores(expected[i]).parse::<E>().unwrap(), e);
    }
    let err = "no-such-name".parse::<E>().unwrap_err();
    assert_eq!(err.code, MOE_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("no-such-name"), "{}", err.message);
    for n in expected {
        assert!(err.message.contains(n), "{n} missing from: {}", err.message);
    }
    assert!("nul\0name".parse::<E>().is_err());
}

#[test]
fn enum_names_come_from_the_library() {
    check_names(&Dtype::ALL[1..], &["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"], Dtype::name, Dtype::raw);
    check_names(Method::ALL, &["copy", "drop", "noise", "granular", "partition"], Method::name, Method::raw);
    check_names(
        RouterInit::ALL,
        &["normal", "uniform", "zeros", "kmeans", "prompts"],
        RouterInit::name,
        RouterInit::raw,
    );
    check_names(
        Routing::ALL,
        &["softmax-topk-renorm", "softmax-topk", "topk-softmax", "sigmoid-topk", "sigmoid-topk-renorm"],
        Routing::name,
        Routing::raw,
    );
    check_names(Format::ALL, &["mixtral", "qwen2-moe"], Format::name, Format::raw);
    check_names(
        PartitionSelect::ALL,
        &["random", "uniform", "importance", "activation", "cluster"],
        PartitionSelect::name,
        PartitionSelect::raw,
    );
    check_names(Importance::ALL, &["l1", "l2", "freq"], Importance::name, Importance::raw);
    check_names(DropSelect::ALL, &["random", "least-important"], DropSelect::name, DropSelect::raw);
    check_names(GranularScaling::ALL, &["down", "cube-root", "none"], GranularScaling::name, GranularScaling::raw);
    check_names(&Placement::ALL[1..], &["row-slice", "expert", "interleave", "none"], Placement::name, Placement::raw);
    check_names(TextFormat::ALL, &["plain", "json"], TextFormat::name, TextFormat::raw);
    check_names(
        Weight::ALL,
        &["router", "gate", "up", "down", "shared-gate", "shared-up", "shared-down", "shared-expert-gate"],
        Weight::name,
        Weight::raw,
    );
    check_names(StopReason::ALL, &["length", "eos", "callback"], StopReason::name, StopReason::raw);
    check_names(TrainOnly::ALL, &["all", "moe", "routers"], TrainOnly::name, TrainOnly::raw);
    check_names(LrSchedule::ALL, &["cosine", "constant"], LrSchedule::name, LrSchedule::raw);
    check_names(NonFinite::ALL, &["error", "skip"], NonFinite::name, NonFinite::raw);

    // The library has no name past each enum's last value.
    unsafe {
        assert!(sys::moe_method_name(Method::ALL.len() as i32).is_null());
        assert!(sys::moe_weight_name(Weight::ALL.len() as i32).is_null());
        assert!(sys::moe_nonfinite_name(NonFinite::ALL.len() as i32).is_null());
    }
    // DEFAULT values and aliases.
    assert_eq!(Dtype::ALL[0], Dtype::Default);
    assert_eq!(Dtype::Default.raw(), -1);
    assert_eq!(Dtype::Default.name(), "default");
    assert_eq!(Placement::Default.name(), "default");
    assert_eq!(Placement::Default.to_string(), "default");
    for alias in ["default", "keep", "auto", "KEEP"] {
        assert_eq!(alias.parse::<Dtype>().unwrap(), Dtype::Default, "{alias}");
    }
    assert_eq!("Default".parse::<Placement>().unwrap(), Placement::Default);
    assert_eq!("Q8-0".parse::<Dtype>().unwrap(), Dtype::Q8_0);
    assert_eq!("qwen2_moe".parse::<Format>().unwrap(), Format::Qwen2Moe);
    assert_eq!(Routing::from_raw(4), Some(Routing::SigmoidTopkRenorm));
    assert_eq!(Routing::from_raw(5), None);
    assert_eq!(format!("{}", Method::Partition), "partition");
    assert!("".parse::<Method>().is_err());
}

// ------------------------------------------------------------------ defaults and layers

#[test]
fn defaults_come_from_the_library() {
    let u = UpcycleOptions::new();
    assert_eq!(u.raw().struct_size, std::mem::size_of::<sys::moe_upcycle_params>());
    assert_eq!(u.raw().dtype, Dtype::Default.raw());
    assert_eq!(u.raw().method, Method::Copy.raw());
    assert_eq!(u.raw().format, Format::Mixtral.raw());
    assert_eq!((u.raw().num_experts, u.raw().top_k), (8, 2));
    assert!((u.raw().aux_loss_coef - 0.02).abs() < 1e-12);
    let u = u.method(Method::Drop).dtype(Dtype::Bf16).aux_loss_coef(0.5);
    assert_eq!((u.raw().method, u.raw().dtype), (sys::MOE_METHOD_DROP, sys::MOE_DTYPE_BF16));
    assert_eq!(u.raw().aux_loss_coef, 0.5);

    let t = TrainerOptions::new();
    assert_eq!(t.raw().on_nonfinite, NonFinite::Error.raw());
    assert_eq!(t.raw().schedule, LrSchedule::Cosine.raw());
    assert_eq!(t.raw().struct_size, std::mem::size_of::<sys::moe_trainer_params>());
    assert_eq!(t.on_nonfinite(NonFinite::Skip).raw().on_nonfinite, sys::MOE_NONFINITE_SKIP);

    let c = LayerConfig::new(16, 32, 4, 2);
    assert_eq!(c.raw().placement, Placement::Default.raw());
    assert_eq!(c.raw().storage, Dtype::F32.raw());
    assert_eq!(c.raw().routing, Routing::SoftmaxTopkRenorm.raw());
    assert!((c.raw().aux_loss_coef - 0.01).abs() < 1e-7);
    let c = c.shared_expert_intermediate_size(8).aux_loss_coef(0.25).placement(Placement::Expert);
    assert_eq!(c.raw().shared_expert_intermediate_size, 8);
    assert_eq!(c.raw().aux_loss_coef, 0.25);
    assert_eq!(c.raw().placement, sys::MOE_PLACEMENT_EXPERT);
}

#[test]
fn runtime_info_and_describe() {
    let rt = Runtime::new(2).unwrap();
    let info = rt.info().unwrap();
    assert_eq!(info.workers, 2);
    assert!(info.cores >= 1);
    let plain = rt.describe(TextFormat::Plain, None).unwrap();
    assert!(!plain.is_empty() && !plain.contains('\0'));
    let json = rt.describe(TextFormat::Json, Some(&LayerConfig::new(16, 32, 4, 2))).unwrap();
    assert!(json.starts_with('{') && json.trim_end().ends_with('}'), "{json}");
    assert!(json.contains("\"placement\""), "{json}");
    // A synthetic topology: two NUMA nodes planned for, nothing really pinned.
    let synthetic = moeupcycle::RuntimeOptions::new()
        .threads(4)
        .topology_synthetic("pack:2 [numa] core:2 pu:1");
    let rt2 = Runtime::with_options(&synthetic).unwrap();
    let i2 = rt2.info().unwrap();
    assert_eq!((i2.numa_nodes, i2.workers, i2.is_this_system), (2, 4, false));
    let bad = moeupcycle::RuntimeOptions::new().topology_synthetic("not a topology");
    assert_eq!(Runtime::with_options(&bad).err().unwrap().code, MOE_ERR_INVALID_ARGUMENT);
}

#[test]
fn invalid_config_is_error_with_field() {
    let rt = Runtime::new(2).unwrap();
    // top_k > num_experts
    let err = MoELayer::new(&rt, LayerConfig::new(16, 32, 4, 5)).err().expect("must fail");
    assert_eq!(err.code, MOE_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("top_k"), "message: {}", err.message);
    // hidden_size not set
    let err = MoELayer::new(&rt, LayerConfig::new(0, 32, 4, 2)).err().expect("must fail");
    assert_eq!(err.code, MOE_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("hidden"), "message: {}", err.message);
    assert!(err.to_string().contains("hidden"));
    assert!(err.needed.is_none());
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert!(!boxed.to_string().is_empty());
}

#[test]
fn small_layer_forward_backward() {
    let rt = Runtime::new(2).unwrap();
    let (h, f, e, k, t) = (16usize, 32usize, 4usize, 2usize, 3usize);
    let mut layer = MoELayer::new(&rt, LayerConfig::new(16, 32, 4, 2).placement(Placement::None)).unwrap();
    assert_eq!((layer.hidden_size(), layer.num_experts()), (h, e));
    let cfg = layer.config().unwrap();
    assert_eq!((cfg.hidden_size(), cfg.moe_intermediate_size(), cfg.num_experts(), cfg.top_k()), (16, 32, 4, 2));
    assert_eq!(Placement::from_raw(cfg.raw().placement), Some(Placement::None));
    layer.init_random(7, 0.1).unwrap();
    let x: Vec<f32> = (0..t * h).map(|i| ((i as f32) * 0.37).sin()).collect();
    let y = layer.forward(&x, t).unwrap();
    assert_eq!(y.len(), t * h);
    assert!(y.iter().all(|v| v.is_finite()));
    assert!(y.iter().any(|&v| v != 0.0));

    let stats = layer.stats().unwrap();
    assert_eq!(stats.tokens, 3);
    assert_eq!(stats.assignments, 6);
    assert_eq!(stats.tokens_per_expert.len(), e);
    assert_eq!(stats.tokens_per_expert.iter().sum::<u64>(), 6);
    assert!(stats.aux_loss > 0.0);

    // Routing [T, E]: k chosen experts per token, weights summing to 1.
    let routing = layer.routing().unwrap();
    assert_eq!(routing.len(), t * e);
    for row in routing.chunks(e) {
        assert_eq!(row.iter().filter(|&&w| w != 0.0).count(), k);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    let gx = layer.backward(&vec![1.0f32; t * h]).unwrap();
    assert_eq!(gx.len(), t * h);
    assert!(gx.iter().all(|v| v.is_finite()));
    let g = layer.grad(Weight::Router, ALL_EXPERTS).unwrap();
    assert_eq!(g.len(), e * h);
    assert!(g.iter().any(|&v| v != 0.0));
    let gd = layer.grad(Weight::Down, ALL_EXPERTS).unwrap();
    assert_eq!(gd.len(), e * h * f);
    assert_eq!(layer.grad(Weight::Down, 1).unwrap(), gd[h * f..2 * h * f].to_vec());
    layer.zero_grad().unwrap();
    assert!(layer.grad(Weight::Router, ALL_EXPERTS).unwrap().iter().all(|&v| v == 0.0));

    // backward consumed the saved forward
    assert_eq!(layer.backward(&vec![1.0f32; t * h]).unwrap_err().code, MOE_ERR_INVALID_ARGUMENT);

    // set_weight / weight round trip for one expert
    let n = layer.weight_count(Weight::Gate, 1).unwrap();
    assert_eq!(n, f * h);
    assert_eq!(layer.weight_count(Weight::Gate, ALL_EXPERTS).unwrap(), e * f * h);
    let w: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
    layer.set_weight(Weight::Gate, 1, &w).unwrap();
    assert_eq!(layer.weight(Weight::Gate, 1).unwrap(), w);
    assert_eq!(layer.weight(Weight::Gate, ALL_EXPERTS).unwrap()[n..2 * n].to_vec(), w);

    // inference forward gives the same output as a saved one
    let y2 = layer.infer(&x, t).unwrap();
    let y3 = layer.forward(&x, t).unwrap();
    assert_eq!(y2, y3);
}

#[test]
fn buffer_too_small_reports_needed_and_writes_nothing() {
    let rt = Runtime::new(1).unwrap();
    let mut layer = MoELayer::new(&rt, LayerConfig::new(8, 16, 4, 2)).unwrap();
    layer.init_random(3, 0.2).unwrap();
    let n = layer.weight_count(Weight::Up, 2).unwrap();
    assert_eq!(n, 16 * 8);
    let mut buf = vec![-7.0f32; n];
    let err = layer.weight_into(Weight::Up, 2, &mut buf[..n - 1]).unwrap_err();
    assert_eq!(err.code, MOE_ERR_BUFFER_TOO_SMALL);
    assert_eq!(err.needed, Some(n));
    assert!(!err.message.is_empty());
    assert!(buf.iter().all(|&v| v == -7.0), "nothing may be written");
    assert_eq!(layer.weight_into(Weight::Up, 2, &mut buf).unwrap(), n);
    assert_eq!(buf, layer.weight(Weight::Up, 2).unwrap());
    assert_eq!(layer.weight_into(Weight::Up, 2, &mut []).unwrap_err().needed, Some(n));
    // A larger buffer: the answer fills its start.
    let mut big = vec![-7.0f32; n + 3];
    assert_eq!(layer.weight_into(Weight::Up, 2, &mut big).unwrap(), n);
    assert_eq!(big[..n], buf[..]);
    assert!(big[n..].iter().all(|&v| v == -7.0));
    let err = layer.grad_into(Weight::Router, ALL_EXPERTS, &mut buf[..3]).unwrap_err();
    assert_eq!((err.code, err.needed), (MOE_ERR_BUFFER_TOO_SMALL, Some(4 * 8)));
}

#[test]
fn borrowed_experts_are_used_without_copying() {
    let rt = Runtime::new(1).unwrap();
    let (h, f, e) = (8usize, 16usize, 2usize);
    let gate: Vec<f32> = (0..e * f * h).map(|i| ((i as f32) * 0.11).sin() * 0.2).collect();
    let up: Vec<f32> = (0..e * f * h).map(|i| ((i as f32) * 0.07).cos() * 0.2).collect();
    let down: Vec<f32> = (0..e * h * f).map(|i| ((i as f32) * 0.05).sin() * 0.2).collect();
    let mut owned = MoELayer::new(&rt, LayerConfig::new(8, 16, 2, 1)).unwrap();
    let mut borrowed = MoELayer::new(&rt, LayerConfig::new(8, 16, 2, 1)).unwrap();
    owned.init_random(5, 0.3).unwrap();
    let router = owned.weight(Weight::Router, ALL_EXPERTS).unwrap();
    owned.set_weight(Weight::Gate, ALL_EXPERTS, &gate).unwrap();
    owned.set_weight(Weight::Up, ALL_EXPERTS, &up).unwrap();
    owned.set_weight(Weight::Down, ALL_EXPERTS, &down).unwrap();
    borrowed.set_weight(Weight::Router, ALL_EXPERTS, &router).unwrap();
    borrowed.borrow_experts(&gate, &up, &down).unwrap();
    let x: Vec<f32> = (0..4 * h).map(|i| ((i as f32) * 0.3).cos()).collect();
    assert_eq!(owned.infer(&x, 4).unwrap(), borrowed.infer(&x, 4).unwrap());
    let err = borrowed.borrow_experts(&gate[1..], &up, &down).unwrap_err();
    assert_eq!(err.code, MOE_ERR_SHAPE);
}

#[test]
fn slice_length_mismatch_is_caught_in_rust() {
    let rt = Runtime::new(1).unwrap();
    let mut layer = MoELayer::new(&rt, LayerConfig::new(16, 32, 4, 2)).unwrap();
    let err = layer.forward(&[0.0; 47], 3).unwrap_err();
    assert_eq!(err.code, MOE_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("x: 47"), "{}", err.message);
    let err = layer.set_weight(Weight::Router, ALL_EXPERTS, &[0.0; 3]).unwrap_err();
    assert_eq!(err.code, MOE_ERR_SHAPE);
    // backward without forward, and with wrong length after forward
    assert_eq!(layer.backward(&[0.0; 48]).unwrap_err().code, MOE_ERR_INVALID_ARGUMENT);
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

// ------------------------------------------------------------------ the real model

fn smollm2() -> Option<PathBuf> {
    let dir = match std::env::var_os("MOEUPCYCLE_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../.cache/materials"),
    };
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {} not found (set MOEUPCYCLE_CACHE)", path.display());
        None
    }
}

const PROMPT: &str = "The capital of France is";

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
}

#[test]
fn smollm2_tokenize_logits_generate_eval() {
    let Some(path) = smollm2() else { return };
    let rt = Runtime::new(0).unwrap();
    let mut model = Model::load(&rt, &path).unwrap();
    let info = model.info().unwrap();
    assert_eq!(info.vocab_size, 49152);
    assert_eq!(info.num_moe_layers, 0);
    // The GGUF's Q4_1 blocks stay quantized by default.
    assert_eq!(info.weight_dtype, Dtype::Q4_1);
    assert!(info.weight_bytes_per_token < 120_000_000, "{}", info.weight_bytes_per_token);
    let ids = model.tokenize(PROMPT).unwrap();
    assert_eq!(ids, vec![504, 3575, 282, 4649, 314]);
    assert!(model.tokenize("").unwrap().is_empty());
    assert_eq!(model.detokenize(&ids, true).unwrap(), PROMPT);
    assert_eq!(model.detokenize(&[], true).unwrap(), "");
    let v = info.vocab_size as usize;
    let logits = model.logits(&ids).unwrap();
    assert_eq!(logits.len(), ids.len() * v);
    assert!(logits.iter().all(|x| x.is_finite()));
    assert!(model.router_stats(0).unwrap().is_empty(), "dense layer");
    assert_eq!(model.logits(&[]).unwrap_err().code, MOE_ERR_INVALID_ARGUMENT);

    // Greedy generation: its first token is the argmax of the last row, the
    // text gathered from the stream equals the text the library counts.
    let options = GenerateOptions::new().max_new_tokens(3);
    let mut streamed = Vec::new();
    let g = model
        .generate_with(PROMPT, &options, |token, _| {
            streamed.push(token);
            true
        })
        .unwrap();
    eprintln!("generate -> {:?}", g.text);
    assert!(g.text.starts_with(" Paris"), "{:?}", g.text);
    assert_eq!((g.prompt_tokens, g.generated_tokens), (5, 3));
    assert_eq!(g.stop_reason, StopReason::Length);
    assert_eq!(streamed.len(), 3);
    assert_eq!(streamed[0] as usize, argmax(&logits[(ids.len() - 1) * v..]));
    assert_eq!(model.detokenize(&streamed, false).unwrap(), g.text);

    // A callback that stops at once: one token, stop reason "callback".
    let first = model.generate_with(PROMPT, &options, |_, _| false).unwrap();
    assert_eq!((first.generated_tokens, first.stop_reason), (1, StopReason::Callback));
    assert_eq!(first.text, model.detokenize(&streamed[..1], false).unwrap());
    // A panic in the callback stops generation and comes back out.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = model.generate_with(PROMPT, &options, |_, _| panic!("stop here"));
    }));
    assert!(caught.is_err());

    // Caller memory: one byte short is BUFFER_TOO_SMALL with the size and the
    // buffer untouched; exact size fits.
    let needed = g.text.len() + 1;
    let mut text = vec![b'#'; needed];
    let err = model.generate_into(PROMPT, &options, &mut text[..needed - 1]).unwrap_err();
    assert_eq!((err.code, err.needed), (MOE_ERR_BUFFER_TOO_SMALL, Some(needed)));
    assert!(text.iter().all(|&b| b == b'#'));
    let (written, g2) = model.generate_into(PROMPT, &options, &mut text).unwrap();
    assert_eq!(written, needed);
    assert_eq!(g2.text, g.text);
    assert_eq!(text[needed - 1], 0);

    let ev = model.eval_text("The quick brown fox jumps over the lazy dog. The capital of France is Paris.", 16, 0).unwrap();
    assert!(ev.tokens_scored > 0 && ev.windows >= 1);
    assert!(ev.mean_nll.is_finite() && ev.mean_nll > 0.0);
    assert!((ev.perplexity - ev.mean_nll.exp()).abs() < 1e-6 * ev.perplexity);
    assert_eq!(ev.aux_loss, 0.0);
    let ev2 = model.eval_tokens(&model.tokenize("The quick brown fox jumps over the lazy dog.").unwrap(), 0, 0).unwrap();
    assert!(ev2.mean_nll.is_finite());
    assert!(Model::load(&rt, "/nonexistent/model.gguf").is_err());
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("moeupcycle-rust-{tag}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SmolLM2 upcycled by copy into Qwen2-MoE (layer 0 only, 2 experts, top-1)
/// computes the dense model's function; its MoE layer loads, routes every
/// token, and trains.
#[test]
fn smollm2_upcycle_layer_and_training_step() {
    let Some(path) = smollm2() else { return };
    let work = TempDir::new("upcycle");
    let out = work.0.join("smol-moe");
    let options = UpcycleOptions::new()
        .num_experts(2)
        .top_k(1)
        .method("copy".parse().unwrap())
        .format("qwen2-moe".parse().unwrap())
        .dtype("f32".parse().unwrap())
        .layers("0");
    let report = moeupcycle::upcycle(&path, &out, &options).unwrap();
    assert_eq!(report.moe_layers, 1);
    assert!(report.bytes_written > 0 && report.tensors_written > 0 && report.shards >= 1);
    assert_eq!(moeupcycle::upcycle(&path, &out, &options).unwrap_err().code, MOE_ERR_EXISTS);
    let err = moeupcycle::upcycle(&path, work.0.join("other"), &options.clone().layers("0,x")).unwrap_err();
    assert_eq!(err.code, MOE_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("0,x"), "{}", err.message);
    assert!(!work.0.join("other").exists());

    let ci = moeupcycle::inspect(&out).unwrap();
    assert_eq!(ci.architecture, "qwen2_moe");
    assert_eq!((ci.num_experts, ci.top_k, ci.num_moe_layers), (2, 1, 1));
    assert!(ci.active_param_count < ci.param_count);
    let dense_info = moeupcycle::inspect(&path).unwrap();
    assert_eq!(dense_info.container, "gguf");
    assert_eq!(dense_info.num_experts, 0);

    let rt = Runtime::new(0).unwrap();
    let layer = MoELayer::load(&rt, &out, 0, None).unwrap();
    let c = layer.config().unwrap();
    assert_eq!((c.hidden_size(), c.moe_intermediate_size(), c.num_experts(), c.top_k()), (576, 1536, 2, 1));
    assert_eq!(c.raw().shared_expert_intermediate_size, 1536);
    assert_eq!(layer.weight(Weight::Gate, 0).unwrap(), layer.weight(Weight::Gate, 1).unwrap());
    let bf16 = LayerConfig::new(0, 0, 0, 0).storage(Dtype::Bf16);
    let layer16 = MoELayer::load(&rt, &out, 0, Some(&bf16)).unwrap();
    assert_eq!(layer16.config().unwrap().raw().storage, sys::MOE_DTYPE_BF16);
    assert_eq!(MoELayer::load(&rt, &out, 1, None).err().unwrap().code, MOE_ERR_INVALID_ARGUMENT);

    let mut dense = Model::load_with(&rt, &path, &ModelOptions::new().weight_dtype(Dtype::F32)).unwrap();
    let mut moe = Model::load_with(&rt, &out, &ModelOptions::new().weight_dtype(Dtype::F32)).unwrap();
    let mi = moe.info().unwrap();
    assert_eq!((mi.num_moe_layers, mi.num_experts, mi.weight_dtype), (1, 2, Dtype::F32));
    let ids = dense.tokenize(PROMPT).unwrap();
    assert_eq!(moe.tokenize(PROMPT).unwrap(), ids);
    let a = dense.logits(&ids).unwrap();
    let b = moe.logits(&ids).unwrap();
    assert_eq!(a.len(), b.len());
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    eprintln!("upcycled logits differ from dense by at most {worst}");
    assert!(worst < 1e-3, "{worst}");
    let routed = moe.router_stats(0).unwrap();
    assert_eq!(routed.len(), 2);
    assert_eq!(routed.iter().sum::<u64>(), ids.len() as u64);
    assert!(moe.router_stats(1).unwrap().is_empty());
    assert_eq!(moe.router_stats(1000).unwrap_err().code, MOE_ERR_INVALID_ARGUMENT);

    // One training step of the MoE layers.
    let data = "The capital of France is Paris. The capital of Italy is Rome. ".repeat(40);
    let t = TrainerOptions::new()
        .seq_len(16)
        .batch(1)
        .steps(2)
        .eval_windows(1)
        .schedule("constant".parse().unwrap())
        .on_nonfinite("skip".parse().unwrap())
        .train_only(TrainOnly::Moe);
    let bad = Trainer::from_text(&mut moe, &data, &t.beta1(1.5)).err().unwrap();
    assert_eq!(bad.code, MOE_ERR_INVALID_ARGUMENT);
    assert!(bad.message.contains("beta1"), "{}", bad.message);
    let mut trainer = Trainer::from_text(&mut moe, &data, &t).unwrap();
    let s = trainer.step().unwrap();
    assert_eq!((s.step, trainer.steps_done().unwrap()), (1, 1));
    assert!(s.loss.is_finite() && s.loss > 0.0);
    assert!(s.aux_loss > 0.0);
    assert!(!s.skipped);
    assert_eq!(s.tokens, 16);
    assert!((s.lr - f64::from(t.raw().lr)).abs() < 1e-9);
    // Model FLOPs (PaLM count): SmolLM2 has 30 layers, H 576, 9 query and 3 KV heads of 64, FFN 1536
    // and a tied 49152 x 576 head; MoE layer 0 has a 2 x 576 router, one active expert and the shared
    // expert (3 x 576 x 1536 each) with its 576-wide gate; frozen weights count too.
    let attention = 576.0 * (576.0 + 2.0 * 192.0) + 576.0 * 576.0;
    let ffn = 3.0 * 576.0 * 1536.0;
    let multiplied = 30.0 * attention + 29.0 * ffn + (2.0 * 576.0 + 2.0 * ffn + 576.0) + 49152.0 * 576.0;
    let per_token = 6.0 * multiplied + 12.0 * 30.0 * 9.0 * 64.0 * 16.0;
    assert!((s.model_flops - 16.0 * per_token).abs() <= 1e-9 * s.model_flops, "{}", s.model_flops);
    let held_out_nll = trainer.eval().unwrap();
    assert!(held_out_nll.is_finite());
    // The trainer's held-out split (eval_fraction 0.05 by default), evaluated in one window of
    // seq_len + 1 tokens as the trainer's eval_windows(1) does.
    let held = trainer.model().eval_held_out(&data, 17, 17, 0.05).unwrap();
    assert_eq!((held.windows, held.tokens_scored, held.mean_nll), (1, 16, held_out_nll));
    let all_held = trainer.model().eval_held_out(&data, 17, 0, 0.05).unwrap();
    let all = trainer.model().eval_text(&data, 17, 0).unwrap();
    assert!(all_held.tokens_scored >= 16 && all_held.tokens_scored < all.tokens_scored / 10);
    assert_eq!(trainer.model().eval_held_out(&data, 17, 0, 1.0).unwrap_err().code, MOE_ERR_INVALID_ARGUMENT);
    // The model stays usable between steps, through the trainer.
    let after = trainer.model().logits(&ids).unwrap();
    assert!(after.iter().all(|x| x.is_finite()));
    assert_ne!(after, b, "a training step changes the MoE layer's output");
}

/// Data-aware upcycling through the safe API: calibration text, statistics
/// saved and reused, co-activation clusters. With top-k = E and a zero router
/// every token reaches every expert with equal weight, and the clustered
/// experts sum to the dense FFN: the logits equal the dense model's.
#[test]
fn smollm2_calibrated_cluster_upcycle_equals_dense() {
    let Some(path) = smollm2() else { return };
    let work = TempDir::new("calibrate");
    let text = work.0.join("calibration.txt");
    let line = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n";
    std::fs::write(&text, line.repeat(20)).unwrap();
    let stats = work.0.join("stats.safetensors");
    let cluster = || {
        UpcycleOptions::new()
            .num_experts(4)
            .top_k(4)
            .method(Method::Partition)
            .partition_select(PartitionSelect::Cluster)
            .router_init(RouterInit::Zeros)
            .format(Format::Qwen2Moe)
            .dtype(Dtype::F32)
            .layers("0")
    };
    let out = work.0.join("cluster");
    moeupcycle::upcycle(&path, &out, &cluster().calibration(&text).calibration_samples(64).save_stats(&stats)).unwrap();
    assert!(stats.exists());
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"partition_select\": \"cluster\""), "{config}");
    assert!(config.contains("\"calibration_tokens\""), "{config}");

    // Calibration alone saves the same statistics.
    let alone = work.0.join("alone.safetensors");
    moeupcycle::calibrate(&path, &alone, &UpcycleOptions::new().calibration(&text).calibration_samples(64)).unwrap();
    assert_eq!(std::fs::read(&alone).unwrap(), std::fs::read(&stats).unwrap());
    let err = moeupcycle::calibrate(&path, &alone, &UpcycleOptions::new().calibration(&text)).unwrap_err();
    assert_eq!(err.code, MOE_ERR_EXISTS);

    // The saved statistics give the same model without the calibration data.
    let again = work.0.join("again");
    moeupcycle::upcycle(&path, &again, &cluster().stats(&stats)).unwrap();
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap()
    );

    let rt = Runtime::new(0).unwrap();
    let mut dense = Model::load_with(&rt, &path, &ModelOptions::new().weight_dtype(Dtype::F32)).unwrap();
    let mut moe = Model::load_with(&rt, &out, &ModelOptions::new().weight_dtype(Dtype::F32)).unwrap();
    let ids = dense.tokenize(PROMPT).unwrap();
    let a = dense.logits(&ids).unwrap();
    let b = moe.logits(&ids).unwrap();
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-3, "clustered experts differ from the dense model by {worst}");

    // Statistics need something to use them.
    let err = moeupcycle::upcycle(&path, work.0.join("unused"), &UpcycleOptions::new().stats(&stats)).unwrap_err();
    assert_eq!(err.code, MOE_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("nothing uses them"), "{}", err.message);
}

/// SmolLM2 written as a Q8_0 GGUF loads again and predicts what the source does.
#[test]
fn smollm2_exports_to_gguf() {
    let Some(path) = smollm2() else { return };
    let work = TempDir::new("export");
    let out = work.0.join("smol-q8_0.gguf");
    let report = moeupcycle::export_gguf(&path, &out, Dtype::Q8_0, false).unwrap();
    assert_eq!(report.bytes_written, std::fs::metadata(&out).unwrap().len());
    assert_eq!(moeupcycle::export_gguf(&path, &out, Dtype::Q8_0, false).unwrap_err().code, MOE_ERR_EXISTS);
    let rt = Runtime::new(0).unwrap();
    let mut dense = Model::load(&rt, &path).unwrap();
    let mut exported = Model::load(&rt, &out).unwrap();
    let ids = dense.tokenize(PROMPT).unwrap();
    let (a, b) = (dense.logits(&ids).unwrap(), exported.logits(&ids).unwrap());
    let vocab = a.len() / ids.len();
    assert_eq!(argmax(&a[a.len() - vocab..]), argmax(&b[b.len() - vocab..]));
}
