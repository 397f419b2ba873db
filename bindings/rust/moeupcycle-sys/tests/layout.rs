//! The declarations mirror the header: every struct (each field's offset, the
//! size and alignment), every enum constant and macro (its value), and every
//! function of `moeupcycle.h` is declared here. Names are read from the header
//! text; sizes, offsets and values come from a small C program compiled with
//! the C compiler (`$CC`, default `cc`) against the same header.
use moeupcycle_sys as sys;
use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const INCLUDE_DIR: &str = env!("MOEUPCYCLE_INCLUDE_DIR");

struct StructLayout {
    name: &'static str,
    size: usize,
    align: usize,
    /// Name, offset and size of each field.
    fields: Vec<(&'static str, usize, usize)>,
}

fn field_size<S, F>(_: fn(&S) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! layouts {
    ($($s:ident { $($f:ident),* $(,)? })*) => {
        vec![$(StructLayout {
            name: stringify!($s),
            size: size_of::<sys::$s>(),
            align: align_of::<sys::$s>(),
            fields: vec![$((
                stringify!($f),
                offset_of!(sys::$s, $f),
                field_size(|s: &sys::$s| &s.$f),
            )),*],
        }),*]
    };
}

fn rust_structs() -> Vec<StructLayout> {
    layouts! {
        moe_checkpoint_info {
            struct_size, architecture, container, dtype, dtype_summary, num_layers, hidden_size,
            intermediate_size, num_heads, num_kv_heads, head_dim, vocab_size, max_position_embeddings,
            rope_theta, rms_norm_eps, tied_embeddings, qkv_bias, num_experts, top_k,
            moe_intermediate_size, shared_expert_intermediate_size, num_moe_layers, tensor_count,
            param_count, active_param_count, data_bytes,
        }
        moe_upcycle_params {
            struct_size, num_experts, top_k, method, ratio, shared_indices, noise_std, granularity,
            granular_scaling, partition_select, partition_disjoint, partition_scale, layers,
            router_init, router_std, shared_expert, routing, format, dtype, seed, force,
            max_shard_bytes, threads, aux_loss_coef, progress, user_data, calibration_path,
            calibration_ids, calibration_tokens, calibration_samples, fire_quantile, stats_path,
            save_stats_path, importance, shared_from_frequent, drop_select, router_prompts_path,
            router_negative_prompts_path, router_spread, calibrated_scale,
        }
        moe_upcycle_result {
            struct_size, bytes_written, tensors_written, shards, moe_layers, seconds, peak_rss_bytes,
            stale_bytes_removed, stale_removed, router_max_similarity, router_similar_layer,
        }
        moe_init_params {
            struct_size, hidden_size, num_layers, num_heads, num_kv_heads, head_dim, intermediate_size,
            num_experts, top_k, format, shared_expert_size, max_positions, tie_embeddings, rope_theta,
            rms_norm_eps, init_std, routing, aux_loss_coef, dtype, seed, force, max_shard_bytes,
        }
        moe_init_result { struct_size, parameters, active_parameters, bytes_written, shards, seconds }
        moe_export_params { struct_size, dtype, force }
        moe_export_result { struct_size, bytes_written, tensors_written, fallback_tensors, seconds }
        moe_scaling_law { struct_size, form, e, a, alpha, alpha2, alpha3, b, beta }
        moe_fit_params { struct_size, form, huber_delta, bootstrap, seed, max_iterations }
        moe_study_params { struct_size, threads, tokenizer, data, progress, user_data }
        moe_plan_params {
            struct_size, dense_tokens, budget_tokens, budget_flops, dense_parameters, active_parameters,
            law_file, dense_law, moe_law, upcycled_law,
        }
        moe_plan_result {
            struct_size, best, bootstrap, upcycled_tokens, upcycled_loss, upcycled_loss_low,
            upcycled_loss_high, scratch_tokens, scratch_loss, scratch_loss_low, scratch_loss_high,
            scratch_all_tokens, scratch_all_loss, scratch_all_loss_low, scratch_all_loss_high,
            dense_tokens, dense_loss, dense_loss_low, dense_loss_high, break_even_tokens,
            break_even_low, break_even_high, d2_exponent,
        }
        moe_runtime_params { struct_size, threads, pin, placement, topology_synthetic, topology_xml }
        moe_runtime_info {
            struct_size, numa_nodes, cores, pus, workers, is_this_system, workers_pinned,
            memory_binding, blas_threads, blas_core, kernel_path, kernel_forced, kernel_vector_floats,
            kernel_bf16,
        }
        moe_layer_config {
            struct_size, hidden_size, moe_intermediate_size, num_experts, top_k, routing,
            capacity_factor, expert_choice, shared_expert_intermediate_size, storage, placement,
            jitter, seed, aux_loss_coef, z_loss_coef, compute,
        }
        moe_layer_stats {
            struct_size, tokens, assignments, dropped, aux_loss, z_loss, weight_bytes, bound_bytes,
        }
        moe_model_params { struct_size, weight_dtype, placement, max_context, upcycle }
        moe_model_info {
            struct_size, architecture, num_layers, hidden_size, vocab_size, context_length,
            num_moe_layers, num_experts, top_k, bos_token_id, eos_token_id, weight_dtype,
            weight_bytes, weight_bytes_per_token,
        }
        moe_eval_params { struct_size, seq_len, max_tokens, progress, user_data, held_out }
        moe_eval_result {
            struct_size, tokens_scored, windows, mean_nll, perplexity, seconds, tokens_per_second,
            aux_loss,
        }
        moe_generate_params {
            struct_size, max_new_tokens, temperature, top_k, top_p, seed, chat, add_special,
            on_token, user_data, ignore_eos,
        }
        moe_generate_result {
            struct_size, prompt_tokens, generated_tokens, prompt_seconds, decode_seconds,
            tokens_per_second, stop_reason,
        }
        moe_trainer_params {
            struct_size, seq_len, batch, steps, warmup, lr, min_lr, schedule, beta1, beta2, eps,
            weight_decay, clip, aux_loss_coef, z_loss_coef, train_only, seed, eval_fraction,
            eval_windows, reserved0, on_nonfinite, micro_batch, recompute, precision,
        }
        moe_train_stats {
            struct_size, step, loss, aux_loss, z_loss, lr, grad_norm, tokens, seconds,
            tokens_per_second, max_expert_load, skipped, model_flops,
            activation_bytes,
        }
    }
}

macro_rules! constants {
    ($($c:ident),* $(,)?) => { vec![$((stringify!($c), sys::$c as i64)),*] };
}

/// Every numeric enum constant and macro of the header.
fn rust_constants() -> Vec<(&'static str, i64)> {
    constants![
        MOE_VERSION_MAJOR, MOE_VERSION_MINOR, MOE_VERSION_PATCH, MOE_VERSION_NUMBER,
        MOE_OK, MOE_ERR_INVALID_ARGUMENT, MOE_ERR_NULL_POINTER, MOE_ERR_IO, MOE_ERR_FORMAT,
        MOE_ERR_UNSUPPORTED, MOE_ERR_EXISTS, MOE_ERR_NOT_FOUND, MOE_ERR_SHAPE, MOE_ERR_OUT_OF_MEMORY,
        MOE_ERR_CANCELLED, MOE_ERR_BUFFER_TOO_SMALL, MOE_ERR_INTERNAL, MOE_ERR_NUMERIC,
        MOE_DTYPE_DEFAULT, MOE_DTYPE_F32, MOE_DTYPE_F16, MOE_DTYPE_BF16, MOE_DTYPE_Q8_0,
        MOE_DTYPE_Q4_0, MOE_DTYPE_Q4_1,
        MOE_METHOD_COPY, MOE_METHOD_DROP, MOE_METHOD_NOISE, MOE_METHOD_GRANULAR, MOE_METHOD_PARTITION,
        MOE_ROUTER_INIT_NORMAL, MOE_ROUTER_INIT_UNIFORM, MOE_ROUTER_INIT_ZEROS, MOE_ROUTER_INIT_KMEANS,
        MOE_ROUTER_INIT_PROMPTS,
        MOE_ROUTING_SOFTMAX_TOPK_RENORM, MOE_ROUTING_SOFTMAX_TOPK, MOE_ROUTING_TOPK_SOFTMAX,
        MOE_ROUTING_SIGMOID_TOPK, MOE_ROUTING_SIGMOID_TOPK_RENORM,
        MOE_FORMAT_MIXTRAL, MOE_FORMAT_QWEN2_MOE,
        MOE_PARTITION_RANDOM, MOE_PARTITION_UNIFORM, MOE_PARTITION_IMPORTANCE, MOE_PARTITION_ACTIVATION,
        MOE_PARTITION_CLUSTER, MOE_IMPORTANCE_L1, MOE_IMPORTANCE_L2, MOE_IMPORTANCE_FREQ,
        MOE_DROP_SELECT_RANDOM, MOE_DROP_SELECT_LEAST_IMPORTANT,
        MOE_GRANULAR_SCALE_DOWN, MOE_GRANULAR_SCALE_CUBE_ROOT, MOE_GRANULAR_SCALE_NONE,
        MOE_PLACEMENT_DEFAULT, MOE_PLACEMENT_ROW_SLICE, MOE_PLACEMENT_EXPERT,
        MOE_PLACEMENT_INTERLEAVE, MOE_PLACEMENT_NONE,
        MOE_TEXT_PLAIN, MOE_TEXT_JSON,
        MOE_WEIGHT_ROUTER, MOE_WEIGHT_GATE, MOE_WEIGHT_UP, MOE_WEIGHT_DOWN, MOE_WEIGHT_SHARED_GATE,
        MOE_WEIGHT_SHARED_UP, MOE_WEIGHT_SHARED_DOWN, MOE_WEIGHT_SHARED_EXPERT_GATE,
        MOE_ALL_EXPERTS, MOE_FORWARD_SAVE, MOE_FORWARD_TRAIN, MOE_NO_TOKEN,
        MOE_STOP_LENGTH, MOE_STOP_EOS, MOE_STOP_CALLBACK,
        MOE_TRAIN_ALL, MOE_TRAIN_MOE, MOE_TRAIN_ROUTERS,
        MOE_LR_COSINE, MOE_LR_CONSTANT,
        MOE_NONFINITE_ERROR, MOE_NONFINITE_SKIP,
        MOE_LAW_DATA, MOE_LAW_DATA_PARAMS, MOE_LAW_UPCYCLE, MOE_LAW_UPCYCLE_PARAMS,
        MOE_PLAN_UPCYCLE, MOE_PLAN_SCRATCH, MOE_PLAN_DENSE,
    ]
}

macro_rules! functions {
    ($($f:ident),* $(,)?) => {{
        // Taking each function's address makes every name a declaration here.
        let all: Vec<(&'static str, *const ())> = vec![$((stringify!($f), sys::$f as *const ())),*];
        all
    }};
}

fn rust_functions() -> Vec<(&'static str, *const ())> {
    functions![
        moe_version_number, moe_version_string, moe_status_string, moe_last_error,
        moe_checkpoint_inspect, moe_upcycle_params_init, moe_upcycle, moe_calibrate, moe_export_params_init,
        moe_export, moe_init_params_init,
        moe_init_model,
        moe_runtime_params_init, moe_runtime_create, moe_runtime_free, moe_runtime_get_info,
        moe_runtime_measure_peak, moe_runtime_describe,
        moe_layer_config_init, moe_layer_create, moe_layer_load, moe_layer_free, moe_layer_get_config,
        moe_layer_weight_count, moe_layer_set_weight, moe_layer_get_weight, moe_layer_borrow_experts,
        moe_layer_init_random, moe_layer_forward, moe_layer_backward, moe_layer_get_grad,
        moe_layer_zero_grad, moe_layer_set_noise_step, moe_layer_get_stats, moe_layer_get_routing,
        moe_model_params_init, moe_model_load, moe_model_free, moe_model_get_info, moe_model_tokenize,
        moe_model_detokenize, moe_model_logits, moe_eval_params_init, moe_model_eval_text,
        moe_model_eval_tokens, moe_model_router_stats, moe_generate_params_init, moe_model_generate,
        moe_trainer_params_init, moe_trainer_create, moe_trainer_create_text, moe_trainer_free,
        moe_trainer_step, moe_trainer_eval, moe_trainer_get_step, moe_trainer_save, moe_trainer_resume,
        moe_dtype_name, moe_dtype_from_name, moe_method_name, moe_method_from_name,
        moe_router_init_name, moe_router_init_from_name, moe_routing_name, moe_routing_from_name,
        moe_format_name, moe_format_from_name, moe_partition_select_name,
        moe_partition_select_from_name, moe_granular_scaling_name, moe_granular_scaling_from_name,
        moe_importance_name, moe_importance_from_name, moe_drop_select_name, moe_drop_select_from_name,
        moe_placement_name, moe_placement_from_name, moe_text_format_name, moe_text_format_from_name,
        moe_weight_name, moe_weight_from_name, moe_stop_reason_name, moe_stop_reason_from_name,
        moe_train_only_name, moe_train_only_from_name, moe_lr_schedule_name,
        moe_lr_schedule_from_name, moe_nonfinite_name, moe_nonfinite_from_name, moe_law_form_name,
        moe_law_form_from_name, moe_scaling_law_preset, moe_scaling_law_predict, moe_fit_params_init,
        moe_scaling_fit, moe_plan_params_init, moe_scaling_plan, moe_study_params_init, moe_study_run,
    ]
}

// ------------------------------------------------------------ the header

/// What the header declares, read from its text.
#[derive(Default)]
struct Header {
    /// Struct name -> field names in order.
    structs: BTreeMap<String, Vec<String>>,
    /// Enum constants and `#define MOE_*` macros.
    constants: Vec<String>,
    functions: Vec<String>,
}

fn header_path() -> PathBuf {
    Path::new(INCLUDE_DIR).join("moeupcycle.h")
}

/// The header without comments; preprocessor lines (with their continuations)
/// are returned apart.
fn split_header(text: &str) -> (String, Vec<String>) {
    let mut code = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('/') {
        let after = &rest[i + 1..];
        if after.starts_with('*') {
            code.push_str(&rest[..i]);
            let end = after.find("*/").expect("unterminated comment in the header");
            code.push(' ');
            rest = &after[end + 2..];
        } else if after.starts_with('/') {
            code.push_str(&rest[..i]);
            rest = after.find('\n').map_or("", |e| &after[e..]);
        } else {
            code.push_str(&rest[..=i]);
            rest = after;
        }
    }
    code.push_str(rest);
    let mut plain = String::new();
    let mut directives = Vec::new();
    let mut continuing = false;
    for line in code.lines() {
        if continuing || line.trim_start().starts_with('#') {
            if !continuing {
                directives.push(String::new());
            }
            let d = directives.last_mut().unwrap();
            d.push_str(line.trim_end_matches('\\'));
            d.push(' ');
            continuing = line.trim_end().ends_with('\\');
        } else {
            plain.push_str(line);
            plain.push('\n');
        }
    }
    (plain, directives)
}

fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if !(c.is_alphanumeric() || c == '_') {
                    break;
                }
                word.push(c);
                chars.next();
            }
            out.push(word);
        } else {
            out.push(c.to_string());
            chars.next();
        }
    }
    out
}

