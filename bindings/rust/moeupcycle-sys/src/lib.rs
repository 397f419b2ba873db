//! Raw FFI declarations of `include/moeupcycle.h` (ABI 0.2): every struct,
//! enum constant, macro and function, in the header's order.
//!
//! Field order and types follow the header exactly. C enums are `int`
//! (`c_int`), `size_t` is `usize`, `char name[N]` is `[c_char; N]`, and a
//! callback pointer that may be NULL is an `Option<unsafe extern "C" fn>`.
//! Versioned structs start with `struct_size`: fill parameter structs with
//! their `*_init(&mut p, size_of::<T>())` function, and set `struct_size` of
//! result structs before passing them. The layouts are checked against the C
//! compiler's by `tests/layout.rs`.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

// ---------------------------------------------------------------- version
pub const MOE_VERSION_MAJOR: u32 = 0;
pub const MOE_VERSION_MINOR: u32 = 8;
pub const MOE_VERSION_PATCH: u32 = 0;
pub const MOE_VERSION_NUMBER: u32 =
    MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH;
pub const MOE_VERSION_STRING: &str = "0.8.0";

// ---------------------------------------------------------------- status
/// `moe_status` (a C enum: `int`). Frozen: never renumbered.
pub type moe_status = c_int;
pub const MOE_OK: moe_status = 0;
pub const MOE_ERR_INVALID_ARGUMENT: moe_status = -1;
pub const MOE_ERR_NULL_POINTER: moe_status = -2;
pub const MOE_ERR_IO: moe_status = -3;
pub const MOE_ERR_FORMAT: moe_status = -4;
pub const MOE_ERR_UNSUPPORTED: moe_status = -5;
pub const MOE_ERR_EXISTS: moe_status = -6;
pub const MOE_ERR_NOT_FOUND: moe_status = -7;
pub const MOE_ERR_SHAPE: moe_status = -8;
pub const MOE_ERR_OUT_OF_MEMORY: moe_status = -9;
pub const MOE_ERR_CANCELLED: moe_status = -10;
pub const MOE_ERR_BUFFER_TOO_SMALL: moe_status = -11;
pub const MOE_ERR_INTERNAL: moe_status = -12;
pub const MOE_ERR_NUMERIC: moe_status = -13;

// ---------------------------------------------------------------- common enums
pub type moe_dtype = c_int;
pub const MOE_DTYPE_DEFAULT: moe_dtype = -1;
pub const MOE_DTYPE_F32: moe_dtype = 0;
pub const MOE_DTYPE_F16: moe_dtype = 1;
pub const MOE_DTYPE_BF16: moe_dtype = 2;
pub const MOE_DTYPE_Q8_0: moe_dtype = 3;
pub const MOE_DTYPE_Q4_0: moe_dtype = 4;
pub const MOE_DTYPE_Q4_1: moe_dtype = 5;

/// `done` of `total` units of `stage` are finished; return non-zero to cancel.
pub type moe_progress_fn = Option<
    unsafe extern "C" fn(done: u64, total: u64, stage: *const c_char, user_data: *mut c_void) -> c_int,
>;

// ---------------------------------------------------------------- inspection
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_checkpoint_info {
    pub struct_size: usize,
    pub architecture: [c_char; 32],
    pub container: [c_char; 16],
    pub dtype: [c_char; 16],
    pub dtype_summary: [c_char; 128],
    pub num_layers: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub vocab_size: u32,
    pub max_position_embeddings: u32,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tied_embeddings: i32,
    pub qkv_bias: i32,
    pub num_experts: u32,
    pub top_k: u32,
    pub moe_intermediate_size: u32,
    pub shared_expert_intermediate_size: u32,
    pub num_moe_layers: u32,
    pub tensor_count: u64,
    pub param_count: u64,
    pub active_param_count: u64,
    pub data_bytes: u64,
}

// ---------------------------------------------------------------- upcycling enums
pub type moe_method = c_int;
pub const MOE_METHOD_COPY: moe_method = 0;
pub const MOE_METHOD_DROP: moe_method = 1;
pub const MOE_METHOD_NOISE: moe_method = 2;
pub const MOE_METHOD_GRANULAR: moe_method = 3;
pub const MOE_METHOD_PARTITION: moe_method = 4;

pub type moe_router_init = c_int;
pub const MOE_ROUTER_INIT_NORMAL: moe_router_init = 0;
pub const MOE_ROUTER_INIT_UNIFORM: moe_router_init = 1;
pub const MOE_ROUTER_INIT_ZEROS: moe_router_init = 2;
pub const MOE_ROUTER_INIT_KMEANS: moe_router_init = 3;
pub const MOE_ROUTER_INIT_PROMPTS: moe_router_init = 4;

