//! Safe wrapper over libmoeupcycle (`include/moeupcycle.h`).
//!
//! Threading follows the header: a [`Runtime`] may be shared by several
//! threads and layers (`Send + Sync`); a [`MoELayer`] or [`Model`] must be
//! used by one thread at a time (`Send`, not `Sync`). Layers and models
//! borrow the runtime they were created on, so it outlives them.

use moeupcycle_sys as sys;
use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::raw::c_char;
use std::path::Path;
use std::ptr::{self, NonNull};

pub use sys::{
    MOE_ERR_BUFFER_TOO_SMALL, MOE_ERR_INVALID_ARGUMENT, MOE_ERR_NULL_POINTER, MOE_ERR_SHAPE,
    MOE_OK,
};

/// A failed call: the `moe_status` code and the library's message
/// (`moe_last_error()`), or a message from this wrapper for checks done
/// before calling into C.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: i32,
    pub message: String,
}

impl Error {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
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

/// Static text describing a status code.
pub fn status_string(code: i32) -> String {
    unsafe { cstr_to_string(sys::moe_status_string(code)) }
}

/// Turn a status into a Result, reading the thread's last error message.
fn check(status: sys::moe_status) -> Result<()> {
    if status == sys::MOE_OK {
        Ok(())
    } else {
        // moe_last_error is per thread and valid until the next library call.
        let message = unsafe { cstr_to_string(sys::moe_last_error()) };
        Err(Error::new(status, message))
    }
}

/// The library's version number (MAJOR * 10000 + MINOR * 100 + PATCH).
pub fn version_number() -> u32 {
    unsafe { sys::moe_version_number() }
}

/// The library's version text, e.g. "0.1.0".
pub fn version_string() -> String {
    unsafe { cstr_to_string(sys::moe_version_string()) }
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

impl Runtime {
    /// Create a runtime with `threads` workers (0 = one per core).
    pub fn new(threads: u32) -> Result<Runtime> {
        unsafe {
            let mut p = MaybeUninit::<sys::moe_runtime_params>::zeroed();
            sys::moe_runtime_params_init(p.as_mut_ptr());
            let mut p = p.assume_init();
            p.threads = threads;
            let mut out: *mut sys::moe_runtime = ptr::null_mut();
            check(sys::moe_runtime_create(&mut out, &p))?;
            let ptr = NonNull::new(out)
                .ok_or_else(|| Error::new(sys::MOE_ERR_INTERNAL, "moe_runtime_create returned NULL"))?;
            Ok(Runtime { ptr })
        }
    }

    pub fn info(&self) -> Result<RuntimeInfo> {
        unsafe {
            let mut i = MaybeUninit::<sys::moe_runtime_info>::zeroed();
            (*i.as_mut_ptr()).struct_size = std::mem::size_of::<sys::moe_runtime_info>();
            check(sys::moe_runtime_get_info(i.as_mut_ptr(), self.ptr.as_ptr()))?;
            let i = i.assume_init();
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

/// How router scores become combine weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Routing {
    SoftmaxTopkRenorm = 0,
    SoftmaxTopk = 1,
    TopkSoftmax = 2,
    SigmoidTopk = 3,
    SigmoidTopkRenorm = 4,
}

/// Storage of expert weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Storage {
    F32 = 0,
    Bf16 = 2,
}

/// The tensors of a layer (row-major, HF layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Weight {
    Router = 0,
    Gate = 1,
    Up = 2,
    Down = 3,
    SharedGate = 4,
    SharedUp = 5,
    SharedDown = 6,
    SharedExpertGate = 7,
}

/// Layer configuration. `new` sets the four required sizes and the header's
/// defaults for the rest; chain the setters to change them.
#[derive(Debug, Clone, Copy)]
pub struct LayerConfig {
    raw: sys::moe_layer_config,
}

impl LayerConfig {
    pub fn new(hidden: u32, ffn: u32, experts: u32, top_k: u32) -> LayerConfig {
        let mut raw = unsafe {
            let mut c = MaybeUninit::<sys::moe_layer_config>::zeroed();
            sys::moe_layer_config_init(c.as_mut_ptr());
            c.assume_init()
        };
        raw.hidden = hidden;
        raw.ffn = ffn;
        raw.experts = experts;
        raw.top_k = top_k;
        LayerConfig { raw }
    }
    pub fn routing(mut self, r: Routing) -> Self {
        self.raw.routing = r as i32;
        self
    }
    pub fn capacity_factor(mut self, f: f32) -> Self {
        self.raw.capacity_factor = f;
        self
    }
    pub fn expert_choice(mut self, on: bool) -> Self {
        self.raw.expert_choice = on as i32;
        self
    }
    pub fn shared_ffn(mut self, fs: u32) -> Self {
        self.raw.shared_ffn = fs;
        self
    }
    pub fn storage(mut self, s: Storage) -> Self {
        self.raw.storage = s as i32;
        self
    }
    pub fn jitter(mut self, j: f32, seed: u64) -> Self {
        self.raw.jitter = j;
        self.raw.seed = seed;
        self
    }
    pub fn balance_loss_coef(mut self, c: f32) -> Self {
        self.raw.balance_loss_coef = c;
        self
    }
    pub fn z_loss_coef(mut self, c: f32) -> Self {
        self.raw.z_loss_coef = c;
        self
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
    pub balance_loss: f64,
    pub z_loss: f64,
    pub weight_bytes: u64,
    pub bound_bytes: u64,
    pub tokens_per_expert: Vec<u64>,
}

/// One MoE SwiGLU feed-forward layer on a runtime.
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

impl<'rt> MoELayer<'rt> {
    pub fn new(runtime: &'rt Runtime, config: LayerConfig) -> Result<MoELayer<'rt>> {
        let mut out: *mut sys::moe_layer = ptr::null_mut();
        unsafe { check(sys::moe_layer_create(&mut out, runtime.as_ptr(), &config.raw))? };
        let ptr = NonNull::new(out)
            .ok_or_else(|| Error::new(sys::MOE_ERR_INTERNAL, "moe_layer_create returned NULL"))?;
        Ok(MoELayer {
            ptr,
            hidden: config.raw.hidden as usize,
            experts: config.raw.experts as usize,
            saved_tokens: None,
            _rt: PhantomData,
        })
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Floats in `weight` (expert = -1) or in one expert of it.
    pub fn weight_count(&self, weight: Weight, expert: i64) -> Result<usize> {
        let mut n = 0usize;
        unsafe { check(sys::moe_layer_weight_count(&mut n, self.ptr.as_ptr(), weight as i32, expert))? };
        Ok(n)
    }

    pub fn set_weight(&mut self, weight: Weight, expert: i64, data: &[f32]) -> Result<()> {
        let need = self.weight_count(weight, expert)?;
        if data.len() != need {
            return Err(Error::new(
                sys::MOE_ERR_SHAPE,
                format!("data: {} floats given, {:?} (expert {}) holds {}", data.len(), weight, expert, need),
            ));
        }
        unsafe {
            check(sys::moe_layer_set_weight(self.ptr.as_ptr(), weight as i32, expert, data.as_ptr(), data.len()))
        }
    }

    pub fn weight(&self, weight: Weight, expert: i64) -> Result<Vec<f32>> {
        let n = self.weight_count(weight, expert)?;
        let mut v = vec![0f32; n];
        unsafe { check(sys::moe_layer_get_weight(self.ptr.as_ptr(), weight as i32, expert, v.as_mut_ptr(), n))? };
        Ok(v)
    }

    pub fn init_random(&mut self, seed: u64, std: f32) -> Result<()> {
        unsafe { check(sys::moe_layer_init_random(self.ptr.as_ptr(), seed, std)) }
    }

    fn check_rows(&self, what: &str, len: usize, tokens: usize) -> Result<usize> {
        let need = tokens
            .checked_mul(self.hidden)
            .ok_or_else(|| Error::invalid(format!("tokens: {tokens} x hidden {} overflows", self.hidden)))?;
        if len != need {
            return Err(Error::invalid(format!(
                "{what}: {len} floats given, expected tokens ({tokens}) x hidden ({}) = {need}",
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

    /// Forward without saving state for backward (leaves the saved one alone).
    pub fn infer(&mut self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        self.run_forward(x, tokens, 0)
    }

    /// Backward of the last `forward`: returns dL/dx [T, H] and adds the
    /// weight gradients to the layer's buffers. Consumes the saved forward.
    pub fn backward(&mut self, grad_out: &[f32]) -> Result<Vec<f32>> {
        let tokens = self
            .saved_tokens
            .ok_or_else(|| Error::invalid("backward: no saved forward (call forward first)"))?;
        let n = self.check_rows("grad_out", grad_out.len(), tokens)?;
        let mut gx = vec![0f32; n];
        if n == 0 {
            // Avoid passing dangling pointers for empty slices.
            let r = unsafe { check(sys::moe_layer_backward(self.ptr.as_ptr(), [0f32].as_ptr(), [0f32].as_mut_ptr())) };
            self.saved_tokens = None;
            r?;
            return Ok(gx);
        }
        let r = unsafe { check(sys::moe_layer_backward(self.ptr.as_ptr(), grad_out.as_ptr(), gx.as_mut_ptr())) };
        self.saved_tokens = None;
        r?;
        Ok(gx)
    }

    /// The accumulated gradient of `weight` (or one expert of it).
    pub fn grad(&self, weight: Weight, expert: i64) -> Result<Vec<f32>> {
        let n = self.weight_count(weight, expert)?;
        let mut v = vec![0f32; n];
        unsafe { check(sys::moe_layer_get_grad(self.ptr.as_ptr(), weight as i32, expert, v.as_mut_ptr(), n))? };
        Ok(v)
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        unsafe { check(sys::moe_layer_zero_grad(self.ptr.as_ptr())) }
    }

    pub fn stats(&self) -> Result<LayerStats> {
        let mut s = sys::moe_layer_stats {
            struct_size: std::mem::size_of::<sys::moe_layer_stats>(),
            ..Default::default()
        };
        let mut tpe = vec![0u64; self.experts];
        unsafe { check(sys::moe_layer_get_stats(&mut s, self.ptr.as_ptr(), tpe.as_mut_ptr(), tpe.len()))? };
        Ok(LayerStats {
            tokens: s.tokens,
            assignments: s.assignments,
            dropped: s.dropped,
            balance_loss: s.balance_loss,
            z_loss: s.z_loss,
            weight_bytes: s.weight_bytes,
            bound_bytes: s.bound_bytes,
            tokens_per_expert: tpe,
        })
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
    pub bos_token_id: i32,
    pub eos_token_id: i32,
    pub weight_dtype: i32,
    pub weight_bytes: u64,
    pub weight_bytes_per_token: u64,
}

/// A loaded decoder with its tokenizer and KV cache.
pub struct Model<'rt> {
    ptr: NonNull<sys::moe_model>,
    vocab: usize,
    _rt: PhantomData<&'rt Runtime>,
}

// Header: "A moe_model must be used by one thread at a time" => Send, not Sync.
unsafe impl Send for Model<'_> {}

impl<'rt> Model<'rt> {
    /// Load an HF directory or a .gguf file with default parameters.
    pub fn load(runtime: &'rt Runtime, path: impl AsRef<Path>) -> Result<Model<'rt>> {
        let path = path.as_ref();
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::invalid(format!("path: {} contains a NUL byte", path.display())))?;
        let mut out: *mut sys::moe_model = ptr::null_mut();
        unsafe { check(sys::moe_model_load(&mut out, runtime.as_ptr(), c.as_ptr(), ptr::null()))? };
        let ptr = NonNull::new(out)
            .ok_or_else(|| Error::new(sys::MOE_ERR_INTERNAL, "moe_model_load returned NULL"))?;
        let mut m = Model { ptr, vocab: 0, _rt: PhantomData };
        m.vocab = m.info()?.vocab_size as usize;
        Ok(m)
    }

    pub fn info(&self) -> Result<ModelInfo> {
        unsafe {
            let mut i = MaybeUninit::<sys::moe_model_info>::zeroed();
            (*i.as_mut_ptr()).struct_size = std::mem::size_of::<sys::moe_model_info>();
            check(sys::moe_model_get_info(i.as_mut_ptr(), self.ptr.as_ptr()))?;
            let i = i.assume_init();
            Ok(ModelInfo {
                architecture: chars_to_string(&i.architecture),
                num_layers: i.num_layers,
                hidden_size: i.hidden_size,
                vocab_size: i.vocab_size,
                context_length: i.context_length,
                num_moe_layers: i.num_moe_layers,
                num_experts: i.num_experts,
                top_k: i.top_k,
                bos_token_id: i.bos_token_id,
                eos_token_id: i.eos_token_id,
                weight_dtype: i.weight_dtype,
                weight_bytes: i.weight_bytes,
                weight_bytes_per_token: i.weight_bytes_per_token,
            })
        }
    }

    /// Tokenize without adding BOS.
    pub fn tokenize(&self, text: &str) -> Result<Vec<i32>> {
        self.tokenize_with(text, false)
    }

    /// Tokenize; with `add_special`, BOS is prepended when the tokenizer asks.
    pub fn tokenize_with(&self, text: &str, add_special: bool) -> Result<Vec<i32>> {
        let mut count = 0usize;
        let mut buf: Vec<i32> = Vec::new();
        // First guess: one id per byte is an upper bound for byte-level BPE
        // plus BOS; retry once with the size the library asks for.
        let mut cap = text.len() + 2;
        for _ in 0..2 {
            buf.resize(cap, 0);
            let st = unsafe {
                sys::moe_model_tokenize(
                    self.ptr.as_ptr(),
                    text.as_ptr() as *const c_char,
                    text.len(),
                    add_special as i32,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut count,
                )
            };
            if st == sys::MOE_ERR_BUFFER_TOO_SMALL && count > cap {
                cap = count;
                continue;
            }
            check(st)?;
            buf.truncate(count);
            return Ok(buf);
        }
        Err(Error::new(sys::MOE_ERR_INTERNAL, "tokenize: buffer size kept changing"))
    }

    /// The text of `tokens`; with `skip_special`, control tokens are left out.
    pub fn detokenize(&self, tokens: &[i32], skip_special: bool) -> Result<String> {
        let mut needed = 0usize;
        let mut buf: Vec<u8> = vec![0; tokens.len() * 8 + 16];
        for _ in 0..2 {
            let st = unsafe {
                sys::moe_model_detokenize(
                    self.ptr.as_ptr(),
                    tokens.as_ptr(),
                    tokens.len(),
                    skip_special as i32,
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len(),
                    &mut needed,
                )
            };
            if st == sys::MOE_ERR_BUFFER_TOO_SMALL && needed > buf.len() {
                buf.resize(needed, 0);
                continue;
            }
            check(st)?;
            let end = needed.saturating_sub(1).min(buf.len());
            return Ok(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        Err(Error::new(sys::MOE_ERR_INTERNAL, "detokenize: buffer size kept changing"))
    }

    /// Logits [tokens.len(), vocab] of `tokens` run as a fresh sequence.
    pub fn logits(&mut self, tokens: &[i32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::invalid("tokens: count must be at least 1"));
        }
        let n = tokens
            .len()
            .checked_mul(self.vocab)
            .ok_or_else(|| Error::invalid("tokens: count x vocab overflows"))?;
        let mut out = vec![0f32; n];
        unsafe {
            check(sys::moe_model_logits(self.ptr.as_ptr(), tokens.as_ptr(), tokens.len(), out.as_mut_ptr(), n))?
        };
        Ok(out)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
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
