/*
 * moeupcycle.h — the public C interface of libmoeupcycle.
 *
 * libmoeupcycle turns dense transformer checkpoints (HF safetensors or GGUF,
 * Llama / Mistral / Qwen2 family) into Mixture-of-Experts checkpoints
 * ("upcycling") in the HF Mixtral or Qwen2-MoE format, and runs and trains
 * dense and MoE models on CPUs.
 *
 * This header is the contract. Every function documents what it does, who owns
 * what, what may be NULL, and which status codes it returns.
 *
 * Conventions
 *  - Status. Every fallible call returns a moe_status: MOE_OK (0) or a
 *    negative error. On error, moe_last_error() returns a message naming what
 *    was wrong. A successful call leaves that message unchanged: it always
 *    describes the most recent failed call on the calling thread.
 *  - Outputs come first and are named `out`.
 *  - Versioned structs. Every parameter and result struct starts with
 *    `size_t struct_size`: the size of the struct as the caller's header
 *    declares it (sizeof). Fields are only ever appended, never reordered or
 *    removed, and a field appended in a later version starts at or after the
 *    previous version's sizeof (so an older struct never covers part of a
 *    newer field). Each struct names its first version. The library accepts
 *    any struct_size from the size of that first version up to its own:
 *      * parameter structs: fields beyond the caller's struct_size take their
 *        defaults;
 *      * result structs: the library writes only the caller's struct_size
 *        bytes.
 *    A struct_size larger than the library's own (a caller built against a
 *    newer header) is accepted for parameters when every byte the library does
 *    not know is zero (MOE_ERR_UNSUPPORTED otherwise: an option this library
 *    lacks was asked for), and for results those bytes are set to zero. A
 *    struct_size below the first version is MOE_ERR_INVALID_ARGUMENT.
 *  - Parameter structs are passed by pointer and filled with defaults by their
 *    `_init` function, which writes exactly `struct_size` bytes:
 *        moe_upcycle_params p;
 *        moe_upcycle_params_init(&p, sizeof p);
 *    A NULL parameter pointer means "all defaults".
 *  - Output buffers. A function that returns a variable amount of data takes
 *    `(buf, capacity, size_t *needed)`: `*needed` (when `needed` is not NULL)
 *    always receives how many elements the full answer takes (bytes including
 *    the terminating NUL for text). With `buf` NULL and `capacity` 0 the call
 *    only asks: it returns MOE_OK having written nothing but `*needed`. When
 *    `capacity` is smaller than needed it returns MOE_ERR_BUFFER_TOO_SMALL and
 *    writes nothing into `buf`. Nothing is ever silently truncated.
 *  - Enums are append-only and never renumbered; status codes are frozen
 *    (a retired code keeps its number). A field that can say "use the
 *    default" has an explicit DEFAULT value (MOE_DTYPE_DEFAULT,
 *    MOE_PLACEMENT_DEFAULT). Every enum has moe_<enum>_name() and
 *    moe_<enum>_from_name() (see "Names"), the one table of its names.
 *  - Strings are UTF-8, NUL-terminated. Paths are file-system paths.
 *  - Sizes are bounded: every count, length and size parameter has a
 *    documented upper limit; values beyond it are MOE_ERR_INVALID_ARGUMENT
 *    with a message saying why, before anything that size is allocated.
 *
 * Threading
 *  - All functions may be called from several threads at once. The error
 *    message returned by moe_last_error() is per thread.
 *  - moe_upcycle() writes on the calling thread and, unless
 *    `params->threads` is 1, starts one short-lived background thread that
 *    builds the next tensor while the previous one is written; it ends before
 *    moe_upcycle() returns. It does not call OpenBLAS.
 *  - Progress callbacks run on the thread that called the function.
 *  - A moe_runtime owns a pool of worker threads (one per core unless told
 *    otherwise), each pinned to its core when the machine allows it. The
 *    runtime may be shared by several layers and threads; it runs one
 *    parallel job at a time (callers queue). The caller's thread is never
 *    pinned or used as a worker.
 *  - A moe_trainer and the model it trains must be used by one thread at a
 *    time.
 *  - A moe_model must be used by one thread at a time (it owns a KV cache
 *    and scratch buffers); several models may share a runtime.
 *  - A moe_layer must be used by one thread at a time (forward, backward and
 *    gradient calls change its saved state). Different layers may be used
 *    from different threads at once.
 *  - Matrix products run on the library's own kernels, compiled for AVX-512,
 *    AVX2 + FMA and a portable x86-64 path; the widest one the CPU and the OS
 *    support is chosen once per process. The environment variable
 *    MOEUPCYCLE_KERNELS (auto, avx512, avx2, portable, openblas) forces one;
 *    an unknown value, or a path this CPU cannot run, makes
 *    moe_runtime_create() fail with a message. moe_runtime_get_info() and
 *    moe_runtime_describe() say which path runs and why. Results are
 *    bit-identical from run to run for a given path and thread count.
 *    bf16 compute (moe_layer_config.compute) runs, on the avx512 path, on
 *    AMX-BF16 tiles where the CPU has them and Linux grants the process the
 *    tile state (asked for once); else on AVX512-BF16 where the CPU has it
 *    and is not an Intel one (whose cores issue vdpbf16ps at half their f32
 *    multiply-add rate); else on a fallback over the f32 kernels.
 *    MOEUPCYCLE_BF16_KERNELS (auto, amx_bf16, avx512_bf16, fallback) forces
 *    one, and an unknown value, or a choice the CPU cannot run, makes
 *    moe_runtime_create() fail with a message.
 *    Quantized weights (moe_model_params.weight_dtype Q8_0, Q4_0, Q4_1) run
 *    their few-token products as integer dot products: vpdpbusd on the
 *    avx512 and openblas paths where the CPU has AVX512-VNNI, else vpmaddubsw
 *    (AVX2); plain C on the portable path. moe_runtime_describe() says which.
 *    Products of 1 to 16 tokens (decode), bound by how fast the weights
 *    stream from memory, read four rows side by side with prefetch hints on
 *    Intel CPUs and one row after another on the others (each is the faster
 *    on those CPUs); MOEUPCYCLE_DECODE_ROWS (auto, hinted, sequential) forces
 *    one, and an unknown value makes moe_runtime_create() fail with a
 *    message. The two add a row's products in different orders (quantized
 *    rows excepted), so results are bit-identical for a given choice.
 *  - The library needs an x86-64-v3 CPU (AVX2, FMA, F16C); on an older one
 *    every function that returns a moe_status returns MOE_ERR_UNSUPPORTED
 *    with a message instead of running (check one, e.g. moe_runtime_create,
 *    before calling the name and free functions).
 *  - OpenBLAS (the "openblas" path): workers call single-threaded sgemm on
 *    their own tiles, so the library sets OpenBLAS to one thread
 *    (openblas_set_num_threads(1)) when a runtime is created and before each
 *    layer call. That setting is process-wide. OpenBLAS picks its kernels from
 *    the CPU (or OPENBLAS_CORETYPE) once when it loads, and falls back to SSE3
 *    kernels on CPUs its version does not know.
 *  - The library never installs signal handlers. A host that wants Ctrl-C to
 *    stop a long call cleanly returns non-zero from the call's progress
 *    callback (the call then removes what it had started to write).
 */
#ifndef MOEUPCYCLE_H
#define MOEUPCYCLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                  */
/* ------------------------------------------------------------------------ */

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 8
#define MOE_VERSION_PATCH 0
/** MAJOR * 10000 + MINOR * 100 + PATCH. */
#define MOE_VERSION_NUMBER \
  (MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH)
#define MOE_VERSION_STRING "0.8.0"

/** The library's MOE_VERSION_NUMBER, to compare with the header's at run time.
 *  Before 1.0, a library of another minor version is not compatible. */
uint32_t moe_version_number(void);

/** The library's version as static text, e.g. "0.7.0". Never NULL. */
const char *moe_version_string(void);

/* ------------------------------------------------------------------------ */
/* Status codes (frozen: never renumbered, never reused)                    */
/* ------------------------------------------------------------------------ */

typedef enum moe_status {
  MOE_OK = 0,
  /** An argument is out of range or inconsistent with another. */
  MOE_ERR_INVALID_ARGUMENT = -1,
  /** A required pointer argument is NULL. */
  MOE_ERR_NULL_POINTER = -2,
  /** Reading or writing a file failed (missing file, permission, disk full,
   *  read-only file system, file size limit). */
  MOE_ERR_IO = -3,
  /** A file is malformed: truncated, corrupt, or violates its format. */
  MOE_ERR_FORMAT = -4,
  /** Well-formed but not supported (architecture, dtype, layout, or a struct
   *  field this library does not know). */
  MOE_ERR_UNSUPPORTED = -5,
  /** The output already exists and overwriting was not requested. */
  MOE_ERR_EXISTS = -6,
  /** A tensor, key or file that must be present is missing. */
  MOE_ERR_NOT_FOUND = -7,
  /** A tensor's shape does not match what the model description requires. */
  MOE_ERR_SHAPE = -8,
  /** Memory could not be allocated, or a size is absurdly large. */
  MOE_ERR_OUT_OF_MEMORY = -9,
  /** A callback asked the operation to stop. */
  MOE_ERR_CANCELLED = -10,
  /** A caller-provided buffer is too small; the needed size was reported. */
  MOE_ERR_BUFFER_TOO_SMALL = -11,
  /** A bug in the library: please report it with the message. */
  MOE_ERR_INTERNAL = -12,
  /** A computation produced NaN or infinity (a diverging training step, or
   *  weights that are not finite); the message names where. */
  MOE_ERR_NUMERIC = -13
} moe_status;

/** Static text describing `status` (e.g. "invalid argument"). Never NULL. */
const char *moe_status_string(moe_status status);

/**
 * The message of the most recent failed call on the calling thread: what was
 * wrong, with which argument or file. Successful calls do not change it; it is
 * empty text until a call fails. Never NULL. The pointer stays valid until the
 * next failing call on this thread.
 */
const char *moe_last_error(void);

/* ------------------------------------------------------------------------ */
/* Common enums (append-only)                                               */
/* ------------------------------------------------------------------------ */

/** Storage type of tensors: of checkpoints, of loaded weights, of upcycled
 *  output. Names: "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"; "default". */
typedef enum moe_dtype {
  /** Where a field accepts it: the dtype the context chooses (documented at
   *  the field; e.g. the source's dtype for upcycled output). */
  MOE_DTYPE_DEFAULT = -1,
  MOE_DTYPE_F32 = 0,
  MOE_DTYPE_F16 = 1,
  MOE_DTYPE_BF16 = 2,
  MOE_DTYPE_Q8_0 = 3,
  MOE_DTYPE_Q4_0 = 4,
  MOE_DTYPE_Q4_1 = 5
} moe_dtype;

/** Progress callback: `done` of `total` units of `stage` are finished.
 *  Return 0 to continue, non-zero to cancel (the call then returns
 *  MOE_ERR_CANCELLED and leaves no output behind). */
typedef int (*moe_progress_fn)(uint64_t done, uint64_t total,
                               const char *stage, void *user_data);

/* ------------------------------------------------------------------------ */
/* Checkpoint inspection                                                    */
/* ------------------------------------------------------------------------ */

/** What moe_checkpoint_inspect() reports about a dense or MoE checkpoint.
 *  First version: 0.1.0 (all fields below). */
typedef struct moe_checkpoint_info {
  /** Set by the caller to sizeof(moe_checkpoint_info) before the call. */
  size_t struct_size;
  /** "llama", "mistral", "qwen2", "mixtral" or "qwen2_moe". */
  char architecture[32];
  /** "safetensors" or "gguf". */
  char container[16];
  /** Storage type holding most parameters, e.g. "BF16" or "Q4_1". */
  char dtype[16];
  /** Per-dtype tensor counts, e.g. "Q4_1:210 Q8_0:1 F32:61". */
  char dtype_summary[128];
  uint32_t num_layers;
  uint32_t hidden_size;
  /** Dense FFN intermediate size (0 when every layer is MoE and none is given). */
  uint32_t intermediate_size;
  uint32_t num_heads;
  uint32_t num_kv_heads;
  uint32_t head_dim;
  uint32_t vocab_size;
  uint32_t max_position_embeddings;
  double rope_theta;
  double rms_norm_eps;
  int32_t tied_embeddings;
  int32_t qkv_bias;
  /** MoE fields; all 0 for a dense checkpoint. */
  uint32_t num_experts;
  uint32_t top_k;
  /** Intermediate size of each routed expert. */
  uint32_t moe_intermediate_size;
  uint32_t shared_expert_intermediate_size;
  uint32_t num_moe_layers;
  uint64_t tensor_count;
  /** Total parameters, and parameters used per token (equal for dense). */
  uint64_t param_count;
  uint64_t active_param_count;
  /** Bytes of tensor data on disk. */
  uint64_t data_bytes;
} moe_checkpoint_info;