pub type moe_routing = c_int;
pub const MOE_ROUTING_SOFTMAX_TOPK_RENORM: moe_routing = 0;
pub const MOE_ROUTING_SOFTMAX_TOPK: moe_routing = 1;
pub const MOE_ROUTING_TOPK_SOFTMAX: moe_routing = 2;
pub const MOE_ROUTING_SIGMOID_TOPK: moe_routing = 3;
pub const MOE_ROUTING_SIGMOID_TOPK_RENORM: moe_routing = 4;

pub type moe_format = c_int;
pub const MOE_FORMAT_MIXTRAL: moe_format = 0;
pub const MOE_FORMAT_QWEN2_MOE: moe_format = 1;

pub type moe_partition_select = c_int;
pub const MOE_PARTITION_RANDOM: moe_partition_select = 0;
pub const MOE_PARTITION_UNIFORM: moe_partition_select = 1;
pub const MOE_PARTITION_IMPORTANCE: moe_partition_select = 2;
pub const MOE_PARTITION_ACTIVATION: moe_partition_select = 3;
pub const MOE_PARTITION_CLUSTER: moe_partition_select = 4;

pub type moe_importance = c_int;
pub const MOE_IMPORTANCE_L1: moe_importance = 0;
pub const MOE_IMPORTANCE_L2: moe_importance = 1;
pub const MOE_IMPORTANCE_FREQ: moe_importance = 2;

pub type moe_drop_select = c_int;
pub const MOE_DROP_SELECT_RANDOM: moe_drop_select = 0;
pub const MOE_DROP_SELECT_LEAST_IMPORTANT: moe_drop_select = 1;

pub type moe_granular_scaling = c_int;
pub const MOE_GRANULAR_SCALE_DOWN: moe_granular_scaling = 0;
pub const MOE_GRANULAR_SCALE_CUBE_ROOT: moe_granular_scaling = 1;
pub const MOE_GRANULAR_SCALE_NONE: moe_granular_scaling = 2;

/// First version 0.2.0 (all fields).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_upcycle_params {
    pub struct_size: usize,
    pub num_experts: u32,
    pub top_k: u32,
    pub method: moe_method,
    pub ratio: f64,
    pub shared_indices: i32,
    pub noise_std: f64,
    pub granularity: u32,
    pub granular_scaling: moe_granular_scaling,
    pub partition_select: moe_partition_select,
    pub partition_disjoint: i32,
    pub partition_scale: i32,
    pub layers: *const c_char,
    pub router_init: moe_router_init,
    pub router_std: f64,
    pub shared_expert: i32,
    pub routing: moe_routing,
    pub format: moe_format,
    pub dtype: moe_dtype,
    pub seed: u64,
    pub force: i32,
    pub max_shard_bytes: u64,
    pub threads: u32,
    pub aux_loss_coef: f64,
    pub progress: moe_progress_fn,
    pub user_data: *mut c_void,
    // 0.7.0
    pub calibration_path: *const c_char,
    pub calibration_ids: i32,
    pub calibration_tokens: u64,
    pub calibration_samples: u32,
    pub fire_quantile: f64,
    pub stats_path: *const c_char,
    pub save_stats_path: *const c_char,
    pub importance: moe_importance,
    pub shared_from_frequent: u32,
    pub drop_select: moe_drop_select,
    pub router_prompts_path: *const c_char,
    pub router_negative_prompts_path: *const c_char,
    pub router_spread: f64,
    pub calibrated_scale: i32,
}

/// First version 0.7.0 (all fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_export_params {
    pub struct_size: usize,
    pub dtype: moe_dtype,
    pub force: i32,
}

/// First version 0.7.0 (all fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_export_result {
    pub struct_size: usize,
    pub bytes_written: u64,
    pub tensors_written: u64,
    pub fallback_tensors: u32,
    pub seconds: f64,
}

/// First version 0.1.0 (up to `peak_rss_bytes`); 0.2.0 appended `stale_*`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_upcycle_result {
    pub struct_size: usize,
    pub bytes_written: u64,
    pub tensors_written: u64,
    pub shards: u32,
    pub moe_layers: u32,
    pub seconds: f64,
    pub peak_rss_bytes: u64,
    pub stale_bytes_removed: u64,
    pub stale_removed: u32,
    // 0.6.0
    pub router_max_similarity: f64,
    pub router_similar_layer: i32,
}

// ---------------------------------------------------------------- models from scratch
/// First version 0.6.0 (all fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_init_params {
    pub struct_size: usize,
    pub hidden_size: u32,
    pub num_layers: u32,
    pub num_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub intermediate_size: u32,
    pub num_experts: u32,
    pub top_k: u32,
    pub format: moe_format,
    pub shared_expert_size: u32,
    pub max_positions: u32,
    pub tie_embeddings: i32,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub init_std: f64,
    pub routing: moe_routing,
    pub aux_loss_coef: f64,
    pub dtype: moe_dtype,
    pub seed: u64,
    pub force: i32,
    pub max_shard_bytes: u64,
}

