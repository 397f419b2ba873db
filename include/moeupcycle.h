/*
 * moeupcycle.h — the public C interface of libmoeupcycle.
 *
 * libmoeupcycle turns dense transformer checkpoints (HF safetensors or GGUF,
 * Llama / Mistral / Qwen2 family) into Mixture-of-Experts checkpoints
 * ("upcycling") in the HF Mixtral or Qwen2-MoE format.
 *
 * This header is the contract. Every function documents what it does, who owns
 * what, what may be NULL, and which status codes it returns.
 *
 * Conventions
 *  - Every fallible call returns a moe_status: MOE_OK (0) or a negative error.
 *    On error, moe_last_error() returns a message naming what was wrong.
 *  - Outputs come first and are named `out`.
 *  - Parameter structs are passed by pointer, start with `struct_size`, and have
 *    an `_init` function filling defaults. Always call the `_init` function
 *    first; fields may be appended in later versions, never reordered.
 *  - Enum values and status codes are frozen: never renumbered or reused.
 *  - Strings are UTF-8, NUL-terminated. Paths are file-system paths.
 *
 * Threading
 *  - All functions may be called from several threads at once. The error
 *    message returned by moe_last_error() is per thread.
 *  - moe_upcycle() writes on the calling thread and, unless
 *    `params->threads` is 1, starts one short-lived background thread that
 *    builds the next tensor while the previous one is written; it ends before
 *    moe_upcycle() returns. It does not call OpenBLAS.
 *  - Progress callbacks run on the thread that called moe_upcycle().
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
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0
/** MAJOR * 10000 + MINOR * 100 + PATCH. */
#define MOE_VERSION_NUMBER \
  (MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH)
#define MOE_VERSION_STRING "0.1.0"

/** The library's MOE_VERSION_NUMBER, to compare with the header's at run time. */
uint32_t moe_version_number(void);

/** The library's version as static text, e.g. "0.1.0". Never NULL. */
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
  /** Reading or writing a file failed (missing file, permission, disk full). */
  MOE_ERR_IO = -3,
  /** A file is malformed: truncated, corrupt, or violates its format. */
  MOE_ERR_FORMAT = -4,
  /** Well-formed but not supported (architecture, dtype, layout). */
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
  MOE_ERR_INTERNAL = -12
} moe_status;

/** Static text describing `status` (e.g. "invalid argument"). Never NULL. */
const char *moe_status_string(moe_status status);

/**
 * The message of the last error on the calling thread: what was wrong, with
 * which argument or file. Empty text if no error happened yet. Never NULL.
 * The pointer stays valid until the next call into the library on this thread.
 */
const char *moe_last_error(void);

/* ------------------------------------------------------------------------ */
/* Common enums (append-only)                                               */
/* ------------------------------------------------------------------------ */

