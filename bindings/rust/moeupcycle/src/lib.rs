//! Safe wrapper over libmoeupcycle (`include/moeupcycle.h`, ABI 0.3).
//!
//! Threading follows the header: a [`Runtime`] may be shared by several
//! threads and layers (`Send + Sync`); a [`MoELayer`], [`Model`] or
//! [`Trainer`] must be used by one thread at a time (`Send`, not `Sync`).
//! Layers and models borrow the runtime they were created on, and a trainer
//! borrows its model mutably, so each outlives what depends on it.
//!
//! Enum names ([`Method::name`], `"drop".parse::<Method>()`) come from the
//! library's name tables (`moe_<enum>_name` / `moe_<enum>_from_name`).
//! Variable-sized answers follow the header's output-buffer rule: the
//! wrapper asks for the size, then fills; the `*_into` functions fill caller
//! memory and fail with [`MOE_ERR_BUFFER_TOO_SMALL`] and [`Error::needed`]
//! when it is too small.

pub use moeupcycle_sys as sys;
use std::any::Any;
use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{size_of, MaybeUninit};
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::str::FromStr;

pub use sys::{
    MOE_ERR_BUFFER_TOO_SMALL, MOE_ERR_CANCELLED, MOE_ERR_EXISTS, MOE_ERR_FORMAT, MOE_ERR_INTERNAL,
    MOE_ERR_INVALID_ARGUMENT, MOE_ERR_IO, MOE_ERR_NOT_FOUND, MOE_ERR_NULL_POINTER, MOE_ERR_NUMERIC,
    MOE_ERR_OUT_OF_MEMORY, MOE_ERR_SHAPE, MOE_ERR_UNSUPPORTED, MOE_OK,
};

/// The `expert` argument meaning every expert (the whole tensor).
pub const ALL_EXPERTS: i64 = sys::MOE_ALL_EXPERTS;

// ------------------------------------------------------------------ errors

/// A failed call: the `moe_status` code and the library's message
/// (`moe_last_error()`), or a message from this wrapper for checks done
/// before calling into C.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: i32,
    pub message: String,
    /// With MOE_ERR_BUFFER_TOO_SMALL: the elements the whole answer takes.
    pub needed: Option<usize>,
}

impl Error {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), needed: None }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Error::new(sys::MOE_ERR_INVALID_ARGUMENT, message)
    }
    /// The library's static text for this code (e.g. "invalid argument").
    pub fn status_text(&self) -> String {
        status_string(self.code)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.status_text(), self.code, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

unsafe fn cstr_to_string(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn chars_to_string(a: &[c_char]) -> String {
    let bytes: Vec<u8> = a.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(format!("{what}: {s:?} contains a NUL byte")))
}

fn c_path(what: &str, p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid(format!("{what}: {} contains a NUL byte", p.display())))
}

/// Static text describing a status code.
pub fn status_string(code: i32) -> String {
    unsafe { cstr_to_string(sys::moe_status_string(code)) }
}

/// Turn a status into a Result, reading the thread's last error message.
fn check(status: sys::moe_status) -> Result<()> {
    if status == sys::MOE_OK {
        Ok(())
    } else {
        // moe_last_error is per thread and describes the call that just failed.
        let message = unsafe { cstr_to_string(sys::moe_last_error()) };
        Err(Error::new(status, message))
    }
}

/// The library's version number (MAJOR * 10000 + MINOR * 100 + PATCH).
pub fn version_number() -> u32 {
    unsafe { sys::moe_version_number() }
}

/// The library's version text, e.g. "0.8.0".
pub fn version_string() -> String {
    unsafe { cstr_to_string(sys::moe_version_string()) }
}

// ------------------------------------------------------------------ output buffers

/// One call by the output-buffer rule, `call(buf, capacity, &mut needed)`;
/// returns `needed`. Too small a capacity is MOE_ERR_BUFFER_TOO_SMALL with
/// [`Error::needed`] set (nothing was written).
fn fill<T>(
    call: &mut dyn FnMut(*mut T, usize, *mut usize) -> sys::moe_status,
    buf: *mut T,
    capacity: usize,
) -> Result<usize> {
    let mut needed = 0usize;
    let status = call(buf, capacity, &mut needed);
    check(status).map_err(|mut e| {
        if status == sys::MOE_ERR_BUFFER_TOO_SMALL {
            e.needed = Some(needed);
        }
        e
    })?;
    Ok(needed)
}

/// [`fill`] into a slice.
fn fill_slice<T>(call: &mut dyn FnMut(*mut T, usize, *mut usize) -> sys::moe_status, buf: &mut [T]) -> Result<usize> {
    fill(call, buf.as_mut_ptr(), buf.len())
}

/// The whole answer: ask with NULL and 0, then fill a vector of that size.
fn fetch<T: Copy + Default>(mut call: impl FnMut(*mut T, usize, *mut usize) -> sys::moe_status) -> Result<Vec<T>> {
    let needed = fill(&mut call, ptr::null_mut(), 0)?;
    let mut v = vec![T::default(); needed];
    if needed > 0 {
        let written = fill_slice(&mut call, &mut v)?;
        v.truncate(written);
    }
    Ok(v)
}