/// First version 0.6.0 (all fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_init_result {
    pub struct_size: usize,
    pub parameters: u64,
    pub active_parameters: u64,
    pub bytes_written: u64,
    pub shards: u32,
    pub seconds: f64,
}

// ---------------------------------------------------------------- scaling laws
pub type moe_law_form = c_int;
pub const MOE_LAW_DATA: moe_law_form = 0;
pub const MOE_LAW_DATA_PARAMS: moe_law_form = 1;
pub const MOE_LAW_UPCYCLE: moe_law_form = 2;
pub const MOE_LAW_UPCYCLE_PARAMS: moe_law_form = 3;
pub const MOE_PLAN_UPCYCLE: i32 = 0;
pub const MOE_PLAN_SCRATCH: i32 = 1;
pub const MOE_PLAN_DENSE: i32 = 2;

/// First version 0.6.0 (all fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_scaling_law {
    pub struct_size: usize,
    pub form: moe_law_form,
    pub e: f64,
    pub a: f64,
    pub alpha: f64,
    pub alpha2: f64,
    pub alpha3: f64,
    pub b: f64,
    pub beta: f64,
}

/// First version 0.6.0 (all fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_fit_params {
    pub struct_size: usize,
    pub form: moe_law_form,
    pub huber_delta: f64,
    pub bootstrap: u32,
    pub seed: u64,
    pub max_iterations: u32,
}

/// First version 0.6.0 (all fields).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_study_params {
    pub struct_size: usize,
    pub threads: u32,
    pub tokenizer: *const c_char,
    pub data: *const c_char,
    pub progress: moe_progress_fn,
    pub user_data: *mut c_void,
}

/// First version 0.6.0 (all fields).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_plan_params {
    pub struct_size: usize,
    pub dense_tokens: f64,
    pub budget_tokens: f64,
    pub budget_flops: f64,
    pub dense_parameters: f64,
    pub active_parameters: f64,
    pub law_file: *const c_char,
    pub dense_law: *const moe_scaling_law,
    pub moe_law: *const moe_scaling_law,
    pub upcycled_law: *const moe_scaling_law,
}

/// First version 0.6.0 (all fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_plan_result {
    pub struct_size: usize,
    pub best: i32,
    pub bootstrap: u32,
    pub upcycled_tokens: f64,
    pub upcycled_loss: f64,
    pub upcycled_loss_low: f64,
    pub upcycled_loss_high: f64,
    pub scratch_tokens: f64,
    pub scratch_loss: f64,
    pub scratch_loss_low: f64,
    pub scratch_loss_high: f64,
    pub scratch_all_tokens: f64,
    pub scratch_all_loss: f64,
    pub scratch_all_loss_low: f64,
    pub scratch_all_loss_high: f64,
    pub dense_tokens: f64,
    pub dense_loss: f64,
    pub dense_loss_low: f64,
    pub dense_loss_high: f64,
    pub break_even_tokens: f64,
    pub break_even_low: f64,
    pub break_even_high: f64,
    pub d2_exponent: f64,
}

// ---------------------------------------------------------------- runtime
pub type moe_placement = c_int;
pub const MOE_PLACEMENT_DEFAULT: moe_placement = -1;
pub const MOE_PLACEMENT_ROW_SLICE: moe_placement = 0;
pub const MOE_PLACEMENT_EXPERT: moe_placement = 1;
pub const MOE_PLACEMENT_INTERLEAVE: moe_placement = 2;
pub const MOE_PLACEMENT_NONE: moe_placement = 3;

