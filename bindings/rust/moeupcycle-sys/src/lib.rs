//! Raw FFI declarations for a subset of `include/moeupcycle.h`.
//!
//! Field order and types follow the header exactly. C enums are `int`
//! (`c_int`), `size_t` is `usize`, and `char name[N]` is `[c_char; N]`.
//! Parameter structs start with `struct_size`; always call the matching
//! `*_init` function first.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int};

// ---------------------------------------------------------------- version
pub const MOE_VERSION_MAJOR: u32 = 0;
pub const MOE_VERSION_MINOR: u32 = 1;
pub const MOE_VERSION_PATCH: u32 = 0;
pub const MOE_VERSION_NUMBER: u32 =
    MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH;
pub const MOE_VERSION_STRING: &str = "0.1.0";

// ---------------------------------------------------------------- status
/// `moe_status` (a C enum: `int`).
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

// ---------------------------------------------------------------- enums
pub type moe_dtype = c_int;
pub const MOE_DTYPE_F32: moe_dtype = 0;
pub const MOE_DTYPE_F16: moe_dtype = 1;
pub const MOE_DTYPE_BF16: moe_dtype = 2;
pub const MOE_DTYPE_Q8_0: moe_dtype = 3;
pub const MOE_DTYPE_Q4_0: moe_dtype = 4;
pub const MOE_DTYPE_Q4_1: moe_dtype = 5;

pub type moe_routing = c_int;
pub const MOE_ROUTING_SOFTMAX_TOPK_RENORM: moe_routing = 0;
pub const MOE_ROUTING_SOFTMAX_TOPK: moe_routing = 1;
pub const MOE_ROUTING_TOPK_SOFTMAX: moe_routing = 2;
pub const MOE_ROUTING_SIGMOID_TOPK: moe_routing = 3;
pub const MOE_ROUTING_SIGMOID_TOPK_RENORM: moe_routing = 4;

pub type moe_placement = c_int;
pub const MOE_PLACEMENT_ROW_SLICE: moe_placement = 0;
pub const MOE_PLACEMENT_EXPERT: moe_placement = 1;
pub const MOE_PLACEMENT_INTERLEAVE: moe_placement = 2;
pub const MOE_PLACEMENT_NONE: moe_placement = 3;

pub type moe_weight = c_int;
pub const MOE_WEIGHT_ROUTER: moe_weight = 0;
pub const MOE_WEIGHT_GATE: moe_weight = 1;
pub const MOE_WEIGHT_UP: moe_weight = 2;
pub const MOE_WEIGHT_DOWN: moe_weight = 3;
pub const MOE_WEIGHT_SHARED_GATE: moe_weight = 4;
pub const MOE_WEIGHT_SHARED_UP: moe_weight = 5;
pub const MOE_WEIGHT_SHARED_DOWN: moe_weight = 6;
pub const MOE_WEIGHT_SHARED_EXPERT_GATE: moe_weight = 7;

pub const MOE_FORWARD_SAVE: u32 = 1;
pub const MOE_FORWARD_TRAIN: u32 = 2;

// ---------------------------------------------------------------- opaque handles
#[repr(C)]
pub struct moe_runtime {
    _p: [u8; 0],
}
#[repr(C)]
pub struct moe_layer {
    _p: [u8; 0],
}
#[repr(C)]
pub struct moe_model {
    _p: [u8; 0],
}

// ---------------------------------------------------------------- structs
/// x86_64 layout: struct_size@0, threads@8, pin@12, placement@16, (pad 4),
/// topology_synthetic@24, topology_xml@32; size 40.
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

/// x86_64: struct_size@0, 8 x 4-byte fields @8..40, blas_core[32]@40; size 72.
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
}

/// x86_64: struct_size@0, hidden@8, ffn@12, experts@16, top_k@20,
/// routing@24, capacity_factor@28, expert_choice@32, shared_ffn@36,
/// storage@40, placement@44, jitter@48, (pad 4), seed@56,
/// balance_loss_coef@64, z_loss_coef@68; size 72.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct moe_layer_config {
    pub struct_size: usize,
    pub hidden: u32,
    pub ffn: u32,
    pub experts: u32,
    pub top_k: u32,
    pub routing: moe_routing,
    pub capacity_factor: f32,
    pub expert_choice: i32,
    pub shared_ffn: u32,
    pub storage: moe_dtype,
    pub placement: i32,
    pub jitter: f32,
    pub seed: u64,
    pub balance_loss_coef: f32,
    pub z_loss_coef: f32,
}

/// x86_64: struct_size@0, tokens@8, assignments@16, dropped@24,
/// balance_loss@32, z_loss@40, weight_bytes@48, bound_bytes@56; size 64.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_layer_stats {
    pub struct_size: usize,
    pub tokens: u64,
    pub assignments: u64,
    pub dropped: u64,
    pub balance_loss: f64,
    pub z_loss: f64,
    pub weight_bytes: u64,
    pub bound_bytes: u64,
}