/**
 * Inspect the checkpoint at `path`: an HF model directory (config.json with
 * model.safetensors or model.safetensors.index.json) or a .gguf file.
 * `out->struct_size` must be set. Files are memory-mapped and validated; no
 * tensor data is read.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (struct_size),
 * MOE_ERR_IO, MOE_ERR_FORMAT, MOE_ERR_UNSUPPORTED, MOE_ERR_NOT_FOUND, MOE_ERR_SHAPE.
 */
moe_status moe_checkpoint_inspect(moe_checkpoint_info *out, const char *path);

/* ------------------------------------------------------------------------ */
/* Upcycling: dense checkpoint -> MoE checkpoint                            */
/* ------------------------------------------------------------------------ */

/** How experts are made from the dense FFN (see docs/methods.md).
 *  Names: "copy", "drop", "noise", "granular", "partition". */
typedef enum moe_method {
  /** Every expert is an exact copy of the dense FFN (Sparse Upcycling). */
  MOE_METHOD_COPY = 0,
  /** Drop-Upcycling: a fraction `ratio` of intermediate neurons per expert is
   *  re-drawn from Normal(mean, std) of the original slice. */
  MOE_METHOD_DROP = 1,
  /** Copies with Normal(0, noise_std) added to a `ratio` slice per expert. */
  MOE_METHOD_NOISE = 2,
  /** Fine-grained experts: the FFN split into `granularity` shards; expert e
   *  holds shard e mod G, router rows repeated per virtual group. */
  MOE_METHOD_GRANULAR = 3,
  /** Each expert takes a subset of intermediate neurons (I / granularity). */
  MOE_METHOD_PARTITION = 4
} moe_method;

/** How router weights start. Names: "normal", "uniform", "zeros",
 *  "kmeans", "prompts". The data-derived ones (kmeans, prompts) center their
 *  rows (a vector added to every row changes no routing) and scale them so
 *  that a token's logits across experts have standard deviation
 *  router_spread on average over the calibration (or prompt) tokens. */
typedef enum moe_router_init {
  /** Normal(0, router_std). */
  MOE_ROUTER_INIT_NORMAL = 0,
  /** Uniform with standard deviation router_std (Drop-Upcycling's init). */
  MOE_ROUTER_INIT_UNIFORM = 1,
  MOE_ROUTER_INIT_ZEROS = 2,
  /** Needs calibration statistics. Rows are the centroids of spherical
   *  k-means on the sampled router inputs (the hidden state after the
   *  post-attention norm). With MOE_PARTITION_CLUSTER experts, expert e's row
   *  is instead the covariance of the router input with the share of the
   *  token's activation mass in e's neurons, so tokens go where their
   *  neurons fire. Since 0.7.0. */
  MOE_ROUTER_INIT_KMEANS = 3,
  /** Rows from router_prompts_path (one line per expert, mergekit-style):
   *  the mean router input over each line's tokens, minus the mean over the
   *  same line of router_negative_prompts_path when given. Since 0.7.0. */
  MOE_ROUTER_INIT_PROMPTS = 4
} moe_router_init;

/** How tokens choose experts and weigh their outputs. Names:
 *  "softmax-topk-renorm", "softmax-topk", "topk-softmax", "sigmoid-topk",
 *  "sigmoid-topk-renorm". */
typedef enum moe_routing {
  /** Softmax over all experts, top-k, renormalize the k weights (Mixtral). */
  MOE_ROUTING_SOFTMAX_TOPK_RENORM = 0,
  /** Softmax over all experts, top-k, weights not renormalized. */
  MOE_ROUTING_SOFTMAX_TOPK = 1,
  /** Top-k of the logits, softmax over the k chosen. */
  MOE_ROUTING_TOPK_SOFTMAX = 2,
  /** Sigmoid scores, top-k, weights the k scores (MoE layers only). */
  MOE_ROUTING_SIGMOID_TOPK = 3,
  /** Sigmoid scores, top-k, weights renormalized to sum 1 (DeepSeek-V3;
   *  MoE layers only). */
  MOE_ROUTING_SIGMOID_TOPK_RENORM = 4
} moe_routing;

/** Checkpoint format of upcycled output. Names: "mixtral", "qwen2-moe". */
typedef enum moe_format {
  /** HF MixtralForCausalLM, legacy per-expert tensor names. */
  MOE_FORMAT_MIXTRAL = 0,
  /** HF Qwen2MoeForCausalLM (always has a shared expert). */
  MOE_FORMAT_QWEN2_MOE = 1
} moe_format;

/** How `partition` chooses each expert's neurons.
 *  Names: "random", "uniform", "importance", "activation", "cluster". */
typedef enum moe_partition_select {
  MOE_PARTITION_RANDOM = 0,
  /** Evenly spaced neurons (disjoint: strided, neuron i to expert i mod E). */
  MOE_PARTITION_UNIFORM = 1,
  /** Sampled in proportion to the neuron's weight norm
   *  (disjoint: neurons ranked by norm and dealt round-robin). */
  MOE_PARTITION_IMPORTANCE = 2,
  /** Sampled in proportion to a calibration statistic (`importance`; MoE
   *  Jetpack's checkpoint recycling); disjoint: ranked and dealt round-robin.
   *  Needs calibration statistics. Since 0.7.0. */
  MOE_PARTITION_ACTIVATION = 3,
  /** Neurons grouped into E experts of I/E by co-activation (balanced
   *  spherical k-means on their |activation| over the sampled tokens):
   *  every neuron in exactly one expert; down_proj is scaled by E, so routing
   *  a token to all experts with equal weights (top_k = E, zero router)
   *  gives the dense FFN exactly. Needs calibration statistics and
   *  granularity 0 or E. Since 0.7.0. */
  MOE_PARTITION_CLUSTER = 4
} moe_partition_select;

/** The calibration statistic that ranks neurons by importance.
 *  Names: "l1", "l2", "freq". Since 0.7.0. */
typedef enum moe_importance {
  /** Mean |a| over the calibration tokens (a = silu(gate) * up). */
  MOE_IMPORTANCE_L1 = 0,
  /** Root of the mean a^2. */
  MOE_IMPORTANCE_L2 = 1,
  /** Firing frequency: the fraction of tokens with |a| above the layer's
   *  fire_quantile quantile of |a| (over the first calibration sequence). */
  MOE_IMPORTANCE_FREQ = 2
} moe_importance;

/** Which neurons `drop` re-draws (and `noise` perturbs).
 *  Names: "random", "least-important". Since 0.7.0. */
typedef enum moe_drop_select {
  /** A random `ratio` share per expert (the paper). */
  MOE_DROP_SELECT_RANDOM = 0,
  /** The `ratio` share ranked lowest by `importance`: the same neurons in
   *  every expert, each expert drawing its own values. Needs calibration
   *  statistics. */
  MOE_DROP_SELECT_LEAST_IMPORTANT = 1
} moe_drop_select;

/** How `granular` compensates the output scale.
 *  Names: "down", "cube-root", "none". */
typedef enum moe_granular_scaling {
  /** The whole scale on down_proj: exactly function-preserving when top_k is
   *  a multiple of the granularity and routing renormalizes. */
  MOE_GRANULAR_SCALE_DOWN = 0,
  /** scale^(1/3) on each of gate, up and down (the NVIDIA paper's choice). */
  MOE_GRANULAR_SCALE_CUBE_ROOT = 1,
  MOE_GRANULAR_SCALE_NONE = 2
} moe_granular_scaling;

/** What moe_upcycle() builds. First version: 0.2.0 (fields up to
 *  user_data); 0.7.0 appended the calibration and data-derived router fields. */
typedef struct moe_upcycle_params {
  /** sizeof(moe_upcycle_params); set by moe_upcycle_params_init(). */
  size_t struct_size;
  /** Number of routed experts E, 1..1024. Default 8. */
  uint32_t num_experts;
  /** Experts per token k, 1..E. Default 2. */
  uint32_t top_k;
  /** Default MOE_METHOD_COPY. */
  moe_method method;
  /** Fraction of neurons re-drawn (drop) or perturbed (noise), in (0, 1].
   *  Default 0.5. */
  double ratio;
  /** drop/noise: non-zero = one index set per expert shared by gate, up and
   *  down (the paper's text); 0 = an independent set per projection (the
   *  reference code). Default 0. */
  int32_t shared_indices;
  /** noise: standard deviation of the added noise. Default 0.02. */
  double noise_std;
  /** granular/partition: G, each expert has I / G neurons. 0 = automatic
   *  (granular: 1, partition: E). G must divide I; granular needs G | E. */
  uint32_t granularity;
  moe_granular_scaling granular_scaling;
  moe_partition_select partition_select;
  /** partition: non-zero = every neuron in at most one expert (needs E*I/G <= I). */
  int32_t partition_disjoint;
  /** partition: non-zero = scale down_proj by I / (k * I/G) (cluster: by E).
   *  Default 1. */
  int32_t partition_scale;
  /** Which layers become MoE: NULL or "all", "every:N" (layers i with
   *  (i+1) % N == 0), or a list "0,2,5-7". Default NULL (all). An empty
   *  string is an error. */
  const char *layers;
  /** Default MOE_ROUTER_INIT_NORMAL. */
  moe_router_init router_init;
  /** Default 0.02. */
  double router_std;
  /** Non-zero: add a shared expert (a copy of the dense FFN) with a zero
   *  sigmoid gate; routed experts' down_proj are halved so the output starts
   *  equal to the dense FFN's for `copy`. Forced on for Qwen2-MoE. */
  int32_t shared_expert;
  /** Default MOE_ROUTING_SOFTMAX_TOPK_RENORM (Mixtral supports only that;
   *  checkpoints hold the first three). */
  moe_routing routing;
  /** Default MOE_FORMAT_MIXTRAL. */
  moe_format format;
  /** Output dtype: MOE_DTYPE_DEFAULT (default: the source tensor's dtype,
   *  F32/F16/BF16; quantized sources give F32), MOE_DTYPE_F32, MOE_DTYPE_BF16
   *  or MOE_DTYPE_F16. */
  moe_dtype dtype;
  /** Same seed and parameters give byte-identical output. Default 0. */
  uint64_t seed;
  /** Non-zero: replace an existing output directory (never a regular file or
   *  a symbolic link; never the input or a directory holding it). Default 0. */
  int32_t force;
  /** Shard size limit of the output safetensors files, 1 KiB..1 TiB.
   *  Default 4 GiB. */
  uint64_t max_shard_bytes;
  /** 1 = build and write tensors on the calling thread; 0 or more = build the
   *  next tensor on a background thread while writing. Output does not depend
   *  on it. Default 0. */
  uint32_t threads;
  /** Switch load-balancing loss coefficient, recorded in the output config
   *  (router_aux_loss_coef). Finite, >= 0. Default 0.02. */
  double aux_loss_coef;
  /** Optional progress callback (NULL = none) and its user data. Returning
   *  non-zero cancels: nothing is left behind. */
  moe_progress_fn progress;
  void *user_data;
  /* ---- 0.7.0 ---- */
  /** Calibration data the dense model runs over before upcycling (NULL =
   *  none): text, tokenized with the model's tokenizer, or token ids with
   *  calibration_ids. Per FFN layer and intermediate neuron it collects mean
   *  |a|, mean a^2 and firing frequency, and the activations and router
   *  inputs of calibration_samples evenly spaced tokens; memory holds those,
   *  not the data. Needs at least 64 tokens. Used by MOE_PARTITION_ACTIVATION,
   *  MOE_PARTITION_CLUSTER, MOE_DROP_SELECT_LEAST_IMPORTANT,
   *  MOE_ROUTER_INIT_KMEANS and shared_from_frequent (an error when nothing
   *  uses it and save_stats_path is NULL). The output config records the
   *  token count and an FNV-1a hash of the token ids. */
  const char *calibration_path;
  /** Non-zero: calibration_path holds whitespace-separated token ids. */
  int32_t calibration_ids;
  /** Tokens used from the start of the calibration data, >= 64.
   *  Default 16384. */
  uint64_t calibration_tokens;
  /** Tokens whose activations and router inputs are kept, 1..65536.
   *  Default 256. */
  uint32_t calibration_samples;
  /** Quantile of |a| over a layer's neurons that counts as firing, in
   *  (0, 1). Default 0.9. */
  double fire_quantile;
  /** Statistics saved by an earlier run (save_stats_path) to use instead of
   *  calibration data; refused when they were collected on another model.
   *  NULL = none. */
  const char *stats_path;
  /** Where to save the collected statistics (safetensors; written under a
   *  temporary name and renamed; an existing file needs `force`). NULL = not
   *  saved. */
  const char *save_stats_path;
  /** Statistic of MOE_PARTITION_ACTIVATION and
   *  MOE_DROP_SELECT_LEAST_IMPORTANT. Default MOE_IMPORTANCE_L2. */
  moe_importance importance;
  /** partition, qwen2-moe format: the F most frequently firing neurons form
   *  the shared expert (its down_proj x2 against the zero gate's 1/2) and the
   *  routed experts are built from the other I - F. 0 = off (a shared expert
   *  copies the whole FFN). Needs calibration statistics. Default 0. */
  uint32_t shared_from_frequent;
  /** Default MOE_DROP_SELECT_RANDOM. */
  moe_drop_select drop_select;
  /** MOE_ROUTER_INIT_PROMPTS: a text file with one non-empty line of
   *  prompts per expert (per virtual expert for granular). */
  const char *router_prompts_path;
  /** MOE_ROUTER_INIT_PROMPTS: optional negative prompts, one line per
   *  expert. NULL = none. */
  const char *router_negative_prompts_path;
  /** Data-derived routers: the standard deviation of a token's logits across
   *  experts, averaged over the calibration (or prompt) tokens. > 0.
   *  Default 1. */
  double router_spread;
  /** partition: non-zero = fit down_proj's scale to the calibration tokens
   *  instead of partition_scale's formula: each neuron's column divided by
   *  the number of experts holding it, times the factor that minimizes the
   *  expected squared error between the MoE layer's output (under uniform
   *  random routing) and the dense FFN's on the sampled tokens. Needs
   *  calibration statistics. Default 0. */
  int32_t calibrated_scale;
} moe_upcycle_params;