#[repr(C)]
pub struct moe_runtime {
    _p: [u8; 0],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_runtime_params {
    pub struct_size: usize,
    pub threads: u32,
    pub pin: i32,
    pub placement: moe_placement,
    pub topology_synthetic: *const c_char,
    pub topology_xml: *const c_char,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_runtime_info {
    pub struct_size: usize,
    pub numa_nodes: u32,
    pub cores: u32,
    pub pus: u32,
    pub workers: u32,
    pub is_this_system: i32,
    pub workers_pinned: i32,
    pub memory_binding: i32,
    pub blas_threads: i32,
    pub blas_core: [c_char; 32],
    // 0.3.0
    pub kernel_path: [c_char; 16],
    pub kernel_forced: i32,
    pub kernel_vector_floats: i32,
    // 0.5.0
    pub kernel_bf16: [c_char; 16],
}

pub type moe_text_format = c_int;
pub const MOE_TEXT_PLAIN: moe_text_format = 0;
pub const MOE_TEXT_JSON: moe_text_format = 1;

// ---------------------------------------------------------------- MoE layer
#[repr(C)]
pub struct moe_layer {
    _p: [u8; 0],
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_layer_config {
    pub struct_size: usize,
    pub hidden_size: u32,
    pub moe_intermediate_size: u32,
    pub num_experts: u32,
    pub top_k: u32,
    pub routing: moe_routing,
    pub capacity_factor: f32,
    pub expert_choice: i32,
    pub shared_expert_intermediate_size: u32,
    pub storage: moe_dtype,
    pub placement: moe_placement,
    pub jitter: f32,
    pub seed: u64,
    pub aux_loss_coef: f32,
    pub z_loss_coef: f32,
    // 0.5.0
    pub compute: moe_dtype,
}

pub type moe_weight = c_int;
pub const MOE_WEIGHT_ROUTER: moe_weight = 0;
pub const MOE_WEIGHT_GATE: moe_weight = 1;
pub const MOE_WEIGHT_UP: moe_weight = 2;
pub const MOE_WEIGHT_DOWN: moe_weight = 3;
pub const MOE_WEIGHT_SHARED_GATE: moe_weight = 4;
pub const MOE_WEIGHT_SHARED_UP: moe_weight = 5;
pub const MOE_WEIGHT_SHARED_DOWN: moe_weight = 6;
pub const MOE_WEIGHT_SHARED_EXPERT_GATE: moe_weight = 7;

/// The `expert` argument meaning "every expert" (the whole tensor).
pub const MOE_ALL_EXPERTS: i64 = -1;

/// moe_layer_forward() flags.
pub const MOE_FORWARD_SAVE: u32 = 1;
pub const MOE_FORWARD_TRAIN: u32 = 2;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_layer_stats {
    pub struct_size: usize,
    pub tokens: u64,
    pub assignments: u64,
    pub dropped: u64,
    pub aux_loss: f64,
    pub z_loss: f64,
    pub weight_bytes: u64,
    pub bound_bytes: u64,
}

// ---------------------------------------------------------------- models
#[repr(C)]
pub struct moe_model {
    _p: [u8; 0],
}

/// First version 0.1.0 (up to `max_context`); 0.6.0 appended `upcycle`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_model_params {
    pub struct_size: usize,
    pub weight_dtype: moe_dtype,
    pub placement: moe_placement,
    pub max_context: u32,
    // 0.6.0
    pub upcycle: *const moe_upcycle_params,
}

/// A token id field's value when the tokenizer has no such token.
pub const MOE_NO_TOKEN: i32 = -1;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_model_info {
    pub struct_size: usize,
    pub architecture: [c_char; 32],
    pub num_layers: u32,
    pub hidden_size: u32,
    pub vocab_size: u32,
    pub context_length: u32,
    pub num_moe_layers: u32,
    pub num_experts: u32,
    pub top_k: u32,
    pub bos_token_id: i32,
    pub eos_token_id: i32,
    pub weight_dtype: moe_dtype,
    pub weight_bytes: u64,
    pub weight_bytes_per_token: u64,
}

/// First version 0.1.0 (up to `user_data`); 0.8.0 appended `held_out`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_eval_params {
    pub struct_size: usize,
    pub seq_len: u32,
    pub max_tokens: u64,
    pub progress: moe_progress_fn,
    pub user_data: *mut c_void,
    pub held_out: f64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_eval_result {
    pub struct_size: usize,
    pub tokens_scored: u64,
    pub windows: u32,
    pub mean_nll: f64,
    pub perplexity: f64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub aux_loss: f64,
}

/// Receives each generated token and the text it completes; return non-zero
/// to stop.
pub type moe_token_fn =
    Option<unsafe extern "C" fn(token: i32, text: *const c_char, user_data: *mut c_void) -> c_int>;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_generate_params {
    pub struct_size: usize,
    pub max_new_tokens: u32,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u64,
    pub chat: i32,
    pub add_special: i32,
    pub on_token: moe_token_fn,
    pub user_data: *mut c_void,
    pub ignore_eos: i32,
}

pub type moe_stop_reason = c_int;
pub const MOE_STOP_LENGTH: moe_stop_reason = 0;
pub const MOE_STOP_EOS: moe_stop_reason = 1;
pub const MOE_STOP_CALLBACK: moe_stop_reason = 2;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_generate_result {
    pub struct_size: usize,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub prompt_seconds: f64,
    pub decode_seconds: f64,
    pub tokens_per_second: f64,
    pub stop_reason: moe_stop_reason,
}

// ---------------------------------------------------------------- training
#[repr(C)]
pub struct moe_trainer {
    _p: [u8; 0],
}

pub type moe_train_only = c_int;
pub const MOE_TRAIN_ALL: moe_train_only = 0;
pub const MOE_TRAIN_MOE: moe_train_only = 1;
pub const MOE_TRAIN_ROUTERS: moe_train_only = 2;

pub type moe_lr_schedule = c_int;
pub const MOE_LR_COSINE: moe_lr_schedule = 0;
pub const MOE_LR_CONSTANT: moe_lr_schedule = 1;

pub type moe_nonfinite = c_int;
pub const MOE_NONFINITE_ERROR: moe_nonfinite = 0;
pub const MOE_NONFINITE_SKIP: moe_nonfinite = 1;

/// First version 0.1.0 (up to `eval_windows`); 0.2.0 appended `on_nonfinite`;
/// 0.4.0 `micro_batch` and `recompute`; 0.5.0 `precision`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_trainer_params {
    pub struct_size: usize,
    pub seq_len: u32,
    pub batch: u32,
    pub steps: u32,
    pub warmup: u32,
    pub lr: f32,
    pub min_lr: f32,
    pub schedule: moe_lr_schedule,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub clip: f32,
    pub aux_loss_coef: f32,
    pub z_loss_coef: f32,
    pub train_only: moe_train_only,
    pub seed: u64,
    pub eval_fraction: f64,
    pub eval_windows: u32,
    pub reserved0: u32,
    pub on_nonfinite: moe_nonfinite,
    pub micro_batch: u32,
    pub recompute: i32,
    // 0.5.0
    pub precision: moe_dtype,
}

/// First version 0.1.0 (up to `max_expert_load`); 0.2.0 appended `skipped`; 0.4.0 appended
/// `model_flops` and `activation_bytes`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_train_stats {
    pub struct_size: usize,
    pub step: u64,
    pub loss: f64,
    pub aux_loss: f64,
    pub z_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub max_expert_load: f64,
    // 0.2.0
    pub skipped: i32,
    // 0.4.0
    pub model_flops: f64,
    pub activation_bytes: u64,
}