/// x86_64: struct_size@0, weight_dtype@8, placement@12, max_context@16,
/// (pad 4); size 24.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct moe_model_params {
    pub struct_size: usize,
    pub weight_dtype: i32,
    pub placement: i32,
    pub max_context: u32,
}

/// x86_64: struct_size@0, architecture[32]@8, num_layers@40, hidden_size@44,
/// vocab_size@48, context_length@52, num_moe_layers@56, num_experts@60,
/// top_k@64, bos@68, eos@72, weight_dtype@76, weight_bytes@80,
/// weight_bytes_per_token@88; size 96.
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

extern "C" {
    // version
    pub fn moe_version_number() -> u32;
    pub fn moe_version_string() -> *const c_char;

    // status
    pub fn moe_status_string(status: moe_status) -> *const c_char;
    pub fn moe_last_error() -> *const c_char;

    // runtime
    pub fn moe_runtime_params_init(params: *mut moe_runtime_params);
    pub fn moe_runtime_create(
        out: *mut *mut moe_runtime,
        params: *const moe_runtime_params,
    ) -> moe_status;
    pub fn moe_runtime_free(runtime: *mut moe_runtime);
    pub fn moe_runtime_get_info(
        out: *mut moe_runtime_info,
        runtime: *const moe_runtime,
    ) -> moe_status;

    // MoE layer
    pub fn moe_layer_config_init(config: *mut moe_layer_config);
    pub fn moe_layer_create(
        out: *mut *mut moe_layer,
        runtime: *mut moe_runtime,
        config: *const moe_layer_config,
    ) -> moe_status;
    pub fn moe_layer_free(layer: *mut moe_layer);
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
    ) -> moe_status;
    pub fn moe_layer_init_random(layer: *mut moe_layer, seed: u64, std: f32) -> moe_status;
    pub fn moe_layer_forward(
        layer: *mut moe_layer,
        x: *const f32,
        tokens: usize,
        out: *mut f32,
        flags: u32,
    ) -> moe_status;
    pub fn moe_layer_backward(
        layer: *mut moe_layer,
        grad_out: *const f32,
        grad_x: *mut f32,
    ) -> moe_status;
    pub fn moe_layer_get_grad(
        layer: *const moe_layer,
        weight: moe_weight,
        expert: i64,
        out: *mut f32,
        capacity: usize,
    ) -> moe_status;
    pub fn moe_layer_zero_grad(layer: *mut moe_layer) -> moe_status;
    pub fn moe_layer_get_stats(
        out: *mut moe_layer_stats,
        layer: *const moe_layer,
        tokens_per_expert: *mut u64,
        capacity: usize,
    ) -> moe_status;

    // model
    pub fn moe_model_params_init(params: *mut moe_model_params);
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
        count: *mut usize,
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
    ) -> moe_status;
}


#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::mem::{align_of, size_of, MaybeUninit};

    /// Sizes computed by hand from the header for x86_64 / aarch64 LP64
    /// (cross-checked against a C program compiled with the header).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn struct_sizes_match_header() {
        assert_eq!(size_of::<moe_runtime_params>(), 40);
        assert_eq!(size_of::<moe_runtime_info>(), 72);
        assert_eq!(size_of::<moe_layer_config>(), 72);
        assert_eq!(size_of::<moe_layer_stats>(), 64);
        assert_eq!(size_of::<moe_model_params>(), 24);
        assert_eq!(size_of::<moe_model_info>(), 96);
        assert_eq!(align_of::<moe_layer_config>(), 8);
    }

    #[test]
    fn init_fills_struct_size_and_version() {
        unsafe {
            assert_eq!(moe_version_number(), MOE_VERSION_NUMBER);
            let v = CStr::from_ptr(moe_version_string()).to_str().unwrap();
            assert_eq!(v, MOE_VERSION_STRING);
            let s = CStr::from_ptr(moe_status_string(MOE_ERR_INVALID_ARGUMENT));
            assert!(!s.to_bytes().is_empty());

            let mut c = MaybeUninit::<moe_layer_config>::zeroed();
            moe_layer_config_init(c.as_mut_ptr());
            let c = c.assume_init();
            assert_eq!(c.struct_size, size_of::<moe_layer_config>());
            assert_eq!(c.routing, MOE_ROUTING_SOFTMAX_TOPK_RENORM);
            assert_eq!(c.placement, -1);
            assert!((c.balance_loss_coef - 0.01).abs() < 1e-7);
            assert!((c.z_loss_coef - 0.001).abs() < 1e-7);

            let mut p = MaybeUninit::<moe_runtime_params>::zeroed();
            moe_runtime_params_init(p.as_mut_ptr());
            let p = p.assume_init();
            assert_eq!(p.struct_size, size_of::<moe_runtime_params>());
            assert!(p.topology_synthetic.is_null());

            let mut m = moe_model_params::default();
            moe_model_params_init(&mut m);
            assert_eq!(m.struct_size, size_of::<moe_model_params>());
            assert_eq!(m.weight_dtype, -1);
            assert_eq!(m.placement, -1);
        }
    }
}