/** Fill `params` with defaults, writing `struct_size` bytes (pass
 *  sizeof *params). Returns MOE_OK, MOE_ERR_NULL_POINTER,
 *  MOE_ERR_INVALID_ARGUMENT (struct_size below the first version). */
moe_status moe_upcycle_params_init(moe_upcycle_params *params, size_t struct_size);

/** What moe_upcycle() reports. First version: 0.1.0 (fields up to
 *  peak_rss_bytes); 0.2.0 appended the stale_* fields, 0.6.0 the router_*
 *  fields. */
typedef struct moe_upcycle_result {
  /** Set by the caller to sizeof(moe_upcycle_result) before the call. */
  size_t struct_size;
  uint64_t bytes_written;
  uint64_t tensors_written;
  uint32_t shards;
  uint32_t moe_layers;
  double seconds;
  /** Peak resident memory of the process, in bytes, when it returned. */
  uint64_t peak_rss_bytes;
  /* ---- 0.2.0 ---- */
  /** Temporary directories of this output left by processes that no longer
   *  run (killed, crashed, power loss), removed before writing, and their
   *  bytes. */
  uint64_t stale_bytes_removed;
  uint32_t stale_removed;
  /* ---- 0.6.0 ---- */
  /** The largest cosine similarity between the router rows of two experts
   *  (granular: of two virtual experts) over the MoE layers, and its layer.
   *  Near 1 the router cannot tell those experts apart at first (two zero
   *  rows count as 1: --router-init zeros); the CLI warns from 0.99. NaN and
   *  -1 when not measured (more than 256 router rows). */
  double router_max_similarity;
  int32_t router_similar_layer;
} moe_upcycle_result;

/**
 * Upcycle the dense checkpoint at `input_path` (HF directory or .gguf file)
 * into an MoE checkpoint directory at `output_path`.
 *
 * The output is written into a temporary directory beside `output_path`
 * (named `.NAME.tmp-PID-RANDOM`) and renamed into place at the end; on any
 * error or cancel the temporary directory is removed, so `output_path` is
 * either absent, the complete old output, or the complete new one. A
 * temporary directory of the same output left by a process that has died is
 * removed first (and reported in `out`). An existing `output_path` is refused
 * with MOE_ERR_EXISTS unless `params->force`; with force, an existing
 * directory is swapped for the new one atomically where the file system can
 * exchange two names (Linux renameat2), else replaced by two renames. The
 * input is never modified. Memory use grows with the largest layer, not with
 * the model.
 *
 * An `output_path` ending in ".gguf" is written as one GGUF file instead, the
 * upcycled tensors streamed into it as they are built (memory still grows
 * with one layer): the layout of `params->format` as moe_export() writes it
 * (`llama` for Mixtral, `qwen2moe`), matrices in the output dtype (F32 for
 * quantized sources), under a temporary name renamed into place; what GGUF
 * cannot express is refused as moe_export() refuses it. Since 0.7.0.
 *
 * `out` may be NULL (else its struct_size set). `params` may be NULL for all
 * defaults.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT, MOE_ERR_IO
 * (also disk full, read-only destination, file size limit), MOE_ERR_FORMAT,
 * MOE_ERR_UNSUPPORTED, MOE_ERR_EXISTS, MOE_ERR_NOT_FOUND, MOE_ERR_SHAPE,
 * MOE_ERR_OUT_OF_MEMORY, MOE_ERR_CANCELLED.
 */
moe_status moe_upcycle(moe_upcycle_result *out, const char *input_path,
                       const char *output_path,
                       const moe_upcycle_params *params);

/**
 * Run the dense checkpoint at `input_path` over params->calibration_path and
 * write its calibration statistics to `stats_path`: the safetensors file
 * moe_upcycle_params.stats_path reads, so several upcycles can share one
 * calibration. Reads the calibration fields of `params` (calibration_path,
 * calibration_ids, calibration_tokens, calibration_samples, fire_quantile)
 * and `force`; the others are ignored. The file is written under a temporary
 * name and renamed into place; an existing file is refused with
 * MOE_ERR_EXISTS unless params->force. Since 0.7.0.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (no
 * calibration data, too few tokens, a token id outside the vocabulary),
 * MOE_ERR_NOT_FOUND, MOE_ERR_EXISTS, MOE_ERR_IO, MOE_ERR_FORMAT,
 * MOE_ERR_UNSUPPORTED (an MoE checkpoint), MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_calibrate(const char *input_path, const char *stats_path,
                         const moe_upcycle_params *params);

/** What moe_export() writes. First version: 0.7.0 (all fields below). */
typedef struct moe_export_params {
  /** sizeof(moe_export_params); set by moe_export_params_init(). */
  size_t struct_size;
  /** Storage type of the weight matrices: MOE_DTYPE_F32 (default),
   *  MOE_DTYPE_F16, MOE_DTYPE_BF16, MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0 or
   *  MOE_DTYPE_Q4_1 (GGML's blocks of 32). Norms, biases and routers stay
   *  F32; a matrix whose rows are not a whole number of blocks is written
   *  F16 (counted in moe_export_result.fallback_tensors). */
  moe_dtype dtype;
  /** Non-zero: replace an existing output file (never a directory).
   *  Default 0. */
  int32_t force;
} moe_export_params;

/** What moe_export() wrote. First version: 0.7.0 (all fields below). */
typedef struct moe_export_result {
  /** Set by the caller to sizeof(moe_export_result) before the call. */
  size_t struct_size;
  uint64_t bytes_written;
  uint64_t tensors_written;
  /** Matrices written as F16 because their rows are not whole blocks. */
  uint32_t fallback_tensors;
  double seconds;
} moe_export_result;

/** Fill `params` with defaults, writing `struct_size` bytes. Returns MOE_OK,
 *  MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT. Since 0.7.0. */
moe_status moe_export_params_init(moe_export_params *params, size_t struct_size);

/**
 * Write the checkpoint at `input_path` (HF directory or .gguf; dense Llama,
 * Mistral, Qwen2, or an MoE: Mixtral, Qwen2-MoE) as one GGUF file (version
 * 3) that llama.cpp runs: tensors under llama.cpp's names, Q/K rows permuted
 * for the `llama` architecture, each MoE layer's experts stacked
 * (ffn_gate_exps, ffn_up_exps, ffn_down_exps; ffn_gate_inp for the router;
 * the *_shexp tensors and ffn_gate_inp_shexp for Qwen2-MoE's shared
 * expert), the hyperparameters and expert counts as `ARCH.*` metadata, and
 * the byte-level BPE tokenizer (tokens, types, merges, special ids, chat
 * template) as `tokenizer.*` metadata, its vocabulary padded with unused
 * [PADn] tokens to the model's. Tensor data is aligned to 32 bytes
 * (general.alignment). The file is written under a temporary name and renamed
 * into place; an existing file is refused with MOE_ERR_EXISTS unless
 * params->force. The library reads the files it writes (moe_model_load).
 *
 * Refused with MOE_ERR_UNSUPPORTED: MoE models with dense layers (GGUF's
 * MoE architectures are MoE in every layer), a Qwen2-MoE that renormalizes
 * the top-k weights or has no shared expert (llama.cpp's qwen2moe does
 * neither), rope_scaling, and tokenizers other than byte-level BPE.
 * `out` may be NULL (else its struct_size set); `params` may be NULL for the
 * defaults. Since 0.7.0.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT,
 * MOE_ERR_NOT_FOUND, MOE_ERR_EXISTS, MOE_ERR_IO, MOE_ERR_FORMAT,
 * MOE_ERR_SHAPE, MOE_ERR_UNSUPPORTED.
 */
moe_status moe_export(moe_export_result *out, const char *input_path, const char *output_path,
                      const moe_export_params *params);

/* ------------------------------------------------------------------------ */
/* Models from scratch                                                      */
/* ------------------------------------------------------------------------ */

/** The shape and initialization of a model moe_init_model() builds.
 *  First version: 0.6.0 (all fields below).
 *
 *  Initialization (transformers' Llama-family `_init_weights` with
 *  initializer_range = init_std): every matrix (embedding, attention and FFN
 *  projections, routers, the shared-expert gate, the LM head when untied) is
 *  drawn from N(0, init_std^2); RMSNorm weights are 1; attention biases
 *  (Qwen2-MoE) are 0. Each tensor draws from its own stream, seeded by `seed`
 *  and the tensor's name, so a dense and an MoE model of the same shape and
 *  seed share their embedding and attention weights. */
typedef struct moe_init_params {
  /** sizeof(moe_init_params); set by moe_init_params_init(). */
  size_t struct_size;
  /** Hidden size, 1..65536. Default 256. */
  uint32_t hidden_size;
  /** Decoder layers, 1..1024. Default 4. */
  uint32_t num_layers;
  /** Attention heads, 1..1024. Default 4. */
  uint32_t num_heads;
  /** Key/value heads (a divisor of num_heads); 0 = num_heads. Default 0. */
  uint32_t num_kv_heads;
  /** Even, 2..1024; 0 = hidden_size / num_heads. Default 0. */
  uint32_t head_dim;
  /** The dense FFN's intermediate size, or each expert's; 0 = 8/3 of
   *  hidden_size rounded up to a multiple of 64. Default 0. */
  uint32_t intermediate_size;
  /** 0 = a dense model (Llama architecture); 1..1024 = routed experts in
   *  every layer, in the layout `format` names. Default 0. */
  uint32_t num_experts;
  /** Experts per token, 1..num_experts. Default 2. */
  uint32_t top_k;
  /** MoE layout: MOE_FORMAT_MIXTRAL (default) or MOE_FORMAT_QWEN2_MOE. */
  moe_format format;
  /** Qwen2-MoE shared expert intermediate size; 0 = intermediate_size.
   *  Mixtral has none: must be 0. Default 0. */
  uint32_t shared_expert_size;
  /** Context length (max_position_embeddings), 1..2^24. Default 2048. */
  uint32_t max_positions;
  /** Non-zero: the LM head is the embedding. Default 1. */
  int32_t tie_embeddings;
  /** Default 10000. */
  double rope_theta;
  /** Default 1e-5. */
  double rms_norm_eps;
  /** Standard deviation of every initialized matrix, in (0, 1]. Default 0.02. */
  double init_std;
  /** Routing of MoE layers (softmax-topk-renorm, softmax-topk (Qwen2-MoE
   *  only) or topk-softmax). Default MOE_ROUTING_SOFTMAX_TOPK_RENORM. */
  moe_routing routing;
  /** Recorded in the config (router_aux_loss_coef); finite, >= 0. Default 0.02. */
  double aux_loss_coef;
  /** MOE_DTYPE_DEFAULT or MOE_DTYPE_F32 (default: f32) or MOE_DTYPE_BF16. */
  moe_dtype dtype;
  /** Same seed and parameters give byte-identical weights. Default 0. */
  uint64_t seed;
  /** Non-zero: replace an existing output directory (as moe_upcycle). Default 0. */
  int32_t force;
  /** Shard size limit of the safetensors files, 1 KiB..1 TiB. Default 4 GiB. */
  uint64_t max_shard_bytes;
} moe_init_params;