/** Storage type of tensors. */
typedef enum moe_dtype {
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

/** What moe_checkpoint_inspect() reports about a dense or MoE checkpoint. */
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
 * `out->struct_size` must be set to sizeof(moe_checkpoint_info).
 * Files are memory-mapped and validated; no tensor data is read.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT (struct_size),
 * MOE_ERR_IO, MOE_ERR_FORMAT, MOE_ERR_UNSUPPORTED, MOE_ERR_NOT_FOUND, MOE_ERR_SHAPE.
 */
moe_status moe_checkpoint_inspect(moe_checkpoint_info *out, const char *path);

/* ------------------------------------------------------------------------ */
/* Upcycling: dense checkpoint -> MoE checkpoint                            */
/* ------------------------------------------------------------------------ */

/** How experts are made from the dense FFN (see docs/methods). */
typedef enum moe_upcycle_method {
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
} moe_upcycle_method;

typedef enum moe_router_init {
  /** Normal(0, router_std). */
  MOE_ROUTER_INIT_NORMAL = 0,
  /** Uniform with standard deviation router_std (Drop-Upcycling's init). */
  MOE_ROUTER_INIT_UNIFORM = 1,
  MOE_ROUTER_INIT_ZEROS = 2
} moe_router_init;

/** Routing recorded in the output config (the flavour the model is run with). */
typedef enum moe_routing {
  /** Softmax over all experts, top-k, renormalize the k weights (Mixtral). */
  MOE_ROUTING_SOFTMAX_TOPK_RENORM = 0,
  /** Softmax over all experts, top-k, weights not renormalized. */
  MOE_ROUTING_SOFTMAX_TOPK = 1,
  /** Top-k of the logits, softmax over the k chosen. */
  MOE_ROUTING_TOPK_SOFTMAX = 2
} moe_routing;

typedef enum moe_output_format {
  /** HF MixtralForCausalLM, legacy per-expert tensor names. */
  MOE_FORMAT_MIXTRAL = 0,
  /** HF Qwen2MoeForCausalLM (always has a shared expert). */
  MOE_FORMAT_QWEN2_MOE = 1
} moe_output_format;

typedef enum moe_output_dtype {
  /** The source tensor's dtype (F32/F16/BF16); quantized sources give F32. */
  MOE_OUTPUT_DTYPE_KEEP = 0,
  MOE_OUTPUT_DTYPE_F32 = 1,
  MOE_OUTPUT_DTYPE_BF16 = 2,
  MOE_OUTPUT_DTYPE_F16 = 3
} moe_output_dtype;

/** How `partition` chooses each expert's neurons. */
typedef enum moe_partition_select {
  MOE_PARTITION_RANDOM = 0,
  /** Evenly spaced neurons (disjoint: strided, neuron i to expert i mod E). */
  MOE_PARTITION_UNIFORM = 1,
  /** Sampled in proportion to the neuron's weight norm
   *  (disjoint: neurons ranked by norm and dealt round-robin). */
  MOE_PARTITION_IMPORTANCE = 2
} moe_partition_select;

/** How `granular` compensates the output scale. */
typedef enum moe_granular_scaling {
  /** The whole scale on down_proj: exactly function-preserving when top_k is
   *  a multiple of the granularity and routing renormalizes. */
  MOE_GRANULAR_SCALE_DOWN = 0,
  /** scale^(1/3) on each of gate, up and down (the NVIDIA paper's choice). */
  MOE_GRANULAR_SCALE_CUBE_ROOT = 1,
  MOE_GRANULAR_SCALE_NONE = 2
} moe_granular_scaling;

typedef struct moe_upcycle_params {
  /** sizeof(moe_upcycle_params); set by moe_upcycle_params_init(). */
  size_t struct_size;
  /** Number of routed experts E, 1..1024. Default 8. */
  uint32_t num_experts;
  /** Experts per token k, 1..E. Default 2. */
  uint32_t top_k;
  /** Default MOE_METHOD_COPY. */
  moe_upcycle_method method;
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
  /** partition: non-zero = scale down_proj by I / (k * I/G). Default 1. */
  int32_t partition_scale;
  /** Which layers become MoE: NULL or "all", "every:N" (layers i with
   *  (i+1) % N == 0), or a list "0,2,5-7". Default NULL (all). */
  const char *layers;
  /** Default MOE_ROUTER_INIT_NORMAL. */
  moe_router_init router_init;
  /** Default 0.02. */
  double router_std;
  /** Non-zero: add a shared expert (a copy of the dense FFN) with a zero
   *  sigmoid gate; routed experts' down_proj are halved so the output starts
   *  equal to the dense FFN's for `copy`. Forced on for Qwen2-MoE. */
  int32_t shared_expert;
  /** Default MOE_ROUTING_SOFTMAX_TOPK_RENORM (Mixtral supports only that). */
  moe_routing routing;
  /** Default MOE_FORMAT_MIXTRAL. */
  moe_output_format format;
  /** Default MOE_OUTPUT_DTYPE_KEEP. */
  moe_output_dtype dtype;
  /** Same seed and parameters give byte-identical output. Default 0. */
  uint64_t seed;
  /** Non-zero: replace an existing output directory. Default 0. */
  int32_t force;
  /** Shard size limit of the output safetensors files. Default 4 GiB. */
  uint64_t max_shard_bytes;
  /** 1 = build and write tensors on the calling thread; 0 or more = build the
   *  next tensor on a background thread while writing. Output does not depend
   *  on it. Default 0. */
  uint32_t threads;
  /** Recorded in the config as router_aux_loss_coef. Default 0.02. */
  double router_aux_loss_coef;
  /** Optional progress callback (NULL = none) and its user data. */
  moe_progress_fn progress;
  void *user_data;
} moe_upcycle_params;

/** Fill `params` with defaults (including struct_size). NULL is ignored. */
void moe_upcycle_params_init(moe_upcycle_params *params);

/** What moe_upcycle() reports. */
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
} moe_upcycle_result;

/**
 * Upcycle the dense checkpoint at `input_path` (HF directory or .gguf file)
 * into an MoE checkpoint directory at `output_path`.
 *
 * The output is written into a temporary directory beside `output_path` and
 * renamed into place at the end; on any error nothing is left behind. An
 * existing `output_path` is refused with MOE_ERR_EXISTS unless `params->force`.
 * The input is never modified. Memory use grows with the largest layer, not
 * with the model.
 *
 * `out` may be NULL; if not, out->struct_size must be set. `params` may be
 * NULL for all defaults.
 * Returns MOE_OK, MOE_ERR_NULL_POINTER, MOE_ERR_INVALID_ARGUMENT, MOE_ERR_IO,
 * MOE_ERR_FORMAT, MOE_ERR_UNSUPPORTED, MOE_ERR_EXISTS, MOE_ERR_NOT_FOUND,
 * MOE_ERR_SHAPE, MOE_ERR_OUT_OF_MEMORY, MOE_ERR_CANCELLED.
 */
moe_status moe_upcycle(moe_upcycle_result *out, const char *input_path,
                       const char *output_path,
                       const moe_upcycle_params *params);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MOEUPCYCLE_H */