/// Text by the output-buffer rule, without its NUL.
fn fetch_text(call: impl FnMut(*mut c_char, usize, *mut usize) -> sys::moe_status) -> Result<String> {
    let mut bytes: Vec<u8> = fetch(call)?.into_iter().map(|c: c_char| c as u8).collect();
    if bytes.last() == Some(&0) {
        bytes.pop();
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

// ------------------------------------------------------------------ parameter and result structs

/// A parameter struct filled with the library's defaults by its `_init`
/// function (with this header's size). Should the library refuse, the struct
/// stays zeroed, with struct_size 0, and the call it is passed to fails.
fn defaults<T>(init: unsafe extern "C" fn(*mut T, usize) -> sys::moe_status) -> T {
    let mut p = MaybeUninit::<T>::zeroed();
    unsafe {
        init(p.as_mut_ptr(), size_of::<T>());
        p.assume_init()
    }
}

/// A result struct: zeroed, then `set_size` records its size.
fn result<T>(set_size: impl FnOnce(&mut T, usize)) -> T {
    // Every result struct is plain numbers and char arrays: all-zero is valid.
    let mut r: T = unsafe { MaybeUninit::zeroed().assume_init() };
    set_size(&mut r, size_of::<T>());
    r
}

// ------------------------------------------------------------------ enums

macro_rules! c_enum {
    (
        $(#[$meta:meta])*
        $name:ident: $cty:ident, $name_fn:ident, $from_fn:ident {
            $($(#[$vmeta:meta])* $variant:ident = $c:ident),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum $name {
            $($(#[$vmeta])* $variant = sys::$c),*
        }

        impl $name {
            /// Every value, in the header's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The C value.
            pub fn raw(self) -> sys::$cty {
                self as sys::$cty
            }

            /// The value of a C enum value, if it is one this crate knows.
            pub fn from_raw(value: sys::$cty) -> Option<$name> {
                $(if value == sys::$c { return Some($name::$variant); })*
                None
            }

            /// The library's canonical name (empty only when the library
            /// is older than this crate and lacks the value).
            pub fn name(self) -> &'static str {
                // Static text of the library, valid for the whole process.
                let p = unsafe { sys::$name_fn(self.raw()) };
                if p.is_null() {
                    ""
                } else {
                    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
                }
            }
        }

        impl FromStr for $name {
            type Err = Error;
            /// By the library's table: case ignored, '_' read as '-'.
            fn from_str(s: &str) -> Result<$name> {
                let c = c_string("name", s)?;
                let mut out: sys::$cty = 0;
                unsafe { check(sys::$from_fn(&mut out, c.as_ptr()))? };
                $name::from_raw(out).ok_or_else(|| Error::new(
                    sys::MOE_ERR_INTERNAL,
                    format!("{} value {out} (for {s:?}) is not known to this crate", stringify!($name)),
                ))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

c_enum! {
    /// Storage type of tensors.
    Dtype: moe_dtype, moe_dtype_name, moe_dtype_from_name {
        /// Where a field accepts it: the dtype the context chooses.
        Default = MOE_DTYPE_DEFAULT,
        F32 = MOE_DTYPE_F32,
        F16 = MOE_DTYPE_F16,
        Bf16 = MOE_DTYPE_BF16,
        Q8_0 = MOE_DTYPE_Q8_0,
        Q4_0 = MOE_DTYPE_Q4_0,
        Q4_1 = MOE_DTYPE_Q4_1,
    }
}

c_enum! {
    /// How experts are made from the dense FFN.
    Method: moe_method, moe_method_name, moe_method_from_name {
        Copy = MOE_METHOD_COPY,
        Drop = MOE_METHOD_DROP,
        Noise = MOE_METHOD_NOISE,
        Granular = MOE_METHOD_GRANULAR,
        Partition = MOE_METHOD_PARTITION,
    }
}

c_enum! {
    /// How router weights start.
    RouterInit: moe_router_init, moe_router_init_name, moe_router_init_from_name {
        Normal = MOE_ROUTER_INIT_NORMAL,
        Uniform = MOE_ROUTER_INIT_UNIFORM,
        Zeros = MOE_ROUTER_INIT_ZEROS,
        /// k-means on the calibration router inputs (needs calibration).
        Kmeans = MOE_ROUTER_INIT_KMEANS,
        /// From a prompts file, one line per expert.
        Prompts = MOE_ROUTER_INIT_PROMPTS,
    }
}

c_enum! {
    /// How tokens choose experts and weigh their outputs.
    Routing: moe_routing, moe_routing_name, moe_routing_from_name {
        SoftmaxTopkRenorm = MOE_ROUTING_SOFTMAX_TOPK_RENORM,
        SoftmaxTopk = MOE_ROUTING_SOFTMAX_TOPK,
        TopkSoftmax = MOE_ROUTING_TOPK_SOFTMAX,
        SigmoidTopk = MOE_ROUTING_SIGMOID_TOPK,
        SigmoidTopkRenorm = MOE_ROUTING_SIGMOID_TOPK_RENORM,
    }
}

c_enum! {
    /// Checkpoint format of upcycled output.
    Format: moe_format, moe_format_name, moe_format_from_name {
        Mixtral = MOE_FORMAT_MIXTRAL,
        Qwen2Moe = MOE_FORMAT_QWEN2_MOE,
    }
}

c_enum! {
    /// How `partition` chooses each expert's neurons.
    PartitionSelect: moe_partition_select, moe_partition_select_name, moe_partition_select_from_name {
        Random = MOE_PARTITION_RANDOM,
        Uniform = MOE_PARTITION_UNIFORM,
        Importance = MOE_PARTITION_IMPORTANCE,
        /// By a calibration statistic (needs calibration).
        Activation = MOE_PARTITION_ACTIVATION,
        /// Grouped by co-activation, every neuron once (needs calibration).
        Cluster = MOE_PARTITION_CLUSTER,
    }
}

c_enum! {
    /// The calibration statistic that ranks neurons.
    Importance: moe_importance, moe_importance_name, moe_importance_from_name {
        L1 = MOE_IMPORTANCE_L1,
        L2 = MOE_IMPORTANCE_L2,
        Freq = MOE_IMPORTANCE_FREQ,
    }
}

c_enum! {
    /// Which neurons `drop` re-draws.
    DropSelect: moe_drop_select, moe_drop_select_name, moe_drop_select_from_name {
        Random = MOE_DROP_SELECT_RANDOM,
        LeastImportant = MOE_DROP_SELECT_LEAST_IMPORTANT,
    }
}

c_enum! {
    /// How `granular` compensates the output scale.
    GranularScaling: moe_granular_scaling, moe_granular_scaling_name, moe_granular_scaling_from_name {
        Down = MOE_GRANULAR_SCALE_DOWN,
        CubeRoot = MOE_GRANULAR_SCALE_CUBE_ROOT,
        None = MOE_GRANULAR_SCALE_NONE,
    }
}

c_enum! {
    /// How a layer's expert weights are spread over NUMA nodes.
    Placement: moe_placement, moe_placement_name, moe_placement_from_name {
        /// The runtime's placement.
        Default = MOE_PLACEMENT_DEFAULT,
        RowSlice = MOE_PLACEMENT_ROW_SLICE,
        Expert = MOE_PLACEMENT_EXPERT,
        Interleave = MOE_PLACEMENT_INTERLEAVE,
        None = MOE_PLACEMENT_NONE,
    }
}

c_enum! {
    /// Layout of [`Runtime::describe`]'s text.
    TextFormat: moe_text_format, moe_text_format_name, moe_text_format_from_name {
        Plain = MOE_TEXT_PLAIN,
        Json = MOE_TEXT_JSON,
    }
}

c_enum! {
    /// The tensors of a layer (row-major, HF layout).
    Weight: moe_weight, moe_weight_name, moe_weight_from_name {
        Router = MOE_WEIGHT_ROUTER,
        Gate = MOE_WEIGHT_GATE,
        Up = MOE_WEIGHT_UP,
        Down = MOE_WEIGHT_DOWN,
        SharedGate = MOE_WEIGHT_SHARED_GATE,
        SharedUp = MOE_WEIGHT_SHARED_UP,
        SharedDown = MOE_WEIGHT_SHARED_DOWN,
        SharedExpertGate = MOE_WEIGHT_SHARED_EXPERT_GATE,
    }
}

c_enum! {
    /// Why generation stopped.
    StopReason: moe_stop_reason, moe_stop_reason_name, moe_stop_reason_from_name {
        Length = MOE_STOP_LENGTH,
        Eos = MOE_STOP_EOS,
        Callback = MOE_STOP_CALLBACK,
    }
}

c_enum! {
    /// Which parameters are trained.
    TrainOnly: moe_train_only, moe_train_only_name, moe_train_only_from_name {
        All = MOE_TRAIN_ALL,
        Moe = MOE_TRAIN_MOE,
        Routers = MOE_TRAIN_ROUTERS,
    }
}

c_enum! {
    /// Learning-rate schedule.
    LrSchedule: moe_lr_schedule, moe_lr_schedule_name, moe_lr_schedule_from_name {
        Cosine = MOE_LR_COSINE,
        Constant = MOE_LR_CONSTANT,
    }
}

c_enum! {
    /// What a training step does when its loss or gradient norm is not finite.
    NonFinite: moe_nonfinite, moe_nonfinite_name, moe_nonfinite_from_name {
        Error = MOE_NONFINITE_ERROR,
        Skip = MOE_NONFINITE_SKIP,
    }
}

/// A C enum value returned by the library, as this crate's enum.
fn known<E>(what: &str, value: i32, from_raw: fn(i32) -> Option<E>) -> Result<E> {
    from_raw(value).ok_or_else(|| Error::new(sys::MOE_ERR_INTERNAL, format!("{what} {value} is not known to this crate")))
}

// ------------------------------------------------------------------ inspection and upcycling

/// What [`inspect`] reports about a dense or MoE checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    pub architecture: String,
    pub container: String,
    pub dtype: String,
    pub dtype_summary: String,
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
    pub tied_embeddings: bool,
    pub qkv_bias: bool,
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

/// Inspect the checkpoint at `path` (HF directory or .gguf file).
pub fn inspect(path: impl AsRef<Path>) -> Result<CheckpointInfo> {
    let c = c_path("path", path.as_ref())?;
    let mut i = result(|i: &mut sys::moe_checkpoint_info, n| i.struct_size = n);
    unsafe { check(sys::moe_checkpoint_inspect(&mut i, c.as_ptr()))? };
    Ok(CheckpointInfo {
        architecture: chars_to_string(&i.architecture),
        container: chars_to_string(&i.container),
        dtype: chars_to_string(&i.dtype),
        dtype_summary: chars_to_string(&i.dtype_summary),
        num_layers: i.num_layers,
        hidden_size: i.hidden_size,
        intermediate_size: i.intermediate_size,
        num_heads: i.num_heads,
        num_kv_heads: i.num_kv_heads,
        head_dim: i.head_dim,
        vocab_size: i.vocab_size,
        max_position_embeddings: i.max_position_embeddings,
        rope_theta: i.rope_theta,
        rms_norm_eps: i.rms_norm_eps,
        tied_embeddings: i.tied_embeddings != 0,
        qkv_bias: i.qkv_bias != 0,
        num_experts: i.num_experts,
        top_k: i.top_k,
        moe_intermediate_size: i.moe_intermediate_size,
        shared_expert_intermediate_size: i.shared_expert_intermediate_size,
        num_moe_layers: i.num_moe_layers,
        tensor_count: i.tensor_count,
        param_count: i.param_count,
        active_param_count: i.active_param_count,
        data_bytes: i.data_bytes,
    })
}

/// What [`upcycle`] builds: the library's defaults, changed by the setters.
#[derive(Debug, Clone)]
pub struct UpcycleOptions {
    raw: sys::moe_upcycle_params,
    layers: Option<String>,
    calibration: Option<PathBuf>,
    stats: Option<PathBuf>,
    save_stats: Option<PathBuf>,
    router_prompts: Option<PathBuf>,
    router_negative_prompts: Option<PathBuf>,
}

impl Default for UpcycleOptions {
    fn default() -> Self {
        UpcycleOptions {
            raw: defaults(sys::moe_upcycle_params_init),
            layers: None,
            calibration: None,
            stats: None,
            save_stats: None,
            router_prompts: None,
            router_negative_prompts: None,
        }
    }
}

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident: $t:ty => |$raw:ident, $v:ident| $body:expr;)*) => {
        $($(#[$m])* pub fn $name(mut self, $v: $t) -> Self {
            let $raw = &mut self.raw;
            $body;
            self
        })*
    };
}

macro_rules! path_setters {
    ($($(#[$m:meta])* $name:ident;)*) => {
        $($(#[$m])* pub fn $name(mut self, path: impl AsRef<Path>) -> Self {
            self.$name = Some(path.as_ref().to_owned());
            self
        })*
    };
}

impl UpcycleOptions {
    pub fn new() -> Self {
        Self::default()
    }
    setters! {
        num_experts: u32 => |r, v| r.num_experts = v;
        top_k: u32 => |r, v| r.top_k = v;
        method: Method => |r, v| r.method = v.raw();
        ratio: f64 => |r, v| r.ratio = v;
        shared_indices: bool => |r, v| r.shared_indices = v as i32;
        noise_std: f64 => |r, v| r.noise_std = v;
        granularity: u32 => |r, v| r.granularity = v;
        granular_scaling: GranularScaling => |r, v| r.granular_scaling = v.raw();
        partition_select: PartitionSelect => |r, v| r.partition_select = v.raw();
        partition_disjoint: bool => |r, v| r.partition_disjoint = v as i32;
        partition_scale: bool => |r, v| r.partition_scale = v as i32;
        router_init: RouterInit => |r, v| r.router_init = v.raw();
        router_std: f64 => |r, v| r.router_std = v;
        shared_expert: bool => |r, v| r.shared_expert = v as i32;
        routing: Routing => |r, v| r.routing = v.raw();
        format: Format => |r, v| r.format = v.raw();
        /// Dtype::Default keeps the source's dtype.
        dtype: Dtype => |r, v| r.dtype = v.raw();
        seed: u64 => |r, v| r.seed = v;
        force: bool => |r, v| r.force = v as i32;
        max_shard_bytes: u64 => |r, v| r.max_shard_bytes = v;
        threads: u32 => |r, v| r.threads = v;
        aux_loss_coef: f64 => |r, v| r.aux_loss_coef = v;
        /// The calibration file holds whitespace-separated token ids.
        calibration_ids: bool => |r, v| r.calibration_ids = v as i32;
        calibration_tokens: u64 => |r, v| r.calibration_tokens = v;
        calibration_samples: u32 => |r, v| r.calibration_samples = v;
        fire_quantile: f64 => |r, v| r.fire_quantile = v;
        importance: Importance => |r, v| r.importance = v.raw();
        shared_from_frequent: u32 => |r, v| r.shared_from_frequent = v;
        drop_select: DropSelect => |r, v| r.drop_select = v.raw();
        router_spread: f64 => |r, v| r.router_spread = v;
        /// partition: fit down_proj's scale to the calibration tokens.
        calibrated_scale: bool => |r, v| r.calibrated_scale = v as i32;
    }
    path_setters! {
        /// Calibration data (text, or token ids with `calibration_ids`) run through the dense model.
        calibration;
        /// Statistics saved by an earlier calibration, used instead of calibration data.
        stats;
        /// Where to save the collected calibration statistics.
        save_stats;
        /// Router prompts, one line per expert (RouterInit::Prompts).
        router_prompts;
        /// Negative router prompts, one line per expert.
        router_negative_prompts;
    }
    /// Which layers become MoE: "all", "every:N" or a list "0,2,5-7".
    pub fn layers(mut self, spec: &str) -> Self {
        self.layers = Some(spec.to_owned());
        self
    }
    pub fn raw(&self) -> &sys::moe_upcycle_params {
        &self.raw
    }
    /// The C parameters with the text fields pointing into the returned
    /// strings, which must outlive the call.
    fn c_params(&self) -> Result<(sys::moe_upcycle_params, Vec<CString>)> {
        let mut p = self.raw;
        let mut held = Vec::new();
        let mut text = |value: Option<CString>| -> *const c_char {
            value.map_or(ptr::null(), |c| {
                let pointer = c.as_ptr();
                held.push(c);
                pointer
            })
        };
        let path = |what: &str, p: &Option<PathBuf>| p.as_deref().map(|p| c_path(what, p)).transpose();
        p.layers = text(self.layers.as_deref().map(|s| c_string("layers", s)).transpose()?);
        p.calibration_path = text(path("calibration", &self.calibration)?);
        p.stats_path = text(path("stats", &self.stats)?);
        p.save_stats_path = text(path("save_stats", &self.save_stats)?);
        p.router_prompts_path = text(path("router_prompts", &self.router_prompts)?);
        p.router_negative_prompts_path = text(path("router_negative_prompts", &self.router_negative_prompts)?);
        Ok((p, held))
    }
}

/// What [`upcycle`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct UpcycleReport {
    pub bytes_written: u64,
    pub tensors_written: u64,
    pub shards: u32,
    pub moe_layers: u32,
    pub seconds: f64,
    pub peak_rss_bytes: u64,
    pub stale_bytes_removed: u64,
    pub stale_removed: u32,
}

/// Upcycle the dense checkpoint at `input` into an MoE checkpoint directory
/// at `output` (written to a temporary name and renamed into place).
pub fn upcycle(input: impl AsRef<Path>, output: impl AsRef<Path>, options: &UpcycleOptions) -> Result<UpcycleReport> {
    let i = c_path("input", input.as_ref())?;
    let o = c_path("output", output.as_ref())?;
    let (p, _held) = options.c_params()?;
    let mut r = result(|r: &mut sys::moe_upcycle_result, n| r.struct_size = n);
    unsafe { check(sys::moe_upcycle(&mut r, i.as_ptr(), o.as_ptr(), &p))? };
    Ok(UpcycleReport {
        bytes_written: r.bytes_written,
        tensors_written: r.tensors_written,
        shards: r.shards,
        moe_layers: r.moe_layers,
        seconds: r.seconds,
        peak_rss_bytes: r.peak_rss_bytes,
        stale_bytes_removed: r.stale_bytes_removed,
        stale_removed: r.stale_removed,
    })
}

/// Run the dense checkpoint at `input` over the calibration data of `options`
/// and save its statistics at `stats` (the file [`UpcycleOptions::stats`]
/// reads). Only the calibration options and `force` are used.
pub fn calibrate(input: impl AsRef<Path>, stats: impl AsRef<Path>, options: &UpcycleOptions) -> Result<()> {
    let i = c_path("input", input.as_ref())?;
    let s = c_path("stats", stats.as_ref())?;
    let (p, _held) = options.c_params()?;
    unsafe { check(sys::moe_calibrate(i.as_ptr(), s.as_ptr(), &p)) }
}

/// What [`export_gguf`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    pub bytes_written: u64,
    pub tensors_written: u64,
    pub fallback_tensors: u32,
    pub seconds: f64,
}

/// Write the checkpoint at `input` (dense, Mixtral or Qwen2-MoE; HF or GGUF)
/// as a GGUF file llama.cpp runs, its weight matrices stored as `dtype`.
pub fn export_gguf(input: impl AsRef<Path>, output: impl AsRef<Path>, dtype: Dtype, force: bool) -> Result<ExportReport> {
    let i = c_path("input", input.as_ref())?;
    let o = c_path("output", output.as_ref())?;
    let mut p: sys::moe_export_params = defaults(sys::moe_export_params_init);
    p.dtype = dtype.raw();
    p.force = force as i32;
    let mut r = result(|r: &mut sys::moe_export_result, n| r.struct_size = n);
    unsafe { check(sys::moe_export(&mut r, i.as_ptr(), o.as_ptr(), &p))? };
    Ok(ExportReport {
        bytes_written: r.bytes_written,
        tensors_written: r.tensors_written,
        fallback_tensors: r.fallback_tensors,
        seconds: r.seconds,
    })
}

// ------------------------------------------------------------------ runtime

/// A topology with its pool of pinned worker threads.
pub struct Runtime {
    ptr: NonNull<sys::moe_runtime>,
}

// Header: "The runtime may be shared by several layers and threads; it runs
// one parallel job at a time (callers queue)."
unsafe impl Send for Runtime {}
unsafe impl Sync for Runtime {}

/// What a runtime runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub numa_nodes: u32,
    pub cores: u32,
    pub pus: u32,
    pub workers: u32,
    pub is_this_system: bool,
    pub workers_pinned: bool,
    pub memory_binding: bool,
    pub blas_threads: i32,
    pub blas_core: String,
}

/// How a runtime is made: the library's defaults, changed by the setters.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    raw: sys::moe_runtime_params,
    synthetic: Option<String>,
    xml: Option<String>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { raw: defaults(sys::moe_runtime_params_init), synthetic: None, xml: None }
    }
}

impl RuntimeOptions {
    pub fn new() -> Self {
        Self::default()
    }
    setters! {
        /// 0 = one worker per core.
        threads: u32 => |r, v| r.threads = v;
        pin: bool => |r, v| r.pin = v as i32;
        /// Default placement of layers created on the runtime.
        placement: Placement => |r, v| r.placement = v.raw();
    }
    /// A synthetic hwloc topology to plan for, e.g. "pack:2 [numa] core:4 pu:1".
    pub fn topology_synthetic(mut self, spec: &str) -> Self {
        self.synthetic = Some(spec.to_owned());
        self
    }
    /// An hwloc XML topology file to use instead of the machine.
    pub fn topology_xml(mut self, path: &str) -> Self {
        self.xml = Some(path.to_owned());
        self
    }
}

impl Runtime {
    /// Create a runtime with `threads` workers (0 = one per core).
    pub fn new(threads: u32) -> Result<Runtime> {
        Runtime::with_options(&RuntimeOptions::new().threads(threads))
    }

    pub fn with_options(options: &RuntimeOptions) -> Result<Runtime> {
        let synthetic = options.synthetic.as_deref().map(|s| c_string("topology_synthetic", s)).transpose()?;
        let xml = options.xml.as_deref().map(|s| c_string("topology_xml", s)).transpose()?;
        let mut p = options.raw;
        p.topology_synthetic = synthetic.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        p.topology_xml = xml.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        let mut out: *mut sys::moe_runtime = ptr::null_mut();
        unsafe { check(sys::moe_runtime_create(&mut out, &p))? };
        let ptr = NonNull::new(out)
            .ok_or_else(|| Error::new(sys::MOE_ERR_INTERNAL, "moe_runtime_create returned NULL"))?;
        Ok(Runtime { ptr })
    }

    pub fn info(&self) -> Result<RuntimeInfo> {
        let mut i = result(|i: &mut sys::moe_runtime_info, n| i.struct_size = n);
        unsafe { check(sys::moe_runtime_get_info(&mut i, self.ptr.as_ptr()))? };
        Ok(RuntimeInfo {
            numa_nodes: i.numa_nodes,
            cores: i.cores,
            pus: i.pus,
            workers: i.workers,
            is_this_system: i.is_this_system != 0,
            workers_pinned: i.workers_pinned != 0,
            memory_binding: i.memory_binding != 0,
            blas_threads: i.blas_threads,
            blas_core: chars_to_string(&i.blas_core),
        })
    }

    /// The runtime as text and, with `layer`, the placement plan of a layer
    /// of that shape.
    pub fn describe(&self, format: TextFormat, layer: Option<&LayerConfig>) -> Result<String> {
        let l = layer.map_or(ptr::null(), |c| &c.raw as *const sys::moe_layer_config);
        fetch_text(|buf, cap, needed| unsafe {
            sys::moe_runtime_describe(self.ptr.as_ptr(), l, format.raw(), buf, cap, needed)
        })
    }

    pub fn as_ptr(&self) -> *mut sys::moe_runtime {
        self.ptr.as_ptr()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        unsafe { sys::moe_runtime_free(self.ptr.as_ptr()) }
    }
}

// ------------------------------------------------------------------ layer

/// A layer's shape and behaviour. `new` sets the four required sizes and the
/// library's defaults for the rest; chain the setters to change them.
#[derive(Debug, Clone, Copy)]
pub struct LayerConfig {
    raw: sys::moe_layer_config,
}

impl LayerConfig {
    pub fn new(hidden_size: u32, moe_intermediate_size: u32, num_experts: u32, top_k: u32) -> LayerConfig {
        let mut raw = defaults(sys::moe_layer_config_init);
        raw.hidden_size = hidden_size;
        raw.moe_intermediate_size = moe_intermediate_size;
        raw.num_experts = num_experts;
        raw.top_k = top_k;
        LayerConfig { raw }
    }
    setters! {
        routing: Routing => |r, v| r.routing = v.raw();
        capacity_factor: f32 => |r, v| r.capacity_factor = v;
        expert_choice: bool => |r, v| r.expert_choice = v as i32;
        shared_expert_intermediate_size: u32 => |r, v| r.shared_expert_intermediate_size = v;
        /// Dtype::F32 or Dtype::Bf16.
        storage: Dtype => |r, v| r.storage = v.raw();
        /// Precision of the expert products: Dtype::F32 or Dtype::Bf16 (bf16 operands, f32 sums).
        compute: Dtype => |r, v| r.compute = v.raw();
        placement: Placement => |r, v| r.placement = v.raw();
        aux_loss_coef: f32 => |r, v| r.aux_loss_coef = v;
        z_loss_coef: f32 => |r, v| r.z_loss_coef = v;
    }
    /// Router jitter in training forwards, and its seed.
    pub fn jitter(mut self, jitter: f32, seed: u64) -> Self {
        self.raw.jitter = jitter;
        self.raw.seed = seed;
        self
    }
    pub fn hidden_size(&self) -> u32 {
        self.raw.hidden_size
    }
    pub fn moe_intermediate_size(&self) -> u32 {
        self.raw.moe_intermediate_size
    }
    pub fn num_experts(&self) -> u32 {
        self.raw.num_experts
    }
    pub fn top_k(&self) -> u32 {
        self.raw.top_k
    }
    pub fn raw(&self) -> &sys::moe_layer_config {
        &self.raw
    }
}

/// Statistics of the last forward.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    pub tokens: u64,
    pub assignments: u64,
    pub dropped: u64,
    pub aux_loss: f64,
    pub z_loss: f64,
    pub weight_bytes: u64,
    pub bound_bytes: u64,
    pub tokens_per_expert: Vec<u64>,
}

/// Element types of borrowed expert weights: f32, or bf16 bit patterns as u16.
pub trait ExpertElement: Copy {
    const DTYPE: Dtype;
}
impl ExpertElement for f32 {
    const DTYPE: Dtype = Dtype::F32;
}
impl ExpertElement for u16 {
    const DTYPE: Dtype = Dtype::Bf16;
}

/// One MoE SwiGLU feed-forward layer on a runtime. Memory it borrows
/// ([`MoELayer::borrow_experts`]) lives at least as long as the runtime borrow.
pub struct MoELayer<'rt> {
    ptr: NonNull<sys::moe_layer>,
    hidden: usize,
    experts: usize,
    /// Tokens of the forward saved for backward, if any.
    saved_tokens: Option<usize>,
    _rt: PhantomData<&'rt Runtime>,
}

// Header: "A moe_layer must be used by one thread at a time ... Different
// layers may be used from different threads at once." => Send, not Sync.
unsafe impl Send for MoELayer<'_> {}

type TensorCopy = unsafe extern "C" fn(*const sys::moe_layer, sys::moe_weight, i64, *mut f32, usize, *mut usize) -> sys::moe_status;

impl<'rt> MoELayer<'rt> {
    pub fn new(runtime: &'rt Runtime, config: LayerConfig) -> Result<MoELayer<'rt>> {
        let mut out: *mut sys::moe_layer = ptr::null_mut();
        unsafe { check(sys::moe_layer_create(&mut out, runtime.as_ptr(), &config.raw))? };
        MoELayer::wrap(out, "moe_layer_create")
    }

    /// MoE layer `layer_index` of an MoE checkpoint directory; `overrides`
    /// (storage, placement, capacity, jitter, losses) may be given.
    pub fn load(
        runtime: &'rt Runtime,
        checkpoint: impl AsRef<Path>,
        layer_index: u32,
        overrides: Option<&LayerConfig>,
    ) -> Result<MoELayer<'rt>> {
        let c = c_path("checkpoint", checkpoint.as_ref())?;
        let o = overrides.map_or(ptr::null(), |c| &c.raw as *const sys::moe_layer_config);
        let mut out: *mut sys::moe_layer = ptr::null_mut();
        unsafe { check(sys::moe_layer_load(&mut out, runtime.as_ptr(), c.as_ptr(), layer_index, o))? };
        MoELayer::wrap(out, "moe_layer_load")
    }

    fn wrap(out: *mut sys::moe_layer, what: &str) -> Result<MoELayer<'rt>> {
        let ptr = NonNull::new(out).ok_or_else(|| Error::new(sys::MOE_ERR_INTERNAL, format!("{what} returned NULL")))?;
        // Owned from here: dropped (freed) if reading the config fails.
        let mut layer = MoELayer { ptr, hidden: 0, experts: 0, saved_tokens: None, _rt: PhantomData };
        let c = layer.config()?;
        layer.hidden = c.raw.hidden_size as usize;
        layer.experts = c.raw.num_experts as usize;
        Ok(layer)
    }

    /// The layer's configuration (placement: the one in effect).
    pub fn config(&self) -> Result<LayerConfig> {
        let mut raw = result(|c: &mut sys::moe_layer_config, n| c.struct_size = n);
        unsafe { check(sys::moe_layer_get_config(&mut raw, self.ptr.as_ptr()))? };
        Ok(LayerConfig { raw })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }
    pub fn num_experts(&self) -> usize {
        self.experts
    }

    /// Floats in `weight` ([`ALL_EXPERTS`]) or in one expert of it.
    pub fn weight_count(&self, weight: Weight, expert: i64) -> Result<usize> {
        let mut n = 0usize;
        unsafe { check(sys::moe_layer_weight_count(&mut n, self.ptr.as_ptr(), weight.raw(), expert))? };
        Ok(n)
    }

    pub fn set_weight(&mut self, weight: Weight, expert: i64, data: &[f32]) -> Result<()> {
        unsafe { check(sys::moe_layer_set_weight(self.ptr.as_ptr(), weight.raw(), expert, data.as_ptr(), data.len())) }
    }

    fn tensor_call(&self, copy: TensorCopy, weight: Weight, expert: i64) -> impl FnMut(*mut f32, usize, *mut usize) -> sys::moe_status {
        let layer = self.ptr.as_ptr() as *const sys::moe_layer;
        move |buf, cap, needed| unsafe { copy(layer, weight.raw(), expert, buf, cap, needed) }
    }

    /// `weight` (or one expert of it) as f32.
    pub fn weight(&self, weight: Weight, expert: i64) -> Result<Vec<f32>> {
        fetch(self.tensor_call(sys::moe_layer_get_weight, weight, expert))
    }

    /// `weight` into `out`; returns the floats written. Too short a slice is
    /// MOE_ERR_BUFFER_TOO_SMALL with [`Error::needed`], and `out` untouched.
    pub fn weight_into(&self, weight: Weight, expert: i64, out: &mut [f32]) -> Result<usize> {
        fill_slice(&mut self.tensor_call(sys::moe_layer_get_weight, weight, expert), out)
    }

    /// The accumulated gradient of `weight` (or one expert of it).
    pub fn grad(&self, weight: Weight, expert: i64) -> Result<Vec<f32>> {
        fetch(self.tensor_call(sys::moe_layer_get_grad, weight, expert))
    }

    /// As [`MoELayer::weight_into`], for the gradient.
    pub fn grad_into(&self, weight: Weight, expert: i64, out: &mut [f32]) -> Result<usize> {
        fill_slice(&mut self.tensor_call(sys::moe_layer_get_grad, weight, expert), out)
    }

    /// Use `gate`, `up` [E, F, H] and `down` [E, H, F] (f32, or bf16 bits as
    /// u16) as the routed experts' weights without copying. They are borrowed
    /// for as long as the runtime, so they outlive the layer unchanged.
    pub fn borrow_experts<T: ExpertElement>(&mut self, gate: &'rt [T], up: &'rt [T], down: &'rt [T]) -> Result<()> {
        let n = self.weight_count(Weight::Gate, ALL_EXPERTS)?;
        for (what, s) in [("gate", gate), ("up", up), ("down", down)] {
            if s.len() != n {
                return Err(Error::new(
                    sys::MOE_ERR_SHAPE,
                    format!("{what}: {} elements given, the layer's experts hold {n}", s.len()),
                ));
            }
        }
        unsafe {
            check(sys::moe_layer_borrow_experts(
                self.ptr.as_ptr(),
                T::DTYPE.raw(),
                gate.as_ptr() as *const c_void,
                up.as_ptr() as *const c_void,
                down.as_ptr() as *const c_void,
            ))
        }
    }

    pub fn init_random(&mut self, seed: u64, std: f32) -> Result<()> {
        unsafe { check(sys::moe_layer_init_random(self.ptr.as_ptr(), seed, std)) }
    }

    fn check_rows(&self, what: &str, len: usize, tokens: usize) -> Result<usize> {
        let need = tokens
            .checked_mul(self.hidden)
            .ok_or_else(|| Error::invalid(format!("tokens: {tokens} x hidden_size {} overflows", self.hidden)))?;
        if len != need {
            return Err(Error::invalid(format!(
                "{what}: {len} floats given, expected tokens ({tokens}) x hidden_size ({}) = {need}",
                self.hidden
            )));
        }
        Ok(need)
    }

    fn run_forward(&mut self, x: &[f32], tokens: usize, flags: u32) -> Result<Vec<f32>> {
        let n = self.check_rows("x", x.len(), tokens)?;
        let mut out = vec![0f32; n];
        unsafe { check(sys::moe_layer_forward(self.ptr.as_ptr(), x.as_ptr(), tokens, out.as_mut_ptr(), flags))? };
        Ok(out)
    }

    /// Training forward: out[T, H] = MoE(x[T, H]), saving what `backward`
    /// needs (MOE_FORWARD_SAVE).
    pub fn forward(&mut self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        let out = self.run_forward(x, tokens, sys::MOE_FORWARD_SAVE)?;
        self.saved_tokens = Some(tokens);
        Ok(out)
    }

    /// Forward with explicit flags (MOE_FORWARD_SAVE, MOE_FORWARD_TRAIN).
    pub fn forward_with(&mut self, x: &[f32], tokens: usize, flags: u32) -> Result<Vec<f32>> {
        let out = self.run_forward(x, tokens, flags)?;
        if flags & sys::MOE_FORWARD_SAVE != 0 {
            self.saved_tokens = Some(tokens);
        }
        Ok(out)
    }

    /// Forward without saving state for backward (leaves the saved one alone).
    pub fn infer(&mut self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        self.run_forward(x, tokens, 0)
    }

    /// Backward of the last saved forward: returns dL/dx [T, H] and adds the
    /// weight gradients to the layer's buffers. Consumes the saved forward.
    pub fn backward(&mut self, grad_out: &[f32]) -> Result<Vec<f32>> {
        let tokens = self
            .saved_tokens
            .ok_or_else(|| Error::invalid("backward: no saved forward (call forward first)"))?;
        let n = self.check_rows("grad_out", grad_out.len(), tokens)?;
        let mut gx = vec![0f32; n];
        let r = unsafe { check(sys::moe_layer_backward(self.ptr.as_ptr(), grad_out.as_ptr(), gx.as_mut_ptr())) };
        self.saved_tokens = None;
        r?;
        Ok(gx)
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        unsafe { check(sys::moe_layer_zero_grad(self.ptr.as_ptr())) }
    }

    /// The noise step the next training forward uses.
    pub fn set_noise_step(&mut self, step: u64) -> Result<()> {
        unsafe { check(sys::moe_layer_set_noise_step(self.ptr.as_ptr(), step)) }
    }

    pub fn stats(&self) -> Result<LayerStats> {
        let mut s = result(|s: &mut sys::moe_layer_stats, n| s.struct_size = n);
        let layer = self.ptr.as_ptr() as *const sys::moe_layer;
        let sp: *mut sys::moe_layer_stats = &mut s;
        let tpe = fetch(|buf, cap, needed| unsafe { sys::moe_layer_get_stats(sp, layer, buf, cap, needed) })?;
        Ok(LayerStats {
            tokens: s.tokens,
            assignments: s.assignments,
            dropped: s.dropped,
            aux_loss: s.aux_loss,
            z_loss: s.z_loss,
            weight_bytes: s.weight_bytes,
            bound_bytes: s.bound_bytes,
            tokens_per_expert: tpe,
        })
    }

    /// The last forward's combine weights, [T, E] row-major.
    pub fn routing(&self) -> Result<Vec<f32>> {
        let layer = self.ptr.as_ptr() as *const sys::moe_layer;
        fetch(|buf, cap, needed| unsafe { sys::moe_layer_get_routing(layer, buf, cap, needed) })
    }

    pub fn as_ptr(&self) -> *mut sys::moe_layer {
        self.ptr.as_ptr()
    }
}

impl Drop for MoELayer<'_> {
    fn drop(&mut self) {
        unsafe { sys::moe_layer_free(self.ptr.as_ptr()) }
    }
}