/** Fill `params` with defaults, writing `struct_size` bytes (pass
 *  sizeof *params). Returns MOE_OK, MOE_ERR_NULL_POINTER,
 *  MOE_ERR_INVALID_ARGUMENT (struct_size below the first version). */
moe_status moe_init_params_init(moe_init_params *params, size_t struct_size);

/** What moe_init_model() reports. First version: 0.6.0 (all fields below). */
typedef struct moe_init_result {
  /** Set by the caller to sizeof(moe_init_result) before the call. */
  size_t struct_size;
  /** Parameters of the model, and those active per token. */
  uint64_t parameters;
  uint64_t active_parameters;
  /** Bytes of tensor data written, and the safetensors files holding them. */
  uint64_t bytes_written;
  uint32_t shards;
  double seconds;
} moe_init_result;

/**
 * Write a new model with random weights (see moe_init_params) as an HF
 * checkpoint directory at `output_path`: config.json (LlamaForCausalLM,
 * MixtralForCausalLM or Qwen2MoeForCausalLM, with initializer_range and a
 * `moeupcycle` block recording the seed), safetensors shards, and the
 * tokenizer of `tokenizer_source` (an HF directory, whose tokenizer files are
 * copied, or a .gguf file, whose byte-level BPE tokenizer is exported); the
 * vocabulary size and bos/eos ids are that model's. The source must have a
 * tokenizer this library reads. Written like moe_upcycle's output: under a
 * temporary name, renamed into place; an existing output is refused unless
 * `params->force`. Memory use does not grow with the model.
 *
 * `out` may be NULL (else its struct_size set). `params` may be NULL for all
 * defaults.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT, MOE_ERR_IO,
 * MOE_ERR_FORMAT, MOE_ERR_UNSUPPORTED, MOE_ERR_EXISTS, MOE_ERR_NOT_FOUND.
 */
moe_status moe_init_model(moe_init_result *out, const char *tokenizer_source,
                          const char *output_path, const moe_init_params *params);

/* ------------------------------------------------------------------------ */
/* Runtime: topology, pinned workers, NUMA placement                        */
/* ------------------------------------------------------------------------ */

/** How a layer's expert weights are spread over NUMA nodes.
 *  Names: "row-slice", "expert", "interleave", "none"; "default". */
typedef enum moe_placement {
  /** The runtime's placement (for a runtime: MOE_PLACEMENT_ROW_SLICE). */
  MOE_PLACEMENT_DEFAULT = -1,
  /** Each node owns a slice of every expert's intermediate dimension (rows of
   *  gate/up, columns of down) and computes a partial output; partial outputs
   *  are summed in node order. */
  MOE_PLACEMENT_ROW_SLICE = 0,
  /** Each node owns whole experts, balanced by expected load per worker. */
  MOE_PLACEMENT_EXPERT = 1,
  /** One copy with pages interleaved over all nodes. */
  MOE_PLACEMENT_INTERLEAVE = 2,
  /** One copy, no binding. */
  MOE_PLACEMENT_NONE = 3
} moe_placement;

/** A topology and its pinned worker threads. Opaque. */
typedef struct moe_runtime moe_runtime;

/** How a runtime is made. First version: 0.1.0 (all fields below). */
typedef struct moe_runtime_params {
  /** sizeof(moe_runtime_params); set by moe_runtime_params_init(). */
  size_t struct_size;
  /** Worker threads: 0 (default) = one per core; otherwise 1..4096 (more
   *  than the cores wrap round them). */
  uint32_t threads;
  /** Non-zero (default): pin each worker to its core. */
  int32_t pin;
  /** Default placement of layers created on this runtime.
   *  MOE_PLACEMENT_DEFAULT (default) = MOE_PLACEMENT_ROW_SLICE. */
  moe_placement placement;
  /** A synthetic hwloc topology (e.g. "pack:2 [numa] core:4 pu:1") to plan
   *  for instead of the machine, at most 4096 processing units and 256
   *  characters; NULL (default) = the machine, which hwloc may itself
   *  replace through HWLOC_SYNTHETIC or HWLOC_XMLFILE. On such topologies
   *  nothing is really pinned or bound, and the runtime says so. */
  const char *topology_synthetic;
  /** An hwloc XML topology file to use instead of the machine. NULL = none. */
  const char *topology_xml;
} moe_runtime_params;

/** Fill `params` with defaults, writing `struct_size` bytes. Returns MOE_OK,
 *  MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_runtime_params_init(moe_runtime_params *params, size_t struct_size);

/**
 * Create a runtime: discover the topology, start and pin the workers, set
 * OpenBLAS to one thread. `params` may be NULL for all defaults. Free with
 * moe_runtime_free() after every layer and model using it is freed.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (also a
 * malformed or too large synthetic topology), MOE_ERR_NOT_FOUND (topology XML
 * file missing), MOE_ERR_IO or MOE_ERR_FORMAT (XML unreadable or malformed),
 * MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_runtime_create(moe_runtime **out, const moe_runtime_params *params);

/** Stop the workers and release the runtime. NULL is ignored. */
void moe_runtime_free(moe_runtime *runtime);

/** What a runtime runs on. First version: 0.1.0 (fields up to blas_core);
 *  0.3.0 appended kernel_path, kernel_forced and kernel_vector_floats, 0.5.0
 *  kernel_bf16. */
typedef struct moe_runtime_info {
  /** Set by the caller to sizeof(moe_runtime_info) before the call. */
  size_t struct_size;
  uint32_t numa_nodes;
  uint32_t cores;
  uint32_t pus;
  uint32_t workers;
  /** 1 when the topology is this machine's (0 for synthetic or XML ones). */
  int32_t is_this_system;
  /** 1 when every worker really is pinned to its core. */
  int32_t workers_pinned;
  /** 1 when memory can really be bound to a node (hwloc support flags). */
  int32_t memory_binding;
  /** OpenBLAS threads now, and its kernel family (e.g. "Haswell", "SkylakeX"). */
  int32_t blas_threads;
  char blas_core[32];
  /* ---- 0.3.0 ---- */
  /** The kernel path of the matrix products: "avx512", "avx2", "portable" or
   *  "openblas" (see Threading). */
  char kernel_path[16];
  /** 1 when MOEUPCYCLE_KERNELS chose the path, 0 when the CPU did. */
  int32_t kernel_forced;
  /** Floats per vector of the path's kernels (16, 8, 4; 0 for openblas). */
  int32_t kernel_vector_floats;
  /* ---- 0.5.0 ---- */
  /** Where bf16 compute (moe_layer_config.compute) runs: "amx_bf16"
   *  (tdpbf16ps on AMX tiles, where the CPU and the OS run them and the path
   *  is avx512), "avx512_bf16" (vdpbf16ps, where the CPU has AVX512-BF16, the
   *  path is avx512 and the CPU is not an Intel one; see Threading) or
   *  "fallback" (rounded operands on the path's f32 kernels; the openblas
   *  path uses the widest of the library's own for bf16 compute); see
   *  MOEUPCYCLE_BF16_KERNELS under Threading. */
  char kernel_bf16[16];
} moe_runtime_info;

/** Fill `out` (out->struct_size set by the caller) about `runtime`.
 *  Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_runtime_get_info(moe_runtime_info *out, const moe_runtime *runtime);

/** The measured multiply-add throughput of the machine, for benchmarks to put
 *  their figures beside: every worker of `runtime` runs independent chains of
 *  vector multiply-adds at once for about `seconds` (0.01 to 10). `*gflops`
 *  receives the sum over the workers, in GFLOP/s (one multiply-add is two
 *  operations). `dtype`: MOE_DTYPE_F32 measures f32 FMAs on the instruction
 *  set of the active kernel path (the widest the CPU runs for the "openblas"
 *  path); MOE_DTYPE_BF16 measures tdpbf16ps on AMX tiles (each: a 16 x 16
 *  tile of 32 bf16 multiply-adds, 16384 operations) where the process runs
 *  them (unless MOEUPCYCLE_BF16_KERNELS=avx512_bf16 puts bf16 compute on
 *  vdpbf16ps), else vdpbf16ps (each: 16 lanes of two bf16 multiply-adds, 64
 *  operations) where the CPU and the OS support AVX512-BF16, and returns
 *  MOE_ERR_UNSUPPORTED elsewhere (bf16 compute then runs on the f32
 *  kernels, whose peak is the f32 one).
 *  Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT,
 *  MOE_ERR_UNSUPPORTED. */
moe_status moe_runtime_measure_peak(moe_runtime *runtime, moe_dtype dtype, double seconds, double *gflops);

/** Layout of moe_runtime_describe()'s text. Names: "plain", "json". */
typedef enum moe_text_format {
  MOE_TEXT_PLAIN = 0,
  MOE_TEXT_JSON = 1
} moe_text_format;

struct moe_layer_config;

/**
 * Describe the runtime as text: NUMA nodes and their cores, each worker's
 * core and whether it is pinned, OpenBLAS kernels and threads, whether
 * memory binding is effective, and, when `layer` is not NULL, the placement
 * plan of a layer of that shape (which node holds which rows of which expert).
 * The NUL-terminated text goes into `buffer` by the output-buffer rule
 * (`*needed` in bytes including the NUL).
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT,
 * MOE_ERR_BUFFER_TOO_SMALL.
 */
moe_status moe_runtime_describe(const moe_runtime *runtime,
                                const struct moe_layer_config *layer,
                                moe_text_format format, char *buffer,
                                size_t capacity, size_t *needed);

/* ------------------------------------------------------------------------ */
/* MoE layer: forward and backward                                          */
/* ------------------------------------------------------------------------ */

/** One Mixture-of-Experts SwiGLU feed-forward layer. Opaque. */
typedef struct moe_layer moe_layer;

/** A layer's shape and behaviour. First version: 0.1.0 (fields up to
 *  z_loss_coef); 0.5.0 appended compute. */