fn is_identifier(t: &str) -> bool {
    t.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
}

fn parse_header() -> Header {
    let path = header_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (code, directives) = split_header(&text);
    let mut h = Header::default();
    for d in &directives {
        let t = tokens(d);
        if t.len() >= 3 && t[1] == "define" && t[2].starts_with("MOE_") {
            h.constants.push(t[2].clone());
        }
    }
    let t = tokens(&code);
    let mut i = 0;
    while i < t.len() {
        if t[i] == "typedef" && i + 3 < t.len() && (t[i + 1] == "struct" || t[i + 1] == "enum") && t[i + 3] == "{" {
            let is_struct = t[i + 1] == "struct";
            let name = t[i + 2].clone();
            let close = (i + 4..t.len()).find(|&j| t[j] == "}").expect("unterminated body in the header");
            let body = &t[i + 4..close];
            if is_struct {
                // Each declaration's name is its last identifier outside [N].
                let mut fields = Vec::new();
                for decl in body.split(|x| x == ";").filter(|d| !d.is_empty()) {
                    let mut depth = 0;
                    let mut last = None;
                    for x in decl {
                        match x.as_str() {
                            "[" => depth += 1,
                            "]" => depth -= 1,
                            _ if depth == 0 && is_identifier(x) => last = Some(x.clone()),
                            _ => {}
                        }
                    }
                    fields.push(last.expect("a struct field without a name"));
                }
                h.structs.insert(name, fields);
            } else {
                for entry in body.split(|x| x == ",").filter(|d| !d.is_empty()) {
                    h.constants.push(entry[0].clone());
                }
            }
            i = close + 1;
        } else if t[i].starts_with("moe_") && t.get(i + 1).is_some_and(|n| n == "(") {
            h.functions.push(t[i].clone());
            i += 1;
        } else {
            i += 1;
        }
    }
    h
}