// ------------------------------------------------------------------ model

/// What a loaded model is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub architecture: String,
    pub num_layers: u32,
    pub hidden_size: u32,
    pub vocab_size: u32,
    pub context_length: u32,
    pub num_moe_layers: u32,
    pub num_experts: u32,
    pub top_k: u32,
    /// None when the tokenizer has no such token.
    pub bos_token_id: Option<i32>,
    pub eos_token_id: Option<i32>,
    pub weight_dtype: Dtype,
    pub weight_bytes: u64,
    pub weight_bytes_per_token: u64,
}

/// How a model is loaded: the library's defaults, changed by the setters.
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions {
    raw: sys::moe_model_params,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { raw: defaults(sys::moe_model_params_init) }
    }
}

impl ModelOptions {
    pub fn new() -> Self {
        Self::default()
    }
    setters! {
        /// Dtype::Default (bf16 for bf16/f16 checkpoints, else f32), F32 or Bf16.
        weight_dtype: Dtype => |r, v| r.weight_dtype = v.raw();
        placement: Placement => |r, v| r.placement = v.raw();
        /// 0 = the model's context length.
        max_context: u32 => |r, v| r.max_context = v;
    }
}

/// How [`Model::generate`] samples: the library's defaults, changed by the setters.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    raw: sys::moe_generate_params,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { raw: defaults(sys::moe_generate_params_init) }
    }
}