typedef struct moe_layer_config {
  /** sizeof(moe_layer_config); set by moe_layer_config_init(). */
  size_t struct_size;
  /** Model width H, 1..2^20. No default: must be set. */
  uint32_t hidden_size;
  /** Intermediate size F of each routed expert, 1..2^20. Must be set. */
  uint32_t moe_intermediate_size;
  /** Routed experts E, 1..4096. Must be set. */
  uint32_t num_experts;
  /** Experts per token K, 1..E (expert choice: average experts per token).
   *  Must be set. */
  uint32_t top_k;
  /** Default MOE_ROUTING_SOFTMAX_TOPK_RENORM. */
  moe_routing routing;
  /** Token choice: 0 (default) = dropless; > 0 = each expert keeps at most
   *  ceil(capacity_factor * T * K / E) tokens, filled by slot (every token's
   *  first choice, then second choices, ...) in token order; the rest are
   *  dropped (their output is 0; the caller's residual carries them).
   *  Expert choice: each expert takes ceil(capacity_factor * T * K / E)
   *  tokens (at most T); 0 means 1. */
  float capacity_factor;
  /** Non-zero: Expert Choice routing (experts pick their top tokens by
   *  score). Default 0. */
  int32_t expert_choice;
  /** Intermediate size of a shared expert, 0 (default) = none. Its output is
   *  scaled by sigmoid(x . g) with a learned [H] vector g (Qwen2-MoE). */
  uint32_t shared_expert_intermediate_size;
  /** Storage of expert weights: MOE_DTYPE_F32 (default), MOE_DTYPE_BF16, or
   *  GGML's blocks MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0, MOE_DTYPE_Q4_1 (hidden
   *  size and intermediate sizes multiples of 32, else MOE_ERR_UNSUPPORTED):
   *  moe_layer_set_weight() rounds each row to blocks as GGML does,
   *  moe_layer_get_weight() returns the blocks' values, and moe_layer_load()
   *  keeps a GGUF's blocks of that type bit for bit. A forward of at most 16
   *  tokens quantizes the activations to int8 per block of 32 for integer
   *  dot products; more tokens dequantize blocks of weight rows to f32.
   *  Quantized experts are for inference: moe_layer_backward() returns
   *  MOE_ERR_UNSUPPORTED and they cannot be borrowed. Row-slice placement
   *  splits such experts at multiples of 32 rows. The router and the
   *  shared-expert gate stay f32. */
  moe_dtype storage;
  /** MOE_PLACEMENT_DEFAULT (default: the runtime's) or a placement. */
  moe_placement placement;
  /** Router jitter in training forwards: the router input is multiplied by
   *  Uniform(1 - jitter, 1 + jitter) noise (Switch). 0 (default) = off. */
  float jitter;
  /** Seed of the jitter noise. Default 0. */
  uint64_t seed;
  /** Coefficient of the Switch load-balancing loss
   *  E * sum_e f_e * P_e (f_e: fraction of the T*K choices given to e before
   *  capacity drops; P_e: mean router probability of e; for sigmoid routing
   *  the probabilities are the scores normalized to sum 1). Default 0.01. */
  float aux_loss_coef;
  /** Coefficient of the router z-loss mean_t(logsumexp(logits_t)^2).
   *  Default 0.001. */
  float z_loss_coef;
  /* ---- 0.5.0 ---- */
  /** Precision of the expert matrix products (gate, up and down; forward
   *  and backward, weight gradients included): MOE_DTYPE_F32 (default), or
   *  MOE_DTYPE_BF16: both operands of each product are rounded to bf16
   *  (nearest even; NaN stays NaN; subnormals become zero) and the products
   *  are summed in f32. The router, routing, the shared-expert gate, SwiGLU,
   *  the combine and every stored activation and gradient stay f32. Each
   *  output then differs from the f32 product by at most about
   *  2^-7 * sum_t |a_t| |b_t| (<= k * 2^-7 * max|a| * max|b| over the k terms)
   *  plus f32 rounding. On the avx512 kernel path the products run on AMX
   *  tiles where the process has them, else on non-Intel CPUs with
   *  AVX512-BF16 on vdpbf16ps over bf16 panels; elsewhere on the f32
   *  kernels with rounded operands (the same results up to f32 summation
   *  order, not faster). moe_runtime_get_info() (kernel_bf16) and
   *  moe_runtime_describe() say which. Any other value is
   *  MOE_ERR_UNSUPPORTED. */
  moe_dtype compute;
} moe_layer_config;

/** Fill `config` with defaults, writing `struct_size` bytes (hidden_size,
 *  moe_intermediate_size, num_experts and top_k are 0 and must be set).
 *  Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_layer_config_init(moe_layer_config *config, size_t struct_size);

/** The tensors of a layer. Shapes are row-major, as HF checkpoints store them.
 *  Names: "router", "gate", "up", "down", "shared-gate", "shared-up",
 *  "shared-down", "shared-expert-gate". */
typedef enum moe_weight {
  /** [E, H] router. */
  MOE_WEIGHT_ROUTER = 0,
  /** [E, F, H] gate projections (HF w1 / gate_proj). */
  MOE_WEIGHT_GATE = 1,
  /** [E, F, H] up projections (HF w3 / up_proj). */
  MOE_WEIGHT_UP = 2,
  /** [E, H, F] down projections (HF w2 / down_proj). */
  MOE_WEIGHT_DOWN = 3,
  /** [Fs, H], [Fs, H], [H, Fs]: the shared expert. */
  MOE_WEIGHT_SHARED_GATE = 4,
  MOE_WEIGHT_SHARED_UP = 5,
  MOE_WEIGHT_SHARED_DOWN = 6,
  /** [H] the shared expert's sigmoid gate vector. */
  MOE_WEIGHT_SHARED_EXPERT_GATE = 7
} moe_weight;

/** The `expert` argument of the weight functions meaning "every expert" (the
 *  whole tensor); otherwise an expert index 0..E-1 (routed expert weights). */
#define MOE_ALL_EXPERTS (-1)

/**
 * Create a layer on `runtime` with owned, zero weights placed on NUMA nodes
 * by the configured placement (each slice allocated on, and first touched by
 * the workers of, its node). The runtime must outlive the layer.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT,
 * MOE_ERR_UNSUPPORTED (storage or compute dtype), MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_layer_create(moe_layer **out, moe_runtime *runtime,
                            const moe_layer_config *config);

/**
 * Create a layer from MoE layer `layer_index` of an MoE checkpoint (an HF
 * Mixtral or Qwen2-MoE directory, as moe_upcycle() writes). Shape, routing
 * (Mixtral: renormalized; Qwen2-MoE: from norm_topk_prob) and the shared
 * expert come from the checkpoint. `overrides` may be NULL; if not, its
 * storage, compute, placement, capacity_factor, expert_choice, jitter, seed
 * and loss coefficients are used (its shape fields are ignored).
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (layer
 * index, or a dense layer), MOE_ERR_IO, MOE_ERR_FORMAT, MOE_ERR_UNSUPPORTED,
 * MOE_ERR_NOT_FOUND, MOE_ERR_SHAPE, MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_layer_load(moe_layer **out, moe_runtime *runtime,
                          const char *checkpoint_path, uint32_t layer_index,
                          const moe_layer_config *overrides);

/** Release a layer (never the memory it borrows). NULL is ignored. */
void moe_layer_free(moe_layer *layer);

/** The layer's configuration (out->struct_size set by the caller; placement
 *  is the one in effect). Returns MOE_OK, MOE_ERR_NULL_POINTER,
 *  MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_layer_get_config(moe_layer_config *out, const moe_layer *layer);

/** Number of floats of `weight`, or of one expert of it when `expert` is an
 *  index (MOE_ALL_EXPERTS = the whole tensor).
 *  Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_layer_weight_count(size_t *out, const moe_layer *layer,
                                  moe_weight weight, int64_t expert);

/**
 * Copy `count` floats from `data` into `weight` (every expert with
 * MOE_ALL_EXPERTS, else that expert), converting to the storage dtype (bf16
 * rounds to nearest even). `count` must equal moe_layer_weight_count().
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (also when
 * the experts are borrowed), MOE_ERR_SHAPE (count).
 */
moe_status moe_layer_set_weight(moe_layer *layer, moe_weight weight,
                                int64_t expert, const float *data, size_t count);

/** Copy `weight` (or one expert of it) as f32 into `out` by the output-buffer
 *  rule (`*needed` in floats). Returns MOE_OK, MOE_ERR_NULL_POINTER,
 *  MOE_ERR_INVALID_ARGUMENT, MOE_ERR_BUFFER_TOO_SMALL. */
moe_status moe_layer_get_weight(const moe_layer *layer, moe_weight weight,
                                int64_t expert, float *out, size_t capacity,
                                size_t *needed);

/**
 * Use caller memory for the routed experts' weights, without copying:
 * gate and up [E, F, H], down [E, H, F], all of `dtype` (MOE_DTYPE_F32 or
 * MOE_DTYPE_BF16). The caller keeps the memory alive and unchanged until the
 * layer is freed. Placement does not move borrowed memory. Router and shared
 * expert weights stay owned; the layer's own expert memory is released when
 * it has no shared expert.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_UNSUPPORTED (dtype).
 */
moe_status moe_layer_borrow_experts(moe_layer *layer, moe_dtype dtype,
                                    const void *gate, const void *up,
                                    const void *down);

/** Fill router and expert weights with Normal(0, std^2) draws, the same for
 *  a seed whatever the placement or thread count; the shared-expert gate
 *  vector is set to zero. Returns MOE_OK, MOE_ERR_NULL_POINTER,
 *  MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_layer_init_random(moe_layer *layer, uint64_t seed, float std);

/** moe_layer_forward() flags. */
#define MOE_FORWARD_SAVE 1u  /**< keep what moe_layer_backward() needs */
#define MOE_FORWARD_TRAIN 2u /**< training: apply router jitter */

/**
 * out[T, H] = MoE(x[T, H]) for `tokens` T (0..2^24) rows of width H.
 * `x` and `out` must not overlap. Routing statistics and losses are kept for
 * moe_layer_get_stats(). With MOE_FORWARD_SAVE the layer copies what
 * backward needs (x is not referenced after the call); a forward without it
 * uses separate buffers and leaves the saved state alone. With MOE_FORWARD_TRAIN
 * and a non-zero jitter, noise step n (see moe_layer_set_noise_step) is used
 * and the step advances. Results are bit-identical for the same inputs,
 * weights and worker count.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER (x or out with tokens > 0),
 * MOE_ERR_INVALID_ARGUMENT, MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_layer_forward(moe_layer *layer, const float *x, size_t tokens,
                             float *out, uint32_t flags);

/**
 * Backward of the last forward run with MOE_FORWARD_SAVE: given
 * grad_out = dL/d out [T, H], writes dL/dx into grad_x [T, H] and adds the
 * weight gradients (experts, router, shared expert) to the layer's gradient
 * buffers, including aux_loss_coef * d(balance loss) and
 * z_loss_coef * d(z-loss). Consumes the saved forward.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (no saved
 * forward), MOE_ERR_UNSUPPORTED (quantized expert storage),
 * MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_layer_backward(moe_layer *layer, const float *grad_out,
                              float *grad_x);

/** Copy the accumulated gradient of `weight` (or one expert of it) into
 *  `out` by the output-buffer rule (`*needed` in floats). Gradients start at
 *  zero. Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT,
 *  MOE_ERR_BUFFER_TOO_SMALL. */
moe_status moe_layer_get_grad(const moe_layer *layer, moe_weight weight,
                              int64_t expert, float *out, size_t capacity,
                              size_t *needed);

/** Set every gradient to zero. Returns MOE_OK, MOE_ERR_NULL_POINTER. */
moe_status moe_layer_zero_grad(moe_layer *layer);

/** Set the noise step the next training forward uses. Returns MOE_OK,
 *  MOE_ERR_NULL_POINTER. */
moe_status moe_layer_set_noise_step(moe_layer *layer, uint64_t step);

/** Statistics of the last forward. First version: 0.1.0 (all fields below). */
typedef struct moe_layer_stats {
  /** Set by the caller to sizeof(moe_layer_stats) before the call. */
  size_t struct_size;
  uint64_t tokens;
  /** Token-expert assignments computed (after capacity drops). */
  uint64_t assignments;
  /** Token choice: assignments dropped by capacity. */
  uint64_t dropped;
  /** Switch load-balancing loss E * sum_e f_e * P_e (1 = perfectly balanced)
   *  and router z-loss, without their coefficients. */
  double aux_loss;
  double z_loss;
  /** Bytes of owned expert memory, and how much of it is bound to a node. */
  uint64_t weight_bytes;
  uint64_t bound_bytes;
} moe_layer_stats;

/**
 * Fill `out` (out->struct_size set) with the last forward's statistics, and
 * `tokens_per_expert` with the tokens each routed expert computed, by the
 * output-buffer rule (`*needed` = E; NULL and 0 to fill `out` alone).
 * Nothing is written on error.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT,
 * MOE_ERR_BUFFER_TOO_SMALL.
 */
moe_status moe_layer_get_stats(moe_layer_stats *out, const moe_layer *layer,
                               uint64_t *tokens_per_expert, size_t capacity,
                               size_t *needed);

/**
 * The last forward's combine weights as a dense [T, E] matrix: entry (t, e)
 * is the weight of expert e's output in token t's result, 0 when e was not
 * chosen or was dropped. By the output-buffer rule (`*needed` = T * E floats).
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_BUFFER_TOO_SMALL.
 */
moe_status moe_layer_get_routing(const moe_layer *layer, float *out, size_t capacity,
                                 size_t *needed);

/* ------------------------------------------------------------------------ */
/* Models: load, tokenize, evaluate, generate                               */
/* ------------------------------------------------------------------------ */

/** A loaded decoder (dense or MoE) with its tokenizer and KV cache. Opaque. */
typedef struct moe_model moe_model;

/** How a model is loaded. First version: 0.1.0 (all fields below). */
/** How moe_model_load() loads. First version: 0.1.0 (fields up to max_context);
 *  0.6.0 appended upcycle. */