// ------------------------------------------------------------ the C side

/// What the C compiler says, keyed "sizeof S", "alignof S", "offsetof S.f",
/// "sizeof S.f" and "const NAME" (one compiled program for all tests).
fn c_values() -> &'static BTreeMap<String, i64> {
    static VALUES: OnceLock<BTreeMap<String, i64>> = OnceLock::new();
    VALUES.get_or_init(|| compile_and_run(&rust_structs(), &rust_constants()))
}

/// Runs a C program printing `key value` lines for every struct size,
/// alignment and field offset, and every constant's value.
fn compile_and_run(structs: &[StructLayout], constants: &[(&str, i64)]) -> BTreeMap<String, i64> {
    let mut src = String::from(
        "#include <moeupcycle.h>\n#include <stddef.h>\n#include <stdio.h>\n#include <stdalign.h>\nint main(void) {\n",
    );
    for s in structs {
        let n = s.name;
        src += &format!("  printf(\"sizeof {n} %zu\\n\", sizeof({n}));\n");
        src += &format!("  printf(\"alignof {n} %zu\\n\", alignof({n}));\n");
        for (f, _, _) in &s.fields {
            src += &format!("  printf(\"offsetof {n}.{f} %zu\\n\", offsetof({n}, {f}));\n");
            src += &format!("  printf(\"sizeof {n}.{f} %zu\\n\", sizeof((({n} *)0)->{f}));\n");
        }
    }
    for (c, _) in constants {
        src += &format!("  printf(\"const {c} %lld\\n\", (long long)({c}));\n");
    }
    src += "  printf(\"string MOE_VERSION_STRING %s\\n\", MOE_VERSION_STRING);\n  return 0;\n}\n";

    let dir = std::env::temp_dir().join(format!("moeupcycle-sys-layout.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c_file = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&c_file, src).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I", INCLUDE_DIR])
        .arg(&c_file)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("the layout check needs a C compiler ({cc}): {e}"));
    assert!(built.status.success(), "{cc} failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let run = Command::new(&exe).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(run.status.success());
    let mut values = BTreeMap::new();
    for line in String::from_utf8(run.stdout).unwrap().lines() {
        let mut parts = line.split(' ');
        let (kind, key, value) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        if kind == "string" {
            assert_eq!(value, sys::MOE_VERSION_STRING, "MOE_VERSION_STRING");
        } else {
            values.insert(format!("{kind} {key}"), value.parse::<i64>().unwrap());
        }
    }
    values
}