impl GenerateOptions {
    pub fn new() -> Self {
        Self::default()
    }
    setters! {
        max_new_tokens: u32 => |r, v| r.max_new_tokens = v;
        /// 0 = greedy.
        temperature: f32 => |r, v| r.temperature = v;
        top_k: u32 => |r, v| r.top_k = v;
        top_p: f32 => |r, v| r.top_p = v;
        seed: u64 => |r, v| r.seed = v;
        chat: bool => |r, v| r.chat = v as i32;
        add_special: bool => |r, v| r.add_special = v as i32;
        ignore_eos: bool => |r, v| r.ignore_eos = v as i32;
    }
}

/// What a generation did.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated text, without the prompt.
    pub text: String,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub prompt_seconds: f64,
    pub decode_seconds: f64,
    pub tokens_per_second: f64,
    pub stop_reason: StopReason,
}

/// What an evaluation measured.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    pub tokens_scored: u64,
    pub windows: u32,
    pub mean_nll: f64,
    pub perplexity: f64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    /// MoE models: mean Switch load-balancing loss; 0 for dense models.
    pub aux_loss: f64,
}

/// A loaded decoder with its tokenizer and KV cache.
pub struct Model<'rt> {
    ptr: NonNull<sys::moe_model>,
    _rt: PhantomData<&'rt Runtime>,
}