typedef struct moe_model_params {
  /** sizeof(moe_model_params); set by moe_model_params_init(). */
  size_t struct_size;
  /** Storage of matrix weights: MOE_DTYPE_DEFAULT (default) = the
   *  checkpoint's: bf16 when it stores bf16 or f16, GGML's Q8_0, Q4_0 and
   *  Q4_1 blocks of a GGUF kept quantized (a matrix whose parts mix quantized
   *  types as Q8_0), else f32; or MOE_DTYPE_F32, MOE_DTYPE_BF16, or
   *  MOE_DTYPE_Q8_0 / Q4_0 / Q4_1 (stored blocks of that type kept bit for
   *  bit, other matrices quantized at load). Quantized storage applies to the
   *  attention and dense FFN matrices, the embedding and the LM head whose
   *  width is a multiple of 32 (others stay f32), and to the MoE experts
   *  (the shared expert too) when the hidden size and the experts'
   *  intermediate sizes are multiples of 32 (else they are held in bf16);
   *  routers stay f32. Products with quantized weights quantize the activations to
   *  int8 per block of 32 for few tokens (integer dot products, as llama.cpp
   *  does) and dequantize blocks of weight rows to f32 for more. The KV
   *  cache follows the layers' storage: f32 with f32 layers; bf16 (rounded
   *  to nearest even) with bf16 or quantized ones, which halves what decode
   *  reads per position. A call of 16 or more tokens attends over its own
   *  tokens' keys and values in f32 and over earlier positions as cached;
   *  a shorter one (decode) reads every position from the cache. Training
   *  needs MOE_DTYPE_F32. */
  moe_dtype weight_dtype;
  /** Placement of MoE layers: MOE_PLACEMENT_DEFAULT (default: the
   *  runtime's) or a placement. */
  moe_placement placement;
  /** Longest sequence (prompt plus generated tokens, or an evaluation
   *  window), at most the model's context length; 0 (default) = the model's
   *  context length. */
  uint32_t max_context;
  /* ---- 0.6.0 ---- */
  /** Online upcycling: non-NULL = the checkpoint at `path` is a dense model,
   *  upcycled in memory with these parameters (every field moe_upcycle()
   *  reads that shapes the model: experts, method, ratio, layers, routing,
   *  format, dtype, seed, ...; force, max_shard_bytes, threads and progress
   *  do not apply) and loaded as the MoE model. The model equals upcycling
   *  to disk with moe_upcycle() and loading that directory, bit for bit;
   *  nothing is written. Default NULL. */
  const moe_upcycle_params *upcycle;
} moe_model_params;

/** Fill `params` with defaults, writing `struct_size` bytes. Returns MOE_OK,
 *  MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_model_params_init(moe_model_params *params, size_t struct_size);

/**
 * Load the model at `path`: an HF directory (Llama, Mistral, Qwen2 dense;
 * Mixtral or Qwen2-MoE with per-expert or fused gate_up_proj experts, as
 * moe_upcycle writes) or a .gguf file (llama, qwen2), with its byte-level BPE
 * tokenizer (tokenizer.json, or the GGUF metadata). `params` may be NULL.
 * The runtime must outlive the model.
 * On a runtime of one NUMA node, MoE experts that a safetensors file stores
 * one matrix per expert in the type the model holds them (f32, or bf16) are
 * read in place from the file's read-only mapping, not copied: they cost no
 * memory of the model's own, and processes that load the same file share
 * its pages in the page cache (with several nodes they are copied onto the
 * nodes the placement gives them). The file must then not be truncated or
 * rewritten in place while the model lives (replacing it by renaming a new
 * file over it, as this library's writers do, is safe). Training, or any
 * call that changes an expert, first copies that layer's experts into
 * memory of the model's own.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT, MOE_ERR_IO,
 * MOE_ERR_FORMAT, MOE_ERR_UNSUPPORTED, MOE_ERR_NOT_FOUND, MOE_ERR_SHAPE,
 * MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_model_load(moe_model **out, moe_runtime *runtime, const char *path,
                          const moe_model_params *params);

/** Release a model. NULL is ignored. */
void moe_model_free(moe_model *model);

/** A token id field's value when the tokenizer has no such token. */
#define MOE_NO_TOKEN (-1)

/** What a loaded model is. First version: 0.1.0 (all fields below). */
typedef struct moe_model_info {
  /** Set by the caller to sizeof(moe_model_info) before the call. */
  size_t struct_size;
  char architecture[32];
  uint32_t num_layers;
  uint32_t hidden_size;
  uint32_t vocab_size;
  /** Longest sequence this model object accepts. */
  uint32_t context_length;
  uint32_t num_moe_layers;
  uint32_t num_experts;
  uint32_t top_k;
  /** BOS and EOS token ids, MOE_NO_TOKEN when the tokenizer has none. */
  int32_t bos_token_id;
  int32_t eos_token_id;
  /** Storage of the decoder layers' matrices (MOE_DTYPE_F32, MOE_DTYPE_BF16,
   *  MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0 or MOE_DTYPE_Q4_1; the embedding and LM
   *  head of a quantized GGUF may be of another quantized type). */
  moe_dtype weight_dtype;
  /** Bytes of weights held, and read per decoded token (all dense matrices,
   *  the active experts of each MoE layer, the LM head, one embedding row). */
  uint64_t weight_bytes;
  uint64_t weight_bytes_per_token;
} moe_model_info;

/** Fill `out` (out->struct_size set by the caller). Returns MOE_OK,
 *  MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_model_get_info(moe_model_info *out, const moe_model *model);

/**
 * Tokenize UTF-8 `text` (`length` bytes, at most 1 GiB) with the model's
 * tokenizer. Special tokens written in the text (e.g. "<|im_start|>") become
 * their ids. With `add_special` non-zero, BOS is prepended when the tokenizer
 * asks for it. The ids go into `tokens` by the output-buffer rule (`*needed`
 * in ids).
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (invalid
 * UTF-8), MOE_ERR_UNSUPPORTED (no usable tokenizer), MOE_ERR_BUFFER_TOO_SMALL.
 */
moe_status moe_model_tokenize(const moe_model *model, const char *text, size_t length,
                              int32_t add_special, int32_t *tokens, size_t capacity,
                              size_t *needed);

/**
 * The text of `count` token ids, NUL-terminated, into `buffer` by the
 * output-buffer rule (`*needed` in bytes including the NUL). Bytes that are
 * not valid UTF-8 become U+FFFD. With `skip_special` non-zero, control tokens
 * (BOS, EOS, chat markers) are left out.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (an id
 * outside the vocabulary), MOE_ERR_UNSUPPORTED, MOE_ERR_BUFFER_TOO_SMALL.
 */
moe_status moe_model_detokenize(const moe_model *model, const int32_t *tokens, size_t count,
                                int32_t skip_special, char *buffer, size_t capacity,
                                size_t *needed);

/**
 * Logits [count, vocab_size] of `count` tokens run as a fresh sequence at
 * positions 0..count-1 (row t scores the token after tokens[0..t]), into
 * `logits` by the output-buffer rule (`*needed` = count * vocab_size floats;
 * asking computes nothing).
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (ids outside
 * the vocabulary, count 0 or above the context), MOE_ERR_BUFFER_TOO_SMALL,
 * MOE_ERR_NUMERIC (non-finite logits: the weights hold NaN or infinity),
 * MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_model_logits(moe_model *model, const int32_t *tokens, size_t count,
                            float *logits, size_t capacity, size_t *needed);

/** How moe_model_eval_text/_tokens evaluate. First version: 0.1.0 (fields
 *  up to user_data); 0.8.0 appended held_out. */
typedef struct moe_eval_params {
  /** sizeof(moe_eval_params); set by moe_eval_params_init(). */
  size_t struct_size;
  /** Tokens per window (2..context); windows do not overlap and each starts
   *  a fresh context. 0 (default) = 512, or the context length if shorter. */
  uint32_t seq_len;
  /** Evaluate at most this many tokens of the data (of the held-out part
   *  when held_out is set); 0 (default) = all. */
  uint64_t max_tokens;
  /** Progress in tokens (stage "eval"); return non-zero to cancel. */
  moe_progress_fn progress;
  void *user_data;
  /* ---- 0.8.0 ---- */
  /** In [0, 1): evaluate only the last floor(n * held_out) of the data's n
   *  tokens, the part a trainer made from the same data with eval_fraction
   *  = held_out holds out (text tokenized as the trainer does it). 0
   *  (default) = all the data. */
  double held_out;
} moe_eval_params;

/** Fill `params` with defaults, writing `struct_size` bytes. Returns MOE_OK,
 *  MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_eval_params_init(moe_eval_params *params, size_t struct_size);

/** What an evaluation measured. First version: 0.1.0 (all fields below). */
typedef struct moe_eval_result {
  /** Set by the caller to sizeof(moe_eval_result) before the call. */
  size_t struct_size;
  /** Tokens predicted (each window's first token is context only). */
  uint64_t tokens_scored;
  uint32_t windows;
  /** Mean cross-entropy in nats, and exp of it. */
  double mean_nll;
  double perplexity;
  double seconds;
  /** Tokens per second through the model (scored + context). */
  double tokens_per_second;
  /** MoE models: the mean Switch load-balancing loss E * sum_e f_e * P_e over
   *  layers and windows (1 = perfectly balanced); 0 for dense models.
   *  moe_model_router_stats() gives tokens per expert per layer. */
  double aux_loss;
} moe_eval_result;

/**
 * Perplexity of the model on UTF-8 `text` (`length` bytes, tokenized without
 * BOS; special-token text such as "<|im_start|>" is read as plain text) or,
 * with moe_model_eval_tokens, on token ids. `out` may be NULL (else its
 * struct_size set); `params` may be NULL.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (fewer than
 * 2 tokens to evaluate, bad seq_len or held_out, ids outside the vocabulary,
 * invalid UTF-8),
 * MOE_ERR_NUMERIC (a non-finite loss: the weights hold NaN or infinity),
 * MOE_ERR_CANCELLED, MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_model_eval_text(moe_eval_result *out, moe_model *model, const char *text,
                               size_t length, const moe_eval_params *params);
moe_status moe_model_eval_tokens(moe_eval_result *out, moe_model *model,
                                 const int32_t *tokens, size_t count,
                                 const moe_eval_params *params);

/**
 * Tokens per expert routed in layer `layer` since the last evaluation began
 * (generation adds to them too), into `tokens_per_expert` by the
 * output-buffer rule (`*needed` = E of that layer; 0 for a dense layer).
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (layer),
 * MOE_ERR_BUFFER_TOO_SMALL.
 */
moe_status moe_model_router_stats(const moe_model *model, uint32_t layer,
                                  uint64_t *tokens_per_expert, size_t capacity,
                                  size_t *needed);

/** Receives each generated token and the text it completes (UTF-8 held back
 *  until complete; may be empty). Return non-zero to stop. */
typedef int (*moe_token_fn)(int32_t token, const char *text, void *user_data);

/** How moe_model_generate samples. First version: 0.1.0 (all fields below). */
typedef struct moe_generate_params {
  /** sizeof(moe_generate_params); set by moe_generate_params_init(). */
  size_t struct_size;
  /** Default 64; generation also stops at the context length. */
  uint32_t max_new_tokens;
  /** 0 = greedy (default); otherwise logits are divided by it. */
  float temperature;
  /** Sample among the k most likely tokens; 0 (default) = off. */
  uint32_t top_k;
  /** Sample within the smallest set of probability >= top_p; 1 (default) = off. */
  float top_p;
  /** Same seed and settings give the same tokens. Default 0. */
  uint64_t seed;
  /** Non-zero: wrap the prompt in the model's (ChatML) chat template. */
  int32_t chat;
  /** Non-zero (default): prepend BOS when the tokenizer asks for it. */
  int32_t add_special;
  /** Optional streaming callback and its user data. */
  moe_token_fn on_token;
  void *user_data;
  /** Non-zero: keep going past the end-of-sequence token (benchmarks).
   *  Default 0. */
  int32_t ignore_eos;
} moe_generate_params;

/** Fill `params` with defaults, writing `struct_size` bytes. Returns MOE_OK,
 *  MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_generate_params_init(moe_generate_params *params, size_t struct_size);

/** Why generation stopped. Names: "length", "eos", "callback". */
typedef enum moe_stop_reason {
  /** max_new_tokens or the context length reached. */
  MOE_STOP_LENGTH = 0,
  /** The end-of-sequence token was generated. */
  MOE_STOP_EOS = 1,
  /** The token callback asked to stop. */
  MOE_STOP_CALLBACK = 2
} moe_stop_reason;

/** What a generation did. First version: 0.1.0 (all fields below). */
typedef struct moe_generate_result {
  /** Set by the caller to sizeof(moe_generate_result) before the call. */
  size_t struct_size;
  uint64_t prompt_tokens;
  uint64_t generated_tokens;
  double prompt_seconds;
  double decode_seconds;
  /** Generated tokens per second (decode only). */
  double tokens_per_second;
  moe_stop_reason stop_reason;
} moe_generate_result;