// ------------------------------------------------------------ the checks

#[test]
fn every_struct_of_the_header_is_mirrored_field_by_field() {
    let header = parse_header();
    let rust = rust_structs();
    let rust_names: Vec<&str> = rust.iter().map(|s| s.name).collect();
    let header_names: Vec<&str> = header.structs.keys().map(String::as_str).collect();
    let mut sorted = rust_names.clone();
    sorted.sort();
    assert_eq!(sorted, header_names, "structs of {}", header_path().display());
    for s in &rust {
        let fields: Vec<&str> = s.fields.iter().map(|f| f.0).collect();
        assert_eq!(fields, header.structs[s.name], "fields of {}", s.name);
    }
}

#[test]
#[cfg(target_pointer_width = "64")]
fn struct_layouts_match_the_c_compiler() {
    let structs = rust_structs();
    let c = c_values();
    let mut checked = 0;
    for s in &structs {
        assert_eq!(s.size as i64, c[&format!("sizeof {}", s.name)], "size_of::<{}>()", s.name);
        assert_eq!(s.align as i64, c[&format!("alignof {}", s.name)], "align_of::<{}>()", s.name);
        for (f, off, size) in &s.fields {
            assert_eq!(*off as i64, c[&format!("offsetof {}.{f}", s.name)], "offset of {}.{f}", s.name);
            assert_eq!(*size as i64, c[&format!("sizeof {}.{f}", s.name)], "size of {}.{f}", s.name);
            checked += 1;
        }
    }
    assert!(checked > 150, "only {checked} fields checked");
}

#[test]
fn every_constant_of_the_header_has_the_c_value() {
    let header = parse_header();
    let rust = rust_constants();
    let mut rust_names: Vec<&str> = rust.iter().map(|c| c.0).collect();
    rust_names.push("MOE_VERSION_STRING");
    rust_names.sort();
    let mut header_names: Vec<&str> = header.constants.iter().map(String::as_str).collect();
    header_names.sort();
    assert_eq!(rust_names, header_names, "constants and macros of {}", header_path().display());
    let c = c_values();
    for (name, value) in &rust {
        assert_eq!(*value, c[&format!("const {name}")], "{name}");
    }
}

#[test]
fn every_function_of_the_header_is_declared() {
    let header = parse_header();
    let rust = rust_functions();
    assert!(rust.iter().all(|f| !f.1.is_null()));
    let mut rust_names: Vec<&str> = rust.iter().map(|f| f.0).collect();
    rust_names.sort();
    let mut header_names: Vec<&str> = header.functions.iter().map(String::as_str).collect();
    header_names.sort();
    assert_eq!(rust_names, header_names, "functions of {}", header_path().display());
}