// Header: "A moe_model must be used by one thread at a time" => Send, not Sync.
unsafe impl Send for Model<'_> {}

/// Streams tokens of one generation into `text` and on to the caller's callback.
struct Gather<'a> {
    text: String,
    on_token: &'a mut dyn FnMut(i32, &str) -> bool,
    panic: Option<Box<dyn Any + Send>>,
}

unsafe extern "C" fn gather_token(token: i32, text: *const c_char, user_data: *mut c_void) -> c_int {
    // Nothing may unwind into the library's frames: a panic stops generation
    // and is resumed after the call.
    let g = &mut *(user_data as *mut Gather);
    let piece = if text.is_null() { Default::default() } else { CStr::from_ptr(text).to_string_lossy() };
    g.text.push_str(&piece);
    match catch_unwind(AssertUnwindSafe(|| (g.on_token)(token, &piece))) {
        Ok(go_on) => (!go_on) as c_int,
        Err(payload) => {
            g.panic = Some(payload);
            1
        }
    }
}

impl<'rt> Model<'rt> {
    /// Load an HF directory or a .gguf file with default options.
    pub fn load(runtime: &'rt Runtime, path: impl AsRef<Path>) -> Result<Model<'rt>> {
        Model::load_with(runtime, path, &ModelOptions::default())
    }

    pub fn load_with(runtime: &'rt Runtime, path: impl AsRef<Path>, options: &ModelOptions) -> Result<Model<'rt>> {
        let c = c_path("path", path.as_ref())?;
        let mut out: *mut sys::moe_model = ptr::null_mut();
        unsafe { check(sys::moe_model_load(&mut out, runtime.as_ptr(), c.as_ptr(), &options.raw))? };
        let ptr = NonNull::new(out).ok_or_else(|| Error::new(sys::MOE_ERR_INTERNAL, "moe_model_load returned NULL"))?;
        Ok(Model { ptr, _rt: PhantomData })
    }

    pub fn info(&self) -> Result<ModelInfo> {
        let mut i = result(|i: &mut sys::moe_model_info, n| i.struct_size = n);
        unsafe { check(sys::moe_model_get_info(&mut i, self.ptr.as_ptr()))? };
        let token = |id: i32| (id != sys::MOE_NO_TOKEN).then_some(id);
        Ok(ModelInfo {
            architecture: chars_to_string(&i.architecture),
            num_layers: i.num_layers,
            hidden_size: i.hidden_size,
            vocab_size: i.vocab_size,
            context_length: i.context_length,
            num_moe_layers: i.num_moe_layers,
            num_experts: i.num_experts,
            top_k: i.top_k,
            bos_token_id: token(i.bos_token_id),
            eos_token_id: token(i.eos_token_id),
            weight_dtype: known("weight_dtype", i.weight_dtype, Dtype::from_raw)?,
            weight_bytes: i.weight_bytes,
            weight_bytes_per_token: i.weight_bytes_per_token,
        })
    }

    /// Tokenize without adding BOS.
    pub fn tokenize(&self, text: &str) -> Result<Vec<i32>> {
        self.tokenize_with(text, false)
    }

    /// Tokenize; with `add_special`, BOS is prepended when the tokenizer asks.
    pub fn tokenize_with(&self, text: &str, add_special: bool) -> Result<Vec<i32>> {
        let m = self.ptr.as_ptr() as *const sys::moe_model;
        fetch(|buf, cap, needed| unsafe {
            sys::moe_model_tokenize(m, text.as_ptr() as *const c_char, text.len(), add_special as i32, buf, cap, needed)
        })
    }

    /// The text of `tokens`; with `skip_special`, control tokens are left out.
    pub fn detokenize(&self, tokens: &[i32], skip_special: bool) -> Result<String> {
        let m = self.ptr.as_ptr() as *const sys::moe_model;
        fetch_text(|buf, cap, needed| unsafe {
            sys::moe_model_detokenize(m, tokens.as_ptr(), tokens.len(), skip_special as i32, buf, cap, needed)
        })
    }

    /// Logits [tokens.len(), vocab_size] of `tokens` run as a fresh sequence
    /// (asking the size computes nothing; the fill runs the model once).
    pub fn logits(&mut self, tokens: &[i32]) -> Result<Vec<f32>> {
        let m = self.ptr.as_ptr();
        fetch(|buf, cap, needed| unsafe { sys::moe_model_logits(m, tokens.as_ptr(), tokens.len(), buf, cap, needed) })
    }

    /// Tokens per expert routed in layer `layer` since the last evaluation
    /// began (empty for a dense layer).
    pub fn router_stats(&self, layer: u32) -> Result<Vec<u64>> {
        let m = self.ptr.as_ptr() as *const sys::moe_model;
        fetch(|buf, cap, needed| unsafe { sys::moe_model_router_stats(m, layer, buf, cap, needed) })
    }

    /// Generate after `prompt`.
    pub fn generate(&mut self, prompt: &str, options: &GenerateOptions) -> Result<Generation> {
        self.generate_with(prompt, options, |_, _| true)
    }

    /// Generate once, gathering the text from the streamed pieces (which the
    /// header says equal the generated text); `on_token(token, piece)` sees
    /// each token and returns false to stop. A panic in it stops generation
    /// and is resumed here.
    pub fn generate_with(
        &mut self,
        prompt: &str,
        options: &GenerateOptions,
        mut on_token: impl FnMut(i32, &str) -> bool,
    ) -> Result<Generation> {
        let prompt = c_string("prompt", prompt)?;
        let mut gather = Gather { text: String::new(), on_token: &mut on_token, panic: None };
        let mut p = options.raw;
        p.on_token = Some(gather_token);
        p.user_data = &mut gather as *mut Gather as *mut c_void;
        let mut r = result(|r: &mut sys::moe_generate_result, n| r.struct_size = n);
        let mut needed = 0usize;
        let status = unsafe {
            sys::moe_model_generate(&mut r, self.ptr.as_ptr(), prompt.as_ptr(), &p, ptr::null_mut(), 0, &mut needed)
        };
        if let Some(payload) = gather.panic.take() {
            resume_unwind(payload);
        }
        check(status)?;
        if needed != gather.text.len() + 1 {
            return Err(Error::new(
                sys::MOE_ERR_INTERNAL,
                format!("generate: the library reports {needed} bytes of text but streamed {} (+1 for the NUL)", gather.text.len()),
            ));
        }
        Model::generation(gather.text, &r)
    }

    /// Generate into `text` by the output-buffer rule: returns the bytes
    /// written (NUL included) and what the generation did. Too short a
    /// buffer is MOE_ERR_BUFFER_TOO_SMALL with [`Error::needed`] (the
    /// generation ran; `text` is untouched).
    pub fn generate_into(&mut self, prompt: &str, options: &GenerateOptions, text: &mut [u8]) -> Result<(usize, Generation)> {
        let prompt = c_string("prompt", prompt)?;
        let mut r = result(|r: &mut sys::moe_generate_result, n| r.struct_size = n);
        let (m, rp, p) = (self.ptr.as_ptr(), &mut r as *mut sys::moe_generate_result, &options.raw as *const _);
        let written = fill(
            &mut |buf: *mut u8, cap, needed| unsafe {
                sys::moe_model_generate(rp, m, prompt.as_ptr(), p, buf as *mut c_char, cap, needed)
            },
            text.as_mut_ptr(),
            text.len(),
        )?;
        let end = written.saturating_sub(1);
        let s = String::from_utf8_lossy(&text[..end]).into_owned();
        Ok((written, Model::generation(s, &r)?))
    }

    fn generation(text: String, r: &sys::moe_generate_result) -> Result<Generation> {
        Ok(Generation {
            text,
            prompt_tokens: r.prompt_tokens,
            generated_tokens: r.generated_tokens,
            prompt_seconds: r.prompt_seconds,
            decode_seconds: r.decode_seconds,
            tokens_per_second: r.tokens_per_second,
            stop_reason: known("stop_reason", r.stop_reason, StopReason::from_raw)?,
        })
    }

    fn eval_params(seq_len: u32, max_tokens: u64, held_out: f64) -> sys::moe_eval_params {
        let mut p = defaults(sys::moe_eval_params_init);
        p.seq_len = seq_len;
        p.max_tokens = max_tokens;
        p.held_out = held_out;
        p
    }

    fn eval_result(r: &sys::moe_eval_result) -> EvalResult {
        EvalResult {
            tokens_scored: r.tokens_scored,
            windows: r.windows,
            mean_nll: r.mean_nll,
            perplexity: r.perplexity,
            seconds: r.seconds,
            tokens_per_second: r.tokens_per_second,
            aux_loss: r.aux_loss,
        }
    }

    /// Perplexity on `text` in windows of `seq_len` tokens (0 = 512 or the
    /// context), at most `max_tokens` tokens (0 = all).
    pub fn eval_text(&mut self, text: &str, seq_len: u32, max_tokens: u64) -> Result<EvalResult> {
        self.eval_text_with(text, Model::eval_params(seq_len, max_tokens, 0.0))
    }

    /// As [`Model::eval_text`], on the last fraction `held_out` of the text's
    /// tokens: the part a [`Trainer`] made from the same text with
    /// `eval_fraction(held_out)` holds out (`max_tokens` counts tokens of it).
    pub fn eval_held_out(&mut self, text: &str, seq_len: u32, max_tokens: u64, held_out: f64) -> Result<EvalResult> {
        self.eval_text_with(text, Model::eval_params(seq_len, max_tokens, held_out))
    }

    fn eval_text_with(&mut self, text: &str, p: sys::moe_eval_params) -> Result<EvalResult> {
        let mut r = result(|r: &mut sys::moe_eval_result, n| r.struct_size = n);
        unsafe {
            check(sys::moe_model_eval_text(&mut r, self.ptr.as_ptr(), text.as_ptr() as *const c_char, text.len(), &p))?
        };
        Ok(Model::eval_result(&r))
    }

    /// As [`Model::eval_text`], on token ids.
    pub fn eval_tokens(&mut self, tokens: &[i32], seq_len: u32, max_tokens: u64) -> Result<EvalResult> {
        let p = Model::eval_params(seq_len, max_tokens, 0.0);
        let mut r = result(|r: &mut sys::moe_eval_result, n| r.struct_size = n);
        unsafe { check(sys::moe_model_eval_tokens(&mut r, self.ptr.as_ptr(), tokens.as_ptr(), tokens.len(), &p))? };
        Ok(Model::eval_result(&r))
    }

    pub fn as_ptr(&self) -> *mut sys::moe_model {
        self.ptr.as_ptr()
    }
}

impl Drop for Model<'_> {
    fn drop(&mut self) {
        unsafe { sys::moe_model_free(self.ptr.as_ptr()) }
    }
}

// ------------------------------------------------------------------ training

/// How a trainer trains: the library's defaults, changed by the setters.
#[derive(Debug, Clone, Copy)]
pub struct TrainerOptions {
    raw: sys::moe_trainer_params,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        TrainerOptions { raw: defaults(sys::moe_trainer_params_init) }
    }
}