/**
 * Generate after `prompt` with a KV cache. `out` may be NULL (else its
 * struct_size set); `params` may be NULL. The generated text (without the
 * prompt; it equals the pieces passed to `on_token`, an unfinished UTF-8
 * sequence at the very end left out of both) goes NUL-terminated into `text`
 * by the output-buffer rule, except that generation runs in any case: with
 * `text` NULL only `*needed` is set; when `capacity` is too small the call
 * returns MOE_ERR_BUFFER_TOO_SMALL after generating, with `out` and `*needed`
 * filled and nothing written into `text`. A model that generates the byte 0
 * (a byte-level token) puts it in the text as it is: `*needed` counts every
 * byte, so a host that must see such text whole reads `*needed - 1` bytes.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (empty
 * prompt, prompt at or beyond the context, bad sampling settings),
 * MOE_ERR_UNSUPPORTED (chat without a ChatML template), MOE_ERR_NUMERIC
 * (non-finite logits: the weights hold NaN or infinity),
 * MOE_ERR_BUFFER_TOO_SMALL, MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_model_generate(moe_generate_result *out, moe_model *model, const char *prompt,
                              const moe_generate_params *params, char *text,
                              size_t capacity, size_t *needed);

/* ------------------------------------------------------------------------ */
/* Training: continued pretraining of dense and MoE models                  */
/* ------------------------------------------------------------------------ */

/** Trains a loaded model in place. Opaque; one thread at a time. */
typedef struct moe_trainer moe_trainer;

/** Which parameters are trained. Names: "all", "moe", "routers". */
typedef enum moe_train_only {
  MOE_TRAIN_ALL = 0,
  /** MoE layers only (routers and experts). */
  MOE_TRAIN_MOE = 1,
  /** Routers only. */
  MOE_TRAIN_ROUTERS = 2
} moe_train_only;

/** Learning-rate schedule. Names: "cosine", "constant". */
typedef enum moe_lr_schedule {
  /** Linear warmup, then cosine from lr to min_lr at the last step. */
  MOE_LR_COSINE = 0,
  /** Linear warmup, then lr. */
  MOE_LR_CONSTANT = 1
} moe_lr_schedule;

/** What a training step does when its loss or gradient norm is NaN or
 *  infinite. Names: "error", "skip". */
typedef enum moe_nonfinite {
  /** moe_trainer_step() returns MOE_ERR_NUMERIC naming the loss or the first
   *  tensor whose gradient is not finite; weights and optimizer state are
   *  left as they were before the step, and the step is not counted. */
  MOE_NONFINITE_ERROR = 0,
  /** The step is skipped: no weight or optimizer update, the step counter
   *  and the schedule advance, and moe_train_stats.skipped is 1. */
  MOE_NONFINITE_SKIP = 1
} moe_nonfinite;

/** How a trainer trains. First version: 0.1.0 (fields up to eval_windows);
 *  0.2.0 appended on_nonfinite; 0.4.0 appended micro_batch and recompute;
 *  0.5.0 appended precision. */
typedef struct moe_trainer_params {
  /** sizeof(moe_trainer_params); set by moe_trainer_params_init(). */
  size_t struct_size;
  /** Tokens predicted per sequence, 1..the model's context (and the
   *  activations of one sequence must fit in memory). Default 256. */
  uint32_t seq_len;
  /** Sequences per step; gradients are accumulated over them. At least 1;
   *  batch * seq_len at most 2^20 tokens per step (a larger step would take
   *  hours). Default 4. */
  uint32_t batch;
  /** Total steps (for the schedule), 1..2^24 (AdamW's bias correction counts
   *  steps in f32). Default 100. */
  uint32_t steps;
  /** Warmup steps, at most `steps`. Default 0. */
  uint32_t warmup;
  /** Peak and final learning rate: lr in [0, 1], min_lr in [0, lr] (cosine).
   *  Defaults 2e-4 and 2e-5 (Drop-Upcycling). */
  float lr;
  float min_lr;
  moe_lr_schedule schedule;
  /** AdamW: beta1 and beta2 in [0, 1), eps in (0, 1] (0 divides by zero
   *  where gradients were 0), weight decay in [0, 1] with lr * weight_decay
   *  < 1. Defaults 0.9, 0.95, 1e-8, weight decay 0.1 (matrices only, not
   *  norms or biases). */
  float beta1;
  float beta2;
  float eps;
  float weight_decay;
  /** Global gradient-norm clip, finite; 0 = off. Default 1. */
  float clip;
  /** Switch load-balancing and router z-loss coefficients of MoE layers, in
   *  [0, 1]. Defaults 0.02 and 0.001. */
  float aux_loss_coef;
  float z_loss_coef;
  /** Default MOE_TRAIN_ALL. */
  moe_train_only train_only;
  /** Seeds the order of training windows. Default 0. */
  uint64_t seed;
  /** Fraction of the data, at its end, held out for evaluation, in [0, 1).
   *  Default 0.05. */
  double eval_fraction;
  /** Held-out windows per evaluation, at most; 1..65536. Default 8. */
  uint32_t eval_windows;
  /** Not used; keeps the fields below outside the 0.1.0 struct. */
  uint32_t reserved0;
  /* ---- 0.2.0 ---- */
  /** Default MOE_NONFINITE_ERROR. */
  moe_nonfinite on_nonfinite;
  /* ---- 0.4.0 ---- */
  /** Sequences per forward/backward pass, 0..batch; 0 (default) = the whole
   *  batch in one pass. Every projection and MoE layer sees all of a pass's
   *  tokens at once; a smaller micro-batch bounds the activations' memory
   *  (the passes' gradients add up to the batch's; the MoE balance and
   *  z-losses are computed per pass). */
  uint32_t micro_batch;
  /** Nonzero: keep only each decoder block's input in the forward and
   *  recompute the block during backward (less memory, about a third more
   *  time). Default 0. */
  int32_t recompute;
  /* ---- 0.5.0 ---- */
  /** Precision of the weight products (attention projections, dense and
   *  expert FFNs, LM head) forward and backward: MOE_DTYPE_F32 (default) or
   *  MOE_DTYPE_BF16, mixed precision: operands rounded to bf16, products
   *  summed in f32, where bf16 compute runs (moe_runtime_info.kernel_bf16;
   *  the fallback is the same arithmetic at f32 speed). Weights,
   *  gradients and AdamW state stay f32; attention scores, softmax, norms
   *  and the loss stay f32; held-out evaluation runs in f32 on the (f32)
   *  weights.
   *  Returns MOE_ERR_UNSUPPORTED for any other dtype. */
  moe_dtype precision;
} moe_trainer_params;

/** Fill `params` with defaults, writing `struct_size` bytes. Returns MOE_OK,
 *  MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT. */
moe_status moe_trainer_params_init(moe_trainer_params *params, size_t struct_size);

/**
 * Create a trainer for `model` (which must be loaded with f32 weights) over
 * `count` token ids (copied). Windows of seq_len + 1 tokens are drawn at
 * positions that depend only on (seed, step, index), so a resumed run reads
 * the same data. The model stays usable for evaluation and generation
 * between steps and must outlive the trainer.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (settings
 * out of their ranges, too little data, ids outside the vocabulary),
 * MOE_ERR_UNSUPPORTED (bf16 weights, or params fields this library does not
 * know), MOE_ERR_OUT_OF_MEMORY.
 */
moe_status moe_trainer_create(moe_trainer **out, moe_model *model, const int32_t *tokens,
                              size_t count, const moe_trainer_params *params);

/** As moe_trainer_create, over UTF-8 `text` tokenized with the model's
 *  tokenizer (no BOS, special-token text read as plain text). */
moe_status moe_trainer_create_text(moe_trainer **out, moe_model *model, const char *text,
                                   size_t length, const moe_trainer_params *params);

/** Release a trainer (not the model). NULL is ignored. */
void moe_trainer_free(moe_trainer *trainer);

/** What a training step did. First version: 0.1.0 (fields up to
 *  max_expert_load); 0.2.0 appended skipped; 0.4.0 appended model_flops and
 *  activation_bytes. */
typedef struct moe_train_stats {
  /** Set by the caller to sizeof(moe_train_stats) before the call. */
  size_t struct_size;
  /** Steps done, this one included. */
  uint64_t step;
  /** Mean cross-entropy of the step's tokens. */
  double loss;
  /** MoE models: mean Switch load-balancing loss and z-loss of the step
   *  (0 if dense). */
  double aux_loss;
  double z_loss;
  double lr;
  /** Global gradient norm before clipping. */
  double grad_norm;
  uint64_t tokens;
  double seconds;
  double tokens_per_second;
  /** Busiest expert's tokens relative to an even share, worst MoE layer. */
  double max_expert_load;
  /* ---- 0.2.0 ---- */
  /** 1 when the step was skipped (MOE_NONFINITE_SKIP and a non-finite loss
   *  or gradient norm): weights and optimizer state did not change. */
  int32_t skipped;
  /* ---- 0.4.0 ---- */
  /** Model FLOPs of the step (forward and backward, the optimizer not
   *  counted), by the PaLM convention: tokens x (6 x the weights a token
   *  multiplies + 12 x layers x heads x head_dim x seq_len). The weights a
   *  token multiplies are the attention projections, the dense FFN or the
   *  router, top_k experts and the shared expert (with its gate), and the LM
   *  head; not the embedding. The attention term counts the full
   *  seq_len x seq_len square. Frozen weights (train_only) still count.
   *  Divide by seconds for achieved FLOP/s, and by a measured peak
   *  (moe_runtime_measure_peak) for model FLOPs utilization. */
  double model_flops;
  /** Bytes of activations and work buffers the trainer's forward/backward
   *  passes hold so far (the most any step needed: weights, gradients and
   *  optimizer state not included). micro_batch and recompute lower it. */
  uint64_t activation_bytes;
} moe_train_stats;

/** One optimizer step. `out` may be NULL (else its struct_size set).
 *  Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT,
 *  MOE_ERR_NUMERIC (non-finite loss or gradient, with MOE_NONFINITE_ERROR),
 *  MOE_ERR_OUT_OF_MEMORY. */
moe_status moe_trainer_step(moe_train_stats *out, moe_trainer *trainer);

/** Mean cross-entropy on the held-out windows, into `*mean_nll`.
 *  Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (no
 *  held-out data), MOE_ERR_NUMERIC. */
moe_status moe_trainer_eval(double *mean_nll, moe_trainer *trainer);

/** Steps done so far. Returns MOE_OK, MOE_ERR_NULL_POINTER. */
moe_status moe_trainer_get_step(uint64_t *out, const moe_trainer *trainer);

/**
 * Write a checkpoint directory: the model in HF format (loadable by
 * moe_model_load and transformers), plus trainer.json (step, settings) and
 * optimizer.safetensors (AdamW moments), written to a temporary name and
 * renamed into place as moe_upcycle() does (stale temporaries of the same
 * path left by dead processes are removed first). An existing directory is
 * replaced only with `force`. Weights that are not finite are refused before
 * anything is written.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT,
 * MOE_ERR_EXISTS, MOE_ERR_IO, MOE_ERR_NUMERIC.
 */
moe_status moe_trainer_save(moe_trainer *trainer, const char *path, int32_t force);

/**
 * Continue from a checkpoint written by moe_trainer_save: restores the step
 * and optimizer moments. The trainer's model must have been loaded from the
 * same directory and the data and settings must be the same; the run then
 * continues exactly (bit-identical weights for the same thread count).
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (settings
 * differ), MOE_ERR_IO, MOE_ERR_FORMAT, MOE_ERR_NOT_FOUND.
 */
moe_status moe_trainer_resume(moe_trainer *trainer, const char *path);

/* ------------------------------------------------------------------------ */
/* Names: the one table of every enum's names                               */
/* ------------------------------------------------------------------------ */
/* Scaling laws                                                             */
/* ------------------------------------------------------------------------ */

/** The form of a scaling law of held-out loss L (nats) in training tokens
 *  D, D1, D2 and parameters N (raw counts, not billions; ln = natural log).
 *  Names: "data", "data-params", "upcycle", "upcycle-params". */
typedef enum moe_law_form {
  /** L = E + A D^-alpha (one model size). */
  MOE_LAW_DATA = 0,
  /** L = E + A D^-alpha + B N^-beta. */
  MOE_LAW_DATA_PARAMS = 1,
  /** L = E + A D1^-alpha D2^(-alpha2 + alpha3 ln D1): D1 the tokens the dense
   *  model was trained on, D2 those of the upcycled model (one model size). */
  MOE_LAW_UPCYCLE = 2,
  /** The upcycle form + B N^-beta, N the dense model's parameters. */
  MOE_LAW_UPCYCLE_PARAMS = 3
} moe_law_form;