extern "C" {
    // version
    pub fn moe_version_number() -> u32;
    pub fn moe_version_string() -> *const c_char;

    // status
    pub fn moe_status_string(status: moe_status) -> *const c_char;
    pub fn moe_last_error() -> *const c_char;

    // inspection
    pub fn moe_checkpoint_inspect(out: *mut moe_checkpoint_info, path: *const c_char) -> moe_status;

    // upcycling
    pub fn moe_upcycle_params_init(params: *mut moe_upcycle_params, struct_size: usize) -> moe_status;
    pub fn moe_upcycle(
        out: *mut moe_upcycle_result,
        input_path: *const c_char,
        output_path: *const c_char,
        params: *const moe_upcycle_params,
    ) -> moe_status;
    pub fn moe_export_params_init(params: *mut moe_export_params, struct_size: usize) -> moe_status;
    pub fn moe_export(
        out: *mut moe_export_result,
        input_path: *const c_char,
        output_path: *const c_char,
        params: *const moe_export_params,
    ) -> moe_status;
    pub fn moe_calibrate(
        input_path: *const c_char,
        stats_path: *const c_char,
        params: *const moe_upcycle_params,
    ) -> moe_status;

    // models from scratch
    pub fn moe_init_params_init(params: *mut moe_init_params, struct_size: usize) -> moe_status;
    pub fn moe_init_model(
        out: *mut moe_init_result,
        tokenizer_source: *const c_char,
        output_path: *const c_char,
        params: *const moe_init_params,
    ) -> moe_status;

    // scaling laws
    pub fn moe_scaling_law_preset(out: *mut moe_scaling_law, name: *const c_char) -> moe_status;
    pub fn moe_scaling_law_predict(
        law: *const moe_scaling_law,
        tokens: *const f64,
        dense_tokens: *const f64,
        parameters: *const f64,
        count: usize,
        losses: *mut f64,
    ) -> moe_status;
    pub fn moe_fit_params_init(params: *mut moe_fit_params, struct_size: usize) -> moe_status;
    pub fn moe_scaling_fit(
        law: *mut moe_scaling_law,
        low: *mut moe_scaling_law,
        high: *mut moe_scaling_law,
        tokens: *const f64,
        dense_tokens: *const f64,
        parameters: *const f64,
        losses: *const f64,
        count: usize,
        params: *const moe_fit_params,
    ) -> moe_status;
    pub fn moe_study_params_init(params: *mut moe_study_params, struct_size: usize) -> moe_status;
    pub fn moe_study_run(
        recipe_path: *const c_char,
        out_dir: *const c_char,
        params: *const moe_study_params,
    ) -> moe_status;
    pub fn moe_plan_params_init(params: *mut moe_plan_params, struct_size: usize) -> moe_status;
    pub fn moe_scaling_plan(out: *mut moe_plan_result, params: *const moe_plan_params) -> moe_status;

    // runtime
    pub fn moe_runtime_params_init(params: *mut moe_runtime_params, struct_size: usize) -> moe_status;
    pub fn moe_runtime_create(out: *mut *mut moe_runtime, params: *const moe_runtime_params) -> moe_status;
    pub fn moe_runtime_free(runtime: *mut moe_runtime);
    pub fn moe_runtime_get_info(out: *mut moe_runtime_info, runtime: *const moe_runtime) -> moe_status;
    pub fn moe_runtime_measure_peak(runtime: *mut moe_runtime, dtype: moe_dtype, seconds: f64, gflops: *mut f64) -> moe_status;
    pub fn moe_runtime_describe(
        runtime: *const moe_runtime,
        layer: *const moe_layer_config,
        format: moe_text_format,
        buffer: *mut c_char,
        capacity: usize,
        needed: *mut usize,
    ) -> moe_status;

    // MoE layer
    pub fn moe_layer_config_init(config: *mut moe_layer_config, struct_size: usize) -> moe_status;
    pub fn moe_layer_create(
        out: *mut *mut moe_layer,
        runtime: *mut moe_runtime,
        config: *const moe_layer_config,
    ) -> moe_status;
    pub fn moe_layer_load(
        out: *mut *mut moe_layer,
        runtime: *mut moe_runtime,
        checkpoint_path: *const c_char,
        layer_index: u32,
        overrides: *const moe_layer_config,
    ) -> moe_status;
    pub fn moe_layer_free(layer: *mut moe_layer);
    pub fn moe_layer_get_config(out: *mut moe_layer_config, layer: *const moe_layer) -> moe_status;
    pub fn moe_layer_weight_count(
        out: *mut usize,
        layer: *const moe_layer,
        weight: moe_weight,
        expert: i64,
    ) -> moe_status;
    pub fn moe_layer_set_weight(
        layer: *mut moe_layer,
        weight: moe_weight,
        expert: i64,
        data: *const f32,
        count: usize,
    ) -> moe_status;
    pub fn moe_layer_get_weight(
        layer: *const moe_layer,
        weight: moe_weight,
        expert: i64,
        out: *mut f32,
        capacity: usize,
        needed: *mut usize,
    ) -> moe_status;
    pub fn moe_layer_borrow_experts(
        layer: *mut moe_layer,
        dtype: moe_dtype,
        gate: *const c_void,
        up: *const c_void,
        down: *const c_void,
    ) -> moe_status;
    pub fn moe_layer_init_random(layer: *mut moe_layer, seed: u64, std: f32) -> moe_status;
    pub fn moe_layer_forward(
        layer: *mut moe_layer,
        x: *const f32,
        tokens: usize,
        out: *mut f32,
        flags: u32,
    ) -> moe_status;
    pub fn moe_layer_backward(layer: *mut moe_layer, grad_out: *const f32, grad_x: *mut f32) -> moe_status;
    pub fn moe_layer_get_grad(
        layer: *const moe_layer,
        weight: moe_weight,
        expert: i64,
        out: *mut f32,
        capacity: usize,
        needed: *mut usize,
    ) -> moe_status;
    pub fn moe_layer_zero_grad(layer: *mut moe_layer) -> moe_status;
    pub fn moe_layer_set_noise_step(layer: *mut moe_layer, step: u64) -> moe_status;
    pub fn moe_layer_get_stats(
        out: *mut moe_layer_stats,
        layer: *const moe_layer,
        tokens_per_expert: *mut u64,
        capacity: usize,
        needed: *mut usize,
    ) -> moe_status;
    pub fn moe_layer_get_routing(
        layer: *const moe_layer,
        out: *mut f32,
        capacity: usize,
        needed: *mut usize,
    ) -> moe_status;

    // models
    pub fn moe_model_params_init(params: *mut moe_model_params, struct_size: usize) -> moe_status;
    pub fn moe_model_load(
        out: *mut *mut moe_model,
        runtime: *mut moe_runtime,
        path: *const c_char,
        params: *const moe_model_params,
    ) -> moe_status;
    pub fn moe_model_free(model: *mut moe_model);
    pub fn moe_model_get_info(out: *mut moe_model_info, model: *const moe_model) -> moe_status;
    pub fn moe_model_tokenize(
        model: *const moe_model,
        text: *const c_char,
        length: usize,
        add_special: i32,
        tokens: *mut i32,
        capacity: usize,
        needed: *mut usize,
    ) -> moe_status;
    pub fn moe_model_detokenize(
        model: *const moe_model,
        tokens: *const i32,
        count: usize,
        skip_special: i32,
        buffer: *mut c_char,
        capacity: usize,
        needed: *mut usize,
    ) -> moe_status;
    pub fn moe_model_logits(
        model: *mut moe_model,
        tokens: *const i32,
        count: usize,
        logits: *mut f32,
        capacity: usize,
        needed: *mut usize,
    ) -> moe_status;
    pub fn moe_eval_params_init(params: *mut moe_eval_params, struct_size: usize) -> moe_status;
    pub fn moe_model_eval_text(
        out: *mut moe_eval_result,
        model: *mut moe_model,
        text: *const c_char,
        length: usize,
        params: *const moe_eval_params,
    ) -> moe_status;
    pub fn moe_model_eval_tokens(
        out: *mut moe_eval_result,
        model: *mut moe_model,
        tokens: *const i32,
        count: usize,
        params: *const moe_eval_params,
    ) -> moe_status;
    pub fn moe_model_router_stats(
        model: *const moe_model,
        layer: u32,
        tokens_per_expert: *mut u64,
        capacity: usize,
        needed: *mut usize,
    ) -> moe_status;
    pub fn moe_generate_params_init(params: *mut moe_generate_params, struct_size: usize) -> moe_status;
    pub fn moe_model_generate(
        out: *mut moe_generate_result,
        model: *mut moe_model,
        prompt: *const c_char,
        params: *const moe_generate_params,
        text: *mut c_char,
        capacity: usize,
        needed: *mut usize,
    ) -> moe_status;

    // training
    pub fn moe_trainer_params_init(params: *mut moe_trainer_params, struct_size: usize) -> moe_status;
    pub fn moe_trainer_create(
        out: *mut *mut moe_trainer,
        model: *mut moe_model,
        tokens: *const i32,
        count: usize,
        params: *const moe_trainer_params,
    ) -> moe_status;
    pub fn moe_trainer_create_text(
        out: *mut *mut moe_trainer,
        model: *mut moe_model,
        text: *const c_char,
        length: usize,
        params: *const moe_trainer_params,
    ) -> moe_status;
    pub fn moe_trainer_free(trainer: *mut moe_trainer);
    pub fn moe_trainer_step(out: *mut moe_train_stats, trainer: *mut moe_trainer) -> moe_status;
    pub fn moe_trainer_eval(mean_nll: *mut f64, trainer: *mut moe_trainer) -> moe_status;
    pub fn moe_trainer_get_step(out: *mut u64, trainer: *const moe_trainer) -> moe_status;
    pub fn moe_trainer_save(trainer: *mut moe_trainer, path: *const c_char, force: i32) -> moe_status;
    pub fn moe_trainer_resume(trainer: *mut moe_trainer, path: *const c_char) -> moe_status;

    // names
    pub fn moe_dtype_name(value: moe_dtype) -> *const c_char;
    pub fn moe_dtype_from_name(out: *mut moe_dtype, name: *const c_char) -> moe_status;
    pub fn moe_method_name(value: moe_method) -> *const c_char;
    pub fn moe_method_from_name(out: *mut moe_method, name: *const c_char) -> moe_status;
    pub fn moe_router_init_name(value: moe_router_init) -> *const c_char;
    pub fn moe_router_init_from_name(out: *mut moe_router_init, name: *const c_char) -> moe_status;
    pub fn moe_routing_name(value: moe_routing) -> *const c_char;
    pub fn moe_routing_from_name(out: *mut moe_routing, name: *const c_char) -> moe_status;
    pub fn moe_format_name(value: moe_format) -> *const c_char;
    pub fn moe_format_from_name(out: *mut moe_format, name: *const c_char) -> moe_status;
    pub fn moe_partition_select_name(value: moe_partition_select) -> *const c_char;
    pub fn moe_partition_select_from_name(out: *mut moe_partition_select, name: *const c_char) -> moe_status;
    pub fn moe_granular_scaling_name(value: moe_granular_scaling) -> *const c_char;
    pub fn moe_granular_scaling_from_name(out: *mut moe_granular_scaling, name: *const c_char) -> moe_status;
    pub fn moe_importance_name(value: moe_importance) -> *const c_char;
    pub fn moe_importance_from_name(out: *mut moe_importance, name: *const c_char) -> moe_status;
    pub fn moe_drop_select_name(value: moe_drop_select) -> *const c_char;
    pub fn moe_drop_select_from_name(out: *mut moe_drop_select, name: *const c_char) -> moe_status;
    pub fn moe_placement_name(value: moe_placement) -> *const c_char;
    pub fn moe_placement_from_name(out: *mut moe_placement, name: *const c_char) -> moe_status;
    pub fn moe_text_format_name(value: moe_text_format) -> *const c_char;
    pub fn moe_text_format_from_name(out: *mut moe_text_format, name: *const c_char) -> moe_status;
    pub fn moe_weight_name(value: moe_weight) -> *const c_char;
    pub fn moe_weight_from_name(out: *mut moe_weight, name: *const c_char) -> moe_status;
    pub fn moe_stop_reason_name(value: moe_stop_reason) -> *const c_char;
    pub fn moe_stop_reason_from_name(out: *mut moe_stop_reason, name: *const c_char) -> moe_status;
    pub fn moe_train_only_name(value: moe_train_only) -> *const c_char;
    pub fn moe_train_only_from_name(out: *mut moe_train_only, name: *const c_char) -> moe_status;
    pub fn moe_lr_schedule_name(value: moe_lr_schedule) -> *const c_char;
    pub fn moe_lr_schedule_from_name(out: *mut moe_lr_schedule, name: *const c_char) -> moe_status;
    pub fn moe_nonfinite_name(value: moe_nonfinite) -> *const c_char;
    pub fn moe_nonfinite_from_name(out: *mut moe_nonfinite, name: *const c_char) -> moe_status;
    pub fn moe_law_form_name(value: moe_law_form) -> *const c_char;
    pub fn moe_law_form_from_name(out: *mut moe_law_form, name: *const c_char) -> moe_status;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::mem::{size_of, MaybeUninit};

    #[test]
    fn init_fills_struct_size_and_defaults() {
        unsafe {
            assert_eq!(moe_version_number(), MOE_VERSION_NUMBER);
            let v = CStr::from_ptr(moe_version_string()).to_str().unwrap();
            assert_eq!(v, MOE_VERSION_STRING);
            let s = CStr::from_ptr(moe_status_string(MOE_ERR_NUMERIC));
            assert!(!s.to_bytes().is_empty());

            let mut c = MaybeUninit::<moe_layer_config>::zeroed();
            assert_eq!(moe_layer_config_init(c.as_mut_ptr(), size_of::<moe_layer_config>()), MOE_OK);
            let c = c.assume_init();
            assert_eq!(c.struct_size, size_of::<moe_layer_config>());
            assert_eq!(c.routing, MOE_ROUTING_SOFTMAX_TOPK_RENORM);
            assert_eq!(c.placement, MOE_PLACEMENT_DEFAULT);
            assert_eq!(c.storage, MOE_DTYPE_F32);
            assert!((c.aux_loss_coef - 0.01).abs() < 1e-7);
            assert!((c.z_loss_coef - 0.001).abs() < 1e-7);

            let mut p = MaybeUninit::<moe_runtime_params>::zeroed();
            assert_eq!(moe_runtime_params_init(p.as_mut_ptr(), size_of::<moe_runtime_params>()), MOE_OK);
            let p = p.assume_init();
            assert_eq!(p.struct_size, size_of::<moe_runtime_params>());
            assert!(p.topology_synthetic.is_null());

            let mut m = MaybeUninit::<moe_model_params>::zeroed();
            assert_eq!(moe_model_params_init(m.as_mut_ptr(), size_of::<moe_model_params>()), MOE_OK);
            let m = m.assume_init();
            assert!(m.upcycle.is_null());
            assert_eq!(m.struct_size, size_of::<moe_model_params>());
            assert_eq!(m.weight_dtype, MOE_DTYPE_DEFAULT);
            assert_eq!(m.placement, MOE_PLACEMENT_DEFAULT);

            let mut u = MaybeUninit::<moe_upcycle_params>::zeroed();
            assert_eq!(moe_upcycle_params_init(u.as_mut_ptr(), size_of::<moe_upcycle_params>()), MOE_OK);
            let u = u.assume_init();
            assert_eq!(u.dtype, MOE_DTYPE_DEFAULT);
            assert_eq!(u.method, MOE_METHOD_COPY);
            assert_eq!(u.format, MOE_FORMAT_MIXTRAL);
            assert!(u.progress.is_none() && u.layers.is_null());

            let mut i = moe_init_params::default();
            assert_eq!(moe_init_params_init(&mut i, size_of::<moe_init_params>()), MOE_OK);
            assert_eq!((i.hidden_size, i.num_layers, i.num_experts, i.top_k), (256, 4, 0, 2));
            assert_eq!(i.dtype, MOE_DTYPE_DEFAULT);
            assert_eq!(i.tie_embeddings, 1);

            let mut t = moe_trainer_params::default();
            assert_eq!(moe_trainer_params_init(&mut t, size_of::<moe_trainer_params>()), MOE_OK);
            assert_eq!(t.on_nonfinite, MOE_NONFINITE_ERROR);
            assert_eq!(t.schedule, MOE_LR_COSINE);

            // A size below the struct's first version is refused.
            let mut t2 = moe_trainer_params::default();
            assert_eq!(moe_trainer_params_init(&mut t2, 4), MOE_ERR_INVALID_ARGUMENT);
        }
    }
}