impl TrainerOptions {
    pub fn new() -> Self {
        Self::default()
    }
    setters! {
        seq_len: u32 => |r, v| r.seq_len = v;
        batch: u32 => |r, v| r.batch = v;
        steps: u32 => |r, v| r.steps = v;
        warmup: u32 => |r, v| r.warmup = v;
        lr: f32 => |r, v| r.lr = v;
        min_lr: f32 => |r, v| r.min_lr = v;
        schedule: LrSchedule => |r, v| r.schedule = v.raw();
        beta1: f32 => |r, v| r.beta1 = v;
        beta2: f32 => |r, v| r.beta2 = v;
        eps: f32 => |r, v| r.eps = v;
        weight_decay: f32 => |r, v| r.weight_decay = v;
        /// 0 = off.
        clip: f32 => |r, v| r.clip = v;
        aux_loss_coef: f32 => |r, v| r.aux_loss_coef = v;
        z_loss_coef: f32 => |r, v| r.z_loss_coef = v;
        train_only: TrainOnly => |r, v| r.train_only = v.raw();
        seed: u64 => |r, v| r.seed = v;
        eval_fraction: f64 => |r, v| r.eval_fraction = v;
        eval_windows: u32 => |r, v| r.eval_windows = v;
        on_nonfinite: NonFinite => |r, v| r.on_nonfinite = v.raw();
        /// Sequences per forward/backward pass; 0 = the whole batch.
        micro_batch: u32 => |r, v| r.micro_batch = v;
        recompute: bool => |r, v| r.recompute = v as i32;
        /// Precision of the weight products: Dtype::F32 or Dtype::Bf16 (mixed precision).
        precision: Dtype => |r, v| r.precision = v.raw();
    }
    pub fn raw(&self) -> &sys::moe_trainer_params {
        &self.raw
    }
}