/** A law: its form and coefficients (those the form does not have are 0).
 *  Filled by moe_scaling_law_preset() and moe_scaling_fit(); read by
 *  moe_scaling_law_predict() and moe_scaling_plan() (struct_size set).
 *  First version: 0.6.0 (all fields below). */
typedef struct moe_scaling_law {
  size_t struct_size;
  moe_law_form form;
  /** Irreducible loss E, scale A and the exponent of D (or D1). */
  double e;
  double a;
  double alpha;
  /** Upcycle forms: the exponent of D2 and the interaction with ln D1. */
  double alpha2;
  double alpha3;
  /** Params forms: scale B and exponent beta of N. */
  double b;
  double beta;
} moe_scaling_law;

/**
 * A published law by name: "liew2025-dense", "liew2025-moe" (an MoE of 8
 * experts, top-2, trained from scratch, fitted in the dense seed's
 * parameters) and "liew2025-upcycled" (upcycled from that dense model):
 * Table 2 of Liew, Kato and Takase (2025), with E = 0.165 shared
 * (docs/scaling.md says what of the paper's forms is inferred).
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (an unknown
 * name; the message lists the presets).
 */
moe_status moe_scaling_law_preset(moe_scaling_law *out, const char *name);

/**
 * losses[i] = the law's loss at tokens[i] (D, or D2 for upcycle forms),
 * dense_tokens[i] (D1; upcycle forms, else may be NULL) and parameters[i] (N;
 * params forms, else may be NULL), for i < count. Counts must be positive
 * and finite. Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT.
 */
moe_status moe_scaling_law_predict(const moe_scaling_law *law, const double *tokens,
                                   const double *dense_tokens, const double *parameters,
                                   size_t count, double *losses);

/** How moe_scaling_fit() fits. First version: 0.6.0 (all fields below). */
typedef struct moe_fit_params {
  /** sizeof(moe_fit_params); set by moe_fit_params_init(). */
  size_t struct_size;
  /** The form fitted. Default MOE_LAW_DATA. */
  moe_law_form form;
  /** Huber threshold on log predicted - log observed loss. Default 1e-3. */
  double huber_delta;
  /** Bootstrap resamples of the points for the intervals, 0..100000.
   *  Default 0 (no intervals). */
  uint32_t bootstrap;
  /** Seed of the resampling. Default 0. */
  uint64_t seed;
  /** L-BFGS iterations per starting point, 1..1000000. Default 500. */
  uint32_t max_iterations;
} moe_fit_params;

/** Fill `params` with defaults (see moe_upcycle_params_init). */
moe_status moe_fit_params_init(moe_fit_params *params, size_t struct_size);

/**
 * Fit a law of params->form to `count` observed losses (points as in
 * moe_scaling_law_predict): minimizes the mean Huber loss of log predicted -
 * log observed with L-BFGS from every point of a grid of starting values
 * (E, A, B through their logarithms) and keeps the best. With
 * params->bootstrap > 0, the points are resampled (seeded) and refitted from
 * the best optima; `low` and `high` (each may be NULL) receive the 2.5th and
 * 97.5th percentiles of each coefficient. Needs more points than the form has
 * coefficients (3, 5 with params, 5 for upcycle, 7 for upcycle-params).
 * Deterministic for a seed.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (too few
 * points, a non-positive or non-finite count or loss, intervals asked for
 * without bootstrap, no finite fit).
 */
moe_status moe_scaling_fit(moe_scaling_law *law, moe_scaling_law *low, moe_scaling_law *high,
                           const double *tokens, const double *dense_tokens,
                           const double *parameters, const double *losses, size_t count,
                           const moe_fit_params *params);

/** How moe_study_run() runs. First version: 0.6.0 (all fields below). */
typedef struct moe_study_params {
  /** sizeof(moe_study_params); set by moe_study_params_init(). */
  size_t struct_size;
  /** Worker threads, 0 = one per core. Default 0. */
  uint32_t threads;
  /** The model whose tokenizer the study uses, replacing the recipe's
   *  "tokenizer" (NULL = the recipe's). Default NULL. */
  const char *tokenizer;
  /** A text file or a directory of them, replacing the recipe's "data"
   *  (NULL = the recipe's). Default NULL. */
  const char *data;
  /** Called before every training step: done = steps of the current run so
   *  far, total = its steps, stage = the run's name. Returning non-zero
   *  stops the study (the run's last checkpoint is kept; running again
   *  resumes it). Default NULL. */
  moe_progress_fn progress;
  void *user_data;
} moe_study_params;

/** Fill `params` with defaults (see moe_upcycle_params_init). */
moe_status moe_study_params_init(moe_study_params *params, size_t struct_size);

/**
 * Run the upcycling study the recipe at `recipe_path` describes
 * (docs/scaling.md) in the directory `out_dir` (created if missing): pretrain
 * a dense model from scratch with snapshots at each D1, upcycle each snapshot
 * in memory with each method and train it for the D2 grid, and the
 * baselines (the dense model continued; the same MoE from scratch), every
 * run evaluating the same held-out split. Runs finished in `out_dir` are not
 * run again and an interrupted run resumes from its last checkpoint, with
 * the same results; out_dir/study.json records the recipe and the data, and
 * a directory holding another recipe's or other data's runs is refused.
 * Writes out_dir/report.json, report.md and a law file per method
 * (laws-METHOD.json).
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT,
 * MOE_ERR_FORMAT (the recipe), MOE_ERR_NOT_FOUND, MOE_ERR_IO,
 * MOE_ERR_EXISTS, MOE_ERR_CANCELLED, and the statuses of loading and
 * training.
 */
moe_status moe_study_run(const char *recipe_path, const char *out_dir, const moe_study_params *params);

/** moe_plan_result.best */
#define MOE_PLAN_UPCYCLE 0
#define MOE_PLAN_SCRATCH 1
#define MOE_PLAN_DENSE 2

/** The planner's question. First version: 0.6.0 (all fields below). */
typedef struct moe_plan_params {
  /** sizeof(moe_plan_params); set by moe_plan_params_init(). */
  size_t struct_size;
  /** D1: tokens the dense model was trained on (required). */
  double dense_tokens;
  /** Budget in tokens: each option trains this many more. 0 = use budget_flops. */
  double budget_tokens;
  /** Budget in training FLOPs, 6 N per token (N: the dense parameters for
   *  the dense model, active_parameters for the MoE options). */
  double budget_flops;
  /** N1: the dense model's parameters (required). */
  double dense_parameters;
  /** Parameters an MoE token runs through (required with budget_flops). */
  double active_parameters;
  /** A law file (JSON: "dense", "moe" and "upcycled" laws and optional
   *  "bootstrap" sets, docs/scaling.md); NULL = the liew2025 presets. */
  const char *law_file;
  /** Each non-NULL law replaces that law of the file (or preset); the file's
   *  bootstrap sets are then not used. Default NULL. */
  const moe_scaling_law *dense_law;
  const moe_scaling_law *moe_law;
  const moe_scaling_law *upcycled_law;
} moe_plan_params;

/** Fill `params` with defaults (see moe_upcycle_params_init). */
moe_status moe_plan_params_init(moe_plan_params *params, size_t struct_size);

/** The planner's answer. First version: 0.6.0 (all fields below). Intervals
 *  (2.5th and 97.5th percentiles over the law file's bootstrap sets) are NaN
 *  without bootstrap sets. */
typedef struct moe_plan_result {
  /** Set by the caller to sizeof(moe_plan_result) before the call. */
  size_t struct_size;
  /** The option of lowest predicted loss, the dense model's pretraining being
   *  already paid for: MOE_PLAN_UPCYCLE, MOE_PLAN_SCRATCH (the same MoE trained
   *  from scratch on the budget) or MOE_PLAN_DENSE (the dense model trained
   *  further). */
  int32_t best;
  /** Bootstrap sets behind the intervals. */
  uint32_t bootstrap;
  /** Each option's training tokens and predicted loss with its interval. */
  double upcycled_tokens;
  double upcycled_loss;
  double upcycled_loss_low;
  double upcycled_loss_high;
  double scratch_tokens;
  double scratch_loss;
  double scratch_loss_low;
  double scratch_loss_high;
  /** The same MoE from scratch given the dense model's pretraining as well:
   *  D1 + the budget's tokens (FLOPs budgets: 6 N1 D1 + the budget). */
  double scratch_all_tokens;
  double scratch_all_loss;
  double scratch_all_loss_low;
  double scratch_all_loss_high;
  double dense_tokens;
  double dense_loss;
  double dense_loss_low;
  double dense_loss_high;
  /** The D2 beyond which the MoE trained from scratch is no worse than the
   *  upcycled one: 0 when upcycling is not ahead even at 1e3 tokens,
   *  infinity when it stays ahead up to 1e18. */
  double break_even_tokens;
  double break_even_low;
  double break_even_high;
  /** The upcycled law's exponent of D2 at this D1: alpha2 - alpha3 ln D1. */
  double d2_exponent;
} moe_plan_result;

/**
 * Upcycle, train the MoE from scratch, or train the dense model further?
 * Predicts each option's loss with the laws for the budget, says which is
 * lowest and where upcycling stops paying. Returns MOE_OK,
 * MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT, MOE_ERR_NOT_FOUND /
 * MOE_ERR_IO / MOE_ERR_FORMAT (the law file).
 */
moe_status moe_scaling_plan(moe_plan_result *out, const moe_plan_params *params);

/* ------------------------------------------------------------------------ */

/*
 * moe_<enum>_name(value) returns the canonical name of an enum value (the
 * names listed at each enum, e.g. "drop", "softmax-topk-renorm", "qwen2-moe")
 * as static text, or NULL when `value` is not a defined value; the values of
 * each enum run from 0 without gaps (plus DEFAULT = -1 where it exists), so
 * looping from 0 until NULL lists every name.
 * moe_<enum>_from_name(&out, name) accepts a canonical name, ignoring case and
 * treating '_' as '-' (for dtypes, "keep" and "auto" also mean DEFAULT).
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (an unknown
 * name; the message lists the valid ones).
 */
const char *moe_dtype_name(moe_dtype value);
moe_status moe_dtype_from_name(moe_dtype *out, const char *name);
const char *moe_method_name(moe_method value);
moe_status moe_method_from_name(moe_method *out, const char *name);
const char *moe_router_init_name(moe_router_init value);
moe_status moe_router_init_from_name(moe_router_init *out, const char *name);
const char *moe_routing_name(moe_routing value);
moe_status moe_routing_from_name(moe_routing *out, const char *name);
const char *moe_format_name(moe_format value);
moe_status moe_format_from_name(moe_format *out, const char *name);
const char *moe_partition_select_name(moe_partition_select value);
moe_status moe_partition_select_from_name(moe_partition_select *out, const char *name);
const char *moe_granular_scaling_name(moe_granular_scaling value);
moe_status moe_granular_scaling_from_name(moe_granular_scaling *out, const char *name);
const char *moe_importance_name(moe_importance value);
moe_status moe_importance_from_name(moe_importance *out, const char *name);
const char *moe_drop_select_name(moe_drop_select value);
moe_status moe_drop_select_from_name(moe_drop_select *out, const char *name);
const char *moe_placement_name(moe_placement value);
moe_status moe_placement_from_name(moe_placement *out, const char *name);
const char *moe_text_format_name(moe_text_format value);
moe_status moe_text_format_from_name(moe_text_format *out, const char *name);
const char *moe_weight_name(moe_weight value);
moe_status moe_weight_from_name(moe_weight *out, const char *name);
const char *moe_stop_reason_name(moe_stop_reason value);
moe_status moe_stop_reason_from_name(moe_stop_reason *out, const char *name);
const char *moe_train_only_name(moe_train_only value);
moe_status moe_train_only_from_name(moe_train_only *out, const char *name);
const char *moe_lr_schedule_name(moe_lr_schedule value);
moe_status moe_lr_schedule_from_name(moe_lr_schedule *out, const char *name);
const char *moe_nonfinite_name(moe_nonfinite value);
moe_status moe_nonfinite_from_name(moe_nonfinite *out, const char *name);
const char *moe_law_form_name(moe_law_form value);
moe_status moe_law_form_from_name(moe_law_form *out, const char *name);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MOEUPCYCLE_H */