/// What a training step did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStats {
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
    /// The step was skipped (NonFinite::Skip and a non-finite loss or norm).
    pub skipped: bool,
    /// Model FLOPs of the step (PaLM convention; see the header's moe_train_stats).
    pub model_flops: f64,
    /// Bytes of activations and work buffers the training passes hold.
    pub activation_bytes: u64,
}

/// Trains a model in place. It holds the model mutably: use
/// [`Trainer::model`] to evaluate or generate between steps.
pub struct Trainer<'m, 'rt> {
    ptr: NonNull<sys::moe_trainer>,
    model: &'m mut Model<'rt>,
}

// Header: "A moe_trainer and the model it trains must be used by one thread
// at a time" => Send (with its model), not Sync.
unsafe impl Send for Trainer<'_, '_> {}

impl<'m, 'rt> Trainer<'m, 'rt> {
    /// A trainer over token ids (copied). The model needs f32 weights.
    pub fn new(model: &'m mut Model<'rt>, tokens: &[i32], options: &TrainerOptions) -> Result<Self> {
        let mut out: *mut sys::moe_trainer = ptr::null_mut();
        unsafe { check(sys::moe_trainer_create(&mut out, model.as_ptr(), tokens.as_ptr(), tokens.len(), &options.raw))? };
        Trainer::wrap(out, model)
    }

    /// A trainer over UTF-8 text, tokenized with the model's tokenizer.
    pub fn from_text(model: &'m mut Model<'rt>, text: &str, options: &TrainerOptions) -> Result<Self> {
        let mut out: *mut sys::moe_trainer = ptr::null_mut();
        unsafe {
            check(sys::moe_trainer_create_text(
                &mut out,
                model.as_ptr(),
                text.as_ptr() as *const c_char,
                text.len(),
                &options.raw,
            ))?
        };
        Trainer::wrap(out, model)
    }

    fn wrap(out: *mut sys::moe_trainer, model: &'m mut Model<'rt>) -> Result<Self> {
        let ptr = NonNull::new(out).ok_or_else(|| Error::new(sys::MOE_ERR_INTERNAL, "moe_trainer_create returned NULL"))?;
        Ok(Trainer { ptr, model })
    }

    /// The model being trained.
    pub fn model(&mut self) -> &mut Model<'rt> {
        self.model
    }

    /// One optimizer step.
    pub fn step(&mut self) -> Result<TrainStats> {
        let mut s = result(|s: &mut sys::moe_train_stats, n| s.struct_size = n);
        unsafe { check(sys::moe_trainer_step(&mut s, self.ptr.as_ptr()))? };
        Ok(TrainStats {
            step: s.step,
            loss: s.loss,
            aux_loss: s.aux_loss,
            z_loss: s.z_loss,
            lr: s.lr,
            grad_norm: s.grad_norm,
            tokens: s.tokens,
            seconds: s.seconds,
            tokens_per_second: s.tokens_per_second,
            max_expert_load: s.max_expert_load,
            skipped: s.skipped != 0,
            model_flops: s.model_flops,
            activation_bytes: s.activation_bytes,
        })
    }

    /// Mean cross-entropy on the held-out windows.
    pub fn eval(&mut self) -> Result<f64> {
        let mut nll = 0f64;
        unsafe { check(sys::moe_trainer_eval(&mut nll, self.ptr.as_ptr()))? };
        Ok(nll)
    }

    pub fn steps_done(&self) -> Result<u64> {
        let mut n = 0u64;
        unsafe { check(sys::moe_trainer_get_step(&mut n, self.ptr.as_ptr()))? };
        Ok(n)
    }

    /// Write a checkpoint directory (model, trainer.json, optimizer state).
    pub fn save(&mut self, path: impl AsRef<Path>, force: bool) -> Result<()> {
        let c = c_path("path", path.as_ref())?;
        unsafe { check(sys::moe_trainer_save(self.ptr.as_ptr(), c.as_ptr(), force as i32)) }
    }

    /// Continue from a checkpoint written by [`Trainer::save`].
    pub fn resume(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let c = c_path("path", path.as_ref())?;
        unsafe { check(sys::moe_trainer_resume(self.ptr.as_ptr(), c.as_ptr())) }
    }
}

impl Drop for Trainer<'_, '_> {
    fn drop(&mut self) {
        unsafe { sys::moe_trainer_free(self.ptr.as_ptr()) }
    }
}
