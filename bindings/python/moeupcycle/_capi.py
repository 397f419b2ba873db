"""Low-level ctypes mirror of include/moeupcycle.h (ABI 0.2), in the header's order.

Every C function is declared once, with its prototype in a comment above its
argtypes/restype; every struct has the header's exact field list; every enum
value, status code and macro is a module constant. Enums are C ints; the
typedef names (moe_dtype, moe_method, ...) are aliases of c_int so that the
declarations read like the header.

The library is found through $MOEUPCYCLE_LIBRARY, then the package's own lib/
directory, then the system loader path.
"""
from __future__ import annotations

import ctypes
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double,
                    c_float, c_int, c_int32, c_int64, c_size_t, c_uint32, c_uint64,
                    c_void_p)
from pathlib import Path

# ------------------------------------------------------------------------ version

MOE_VERSION_MAJOR = 0
MOE_VERSION_MINOR = 8
MOE_VERSION_PATCH = 0
MOE_VERSION_NUMBER = MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH
MOE_VERSION_STRING = "0.8.0"

# ------------------------------------------------------------------------ status codes (frozen)

moe_status = c_int
MOE_OK = 0
MOE_ERR_INVALID_ARGUMENT = -1
MOE_ERR_NULL_POINTER = -2
MOE_ERR_IO = -3
MOE_ERR_FORMAT = -4
MOE_ERR_UNSUPPORTED = -5
MOE_ERR_EXISTS = -6
MOE_ERR_NOT_FOUND = -7
MOE_ERR_SHAPE = -8
MOE_ERR_OUT_OF_MEMORY = -9
MOE_ERR_CANCELLED = -10
MOE_ERR_BUFFER_TOO_SMALL = -11
MOE_ERR_INTERNAL = -12
MOE_ERR_NUMERIC = -13

# ------------------------------------------------------------------------ enums (append-only)

moe_dtype = c_int
MOE_DTYPE_DEFAULT = -1
MOE_DTYPE_F32 = 0
MOE_DTYPE_F16 = 1
MOE_DTYPE_BF16 = 2
MOE_DTYPE_Q8_0 = 3
MOE_DTYPE_Q4_0 = 4
MOE_DTYPE_Q4_1 = 5

moe_method = c_int
MOE_METHOD_COPY = 0
MOE_METHOD_DROP = 1
MOE_METHOD_NOISE = 2
MOE_METHOD_GRANULAR = 3
MOE_METHOD_PARTITION = 4

moe_router_init = c_int
MOE_ROUTER_INIT_NORMAL = 0
MOE_ROUTER_INIT_UNIFORM = 1
MOE_ROUTER_INIT_ZEROS = 2
MOE_ROUTER_INIT_KMEANS = 3
MOE_ROUTER_INIT_PROMPTS = 4

moe_routing = c_int
MOE_ROUTING_SOFTMAX_TOPK_RENORM = 0
MOE_ROUTING_SOFTMAX_TOPK = 1
MOE_ROUTING_TOPK_SOFTMAX = 2
MOE_ROUTING_SIGMOID_TOPK = 3
MOE_ROUTING_SIGMOID_TOPK_RENORM = 4

moe_format = c_int
MOE_FORMAT_MIXTRAL = 0
MOE_FORMAT_QWEN2_MOE = 1

moe_partition_select = c_int
MOE_PARTITION_RANDOM = 0
MOE_PARTITION_UNIFORM = 1
MOE_PARTITION_IMPORTANCE = 2
MOE_PARTITION_ACTIVATION = 3
MOE_PARTITION_CLUSTER = 4

moe_importance = c_int
MOE_IMPORTANCE_L1 = 0
MOE_IMPORTANCE_L2 = 1
MOE_IMPORTANCE_FREQ = 2

moe_drop_select = c_int
MOE_DROP_SELECT_RANDOM = 0
MOE_DROP_SELECT_LEAST_IMPORTANT = 1

moe_granular_scaling = c_int
MOE_GRANULAR_SCALE_DOWN = 0
MOE_GRANULAR_SCALE_CUBE_ROOT = 1
MOE_GRANULAR_SCALE_NONE = 2

moe_placement = c_int
MOE_PLACEMENT_DEFAULT = -1
MOE_PLACEMENT_ROW_SLICE = 0
MOE_PLACEMENT_EXPERT = 1
MOE_PLACEMENT_INTERLEAVE = 2
MOE_PLACEMENT_NONE = 3

moe_text_format = c_int
MOE_TEXT_PLAIN = 0
MOE_TEXT_JSON = 1

moe_weight = c_int
MOE_WEIGHT_ROUTER = 0
MOE_WEIGHT_GATE = 1
MOE_WEIGHT_UP = 2
MOE_WEIGHT_DOWN = 3
MOE_WEIGHT_SHARED_GATE = 4
MOE_WEIGHT_SHARED_UP = 5
MOE_WEIGHT_SHARED_DOWN = 6
MOE_WEIGHT_SHARED_EXPERT_GATE = 7

moe_stop_reason = c_int
MOE_STOP_LENGTH = 0
MOE_STOP_EOS = 1
MOE_STOP_CALLBACK = 2

moe_train_only = c_int
MOE_TRAIN_ALL = 0
MOE_TRAIN_MOE = 1
MOE_TRAIN_ROUTERS = 2

moe_lr_schedule = c_int
MOE_LR_COSINE = 0
MOE_LR_CONSTANT = 1

moe_nonfinite = c_int
MOE_NONFINITE_ERROR = 0
MOE_NONFINITE_SKIP = 1

# The enums with a name table (moe_<enum>_name / moe_<enum>_from_name), in the header's order.
NAMED_ENUMS = ("dtype", "method", "router_init", "routing", "format", "partition_select", "granular_scaling",
               "importance", "drop_select", "placement", "text_format", "weight", "stop_reason", "train_only", "lr_schedule", "nonfinite",
               "law_form")

# ------------------------------------------------------------------------ macros

MOE_ALL_EXPERTS = -1
MOE_FORWARD_SAVE = 1
MOE_FORWARD_TRAIN = 2
MOE_NO_TOKEN = -1

# ------------------------------------------------------------------------ callbacks

# typedef int (*moe_progress_fn)(uint64_t done, uint64_t total, const char *stage, void *user_data);
moe_progress_fn = CFUNCTYPE(c_int, c_uint64, c_uint64, c_char_p, c_void_p)
# typedef int (*moe_token_fn)(int32_t token, const char *text, void *user_data);
moe_token_fn = CFUNCTYPE(c_int, c_int32, c_char_p, c_void_p)

# ------------------------------------------------------------------------ structs


class moe_checkpoint_info(Structure):
    """First version: 0.1.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("architecture", c_char * 32),
        ("container", c_char * 16),
        ("dtype", c_char * 16),
        ("dtype_summary", c_char * 128),
        ("num_layers", c_uint32),
        ("hidden_size", c_uint32),
        ("intermediate_size", c_uint32),
        ("num_heads", c_uint32),
        ("num_kv_heads", c_uint32),
        ("head_dim", c_uint32),
        ("vocab_size", c_uint32),
        ("max_position_embeddings", c_uint32),
        ("rope_theta", c_double),
        ("rms_norm_eps", c_double),
        ("tied_embeddings", c_int32),
        ("qkv_bias", c_int32),
        ("num_experts", c_uint32),
        ("top_k", c_uint32),
        ("moe_intermediate_size", c_uint32),
        ("shared_expert_intermediate_size", c_uint32),
        ("num_moe_layers", c_uint32),
        ("tensor_count", c_uint64),
        ("param_count", c_uint64),
        ("active_param_count", c_uint64),
        ("data_bytes", c_uint64),
    ]


class moe_upcycle_params(Structure):
    """First version: 0.2.0 (up to user_data); 0.7.0 appended the calibration and data-derived router fields."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("num_experts", c_uint32),
        ("top_k", c_uint32),
        ("method", moe_method),
        ("ratio", c_double),
        ("shared_indices", c_int32),
        ("noise_std", c_double),
        ("granularity", c_uint32),
        ("granular_scaling", moe_granular_scaling),
        ("partition_select", moe_partition_select),
        ("partition_disjoint", c_int32),
        ("partition_scale", c_int32),
        ("layers", c_char_p),
        ("router_init", moe_router_init),
        ("router_std", c_double),
        ("shared_expert", c_int32),
        ("routing", moe_routing),
        ("format", moe_format),
        ("dtype", moe_dtype),
        ("seed", c_uint64),
        ("force", c_int32),
        ("max_shard_bytes", c_uint64),
        ("threads", c_uint32),
        ("aux_loss_coef", c_double),
        ("progress", moe_progress_fn),
        ("user_data", c_void_p),
        # 0.7.0
        ("calibration_path", c_char_p),
        ("calibration_ids", c_int32),
        ("calibration_tokens", c_uint64),
        ("calibration_samples", c_uint32),
        ("fire_quantile", c_double),
        ("stats_path", c_char_p),
        ("save_stats_path", c_char_p),
        ("importance", moe_importance),
        ("shared_from_frequent", c_uint32),
        ("drop_select", moe_drop_select),
        ("router_prompts_path", c_char_p),
        ("router_negative_prompts_path", c_char_p),
        ("router_spread", c_double),
        ("calibrated_scale", c_int32),
    ]


class moe_export_params(Structure):
    """First version: 0.7.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("dtype", moe_dtype),
        ("force", c_int32),
    ]


class moe_export_result(Structure):
    """First version: 0.7.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("bytes_written", c_uint64),
        ("tensors_written", c_uint64),
        ("fallback_tensors", c_uint32),
        ("seconds", c_double),
    ]


class moe_init_params(Structure):
    """First version: 0.6.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("hidden_size", c_uint32),
        ("num_layers", c_uint32),
        ("num_heads", c_uint32),
        ("num_kv_heads", c_uint32),
        ("head_dim", c_uint32),
        ("intermediate_size", c_uint32),
        ("num_experts", c_uint32),
        ("top_k", c_uint32),
        ("format", moe_format),
        ("shared_expert_size", c_uint32),
        ("max_positions", c_uint32),
        ("tie_embeddings", c_int32),
        ("rope_theta", c_double),
        ("rms_norm_eps", c_double),
        ("init_std", c_double),
        ("routing", moe_routing),
        ("aux_loss_coef", c_double),
        ("dtype", moe_dtype),
        ("seed", c_uint64),
        ("force", c_int32),
        ("max_shard_bytes", c_uint64),
    ]


class moe_init_result(Structure):
    """First version: 0.6.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("parameters", c_uint64),
        ("active_parameters", c_uint64),
        ("bytes_written", c_uint64),
        ("shards", c_uint32),
        ("seconds", c_double),
    ]


moe_law_form = c_int
MOE_LAW_DATA = 0
MOE_LAW_DATA_PARAMS = 1
MOE_LAW_UPCYCLE = 2
MOE_LAW_UPCYCLE_PARAMS = 3

MOE_PLAN_UPCYCLE = 0
MOE_PLAN_SCRATCH = 1
MOE_PLAN_DENSE = 2


class moe_scaling_law(Structure):
    """First version: 0.6.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("form", moe_law_form),
        ("e", c_double),
        ("a", c_double),
        ("alpha", c_double),
        ("alpha2", c_double),
        ("alpha3", c_double),
        ("b", c_double),
        ("beta", c_double),
    ]


class moe_fit_params(Structure):
    """First version: 0.6.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("form", moe_law_form),
        ("huber_delta", c_double),
        ("bootstrap", c_uint32),
        ("seed", c_uint64),
        ("max_iterations", c_uint32),
    ]


class moe_plan_params(Structure):
    """First version: 0.6.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("dense_tokens", c_double),
        ("budget_tokens", c_double),
        ("budget_flops", c_double),
        ("dense_parameters", c_double),
        ("active_parameters", c_double),
        ("law_file", c_char_p),
        ("dense_law", POINTER(moe_scaling_law)),
        ("moe_law", POINTER(moe_scaling_law)),
        ("upcycled_law", POINTER(moe_scaling_law)),
    ]


class moe_plan_result(Structure):
    """First version: 0.6.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("best", c_int32),
        ("bootstrap", c_uint32),
        ("upcycled_tokens", c_double),
        ("upcycled_loss", c_double),
        ("upcycled_loss_low", c_double),
        ("upcycled_loss_high", c_double),
        ("scratch_tokens", c_double),
        ("scratch_loss", c_double),
        ("scratch_loss_low", c_double),
        ("scratch_loss_high", c_double),
        ("scratch_all_tokens", c_double),
        ("scratch_all_loss", c_double),
        ("scratch_all_loss_low", c_double),
        ("scratch_all_loss_high", c_double),
        ("dense_tokens", c_double),
        ("dense_loss", c_double),
        ("dense_loss_low", c_double),
        ("dense_loss_high", c_double),
        ("break_even_tokens", c_double),
        ("break_even_low", c_double),
        ("break_even_high", c_double),
        ("d2_exponent", c_double),
    ]


class moe_study_params(Structure):
    """First version: 0.6.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("threads", c_uint32),
        ("tokenizer", c_char_p),
        ("data", c_char_p),
        ("progress", moe_progress_fn),
        ("user_data", c_void_p),
    ]


class moe_upcycle_result(Structure):
    """First version: 0.1.0 (up to peak_rss_bytes); 0.2.0 appended the stale_* fields, 0.6.0 the router_* fields."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("bytes_written", c_uint64),
        ("tensors_written", c_uint64),
        ("shards", c_uint32),
        ("moe_layers", c_uint32),
        ("seconds", c_double),
        ("peak_rss_bytes", c_uint64),
        # 0.2.0
        ("stale_bytes_removed", c_uint64),
        ("stale_removed", c_uint32),
        # 0.6.0
        ("router_max_similarity", c_double),
        ("router_similar_layer", c_int32),
    ]


class moe_runtime_params(Structure):
    """First version: 0.1.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("threads", c_uint32),
        ("pin", c_int32),
        ("placement", moe_placement),
        ("topology_synthetic", c_char_p),
        ("topology_xml", c_char_p),
    ]


class moe_runtime_info(Structure):
    """First version: 0.1.0 (up to blas_core); 0.3.0 appended kernel_path, kernel_forced and
    kernel_vector_floats, 0.5.0 kernel_bf16."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("numa_nodes", c_uint32),
        ("cores", c_uint32),
        ("pus", c_uint32),
        ("workers", c_uint32),
        ("is_this_system", c_int32),
        ("workers_pinned", c_int32),
        ("memory_binding", c_int32),
        ("blas_threads", c_int32),
        ("blas_core", c_char * 32),
        # 0.3.0
        ("kernel_path", c_char * 16),
        ("kernel_forced", c_int32),
        ("kernel_vector_floats", c_int32),
        # 0.5.0
        ("kernel_bf16", c_char * 16),
    ]


class moe_layer_config(Structure):
    """First version: 0.1.0 (up to z_loss_coef); 0.5.0 appended compute."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("hidden_size", c_uint32),
        ("moe_intermediate_size", c_uint32),
        ("num_experts", c_uint32),
        ("top_k", c_uint32),
        ("routing", moe_routing),
        ("capacity_factor", c_float),
        ("expert_choice", c_int32),
        ("shared_expert_intermediate_size", c_uint32),
        ("storage", moe_dtype),
        ("placement", moe_placement),
        ("jitter", c_float),
        ("seed", c_uint64),
        ("aux_loss_coef", c_float),
        ("z_loss_coef", c_float),
        # 0.5.0
        ("compute", moe_dtype),
    ]


class moe_layer_stats(Structure):
    """First version: 0.1.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("tokens", c_uint64),
        ("assignments", c_uint64),
        ("dropped", c_uint64),
        ("aux_loss", c_double),
        ("z_loss", c_double),
        ("weight_bytes", c_uint64),
        ("bound_bytes", c_uint64),
    ]


class moe_model_params(Structure):
    """First version: 0.1.0 (up to max_context); 0.6.0 appended upcycle."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("weight_dtype", moe_dtype),
        ("placement", moe_placement),
        ("max_context", c_uint32),
        # 0.6.0
        ("upcycle", POINTER(moe_upcycle_params)),
    ]


class moe_model_info(Structure):
    """First version: 0.1.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("architecture", c_char * 32),
        ("num_layers", c_uint32),
        ("hidden_size", c_uint32),
        ("vocab_size", c_uint32),
        ("context_length", c_uint32),
        ("num_moe_layers", c_uint32),
        ("num_experts", c_uint32),
        ("top_k", c_uint32),
        ("bos_token_id", c_int32),
        ("eos_token_id", c_int32),
        ("weight_dtype", moe_dtype),
        ("weight_bytes", c_uint64),
        ("weight_bytes_per_token", c_uint64),
    ]


class moe_eval_params(Structure):
    """First version: 0.1.0 (up to user_data); 0.8.0 appended held_out."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("seq_len", c_uint32),
        ("max_tokens", c_uint64),
        ("progress", moe_progress_fn),
        ("user_data", c_void_p),
        # 0.8.0
        ("held_out", c_double),
    ]


class moe_eval_result(Structure):
    """First version: 0.1.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("tokens_scored", c_uint64),
        ("windows", c_uint32),
        ("mean_nll", c_double),
        ("perplexity", c_double),
        ("seconds", c_double),
        ("tokens_per_second", c_double),
        ("aux_loss", c_double),
    ]


class moe_generate_params(Structure):
    """First version: 0.1.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("max_new_tokens", c_uint32),
        ("temperature", c_float),
        ("top_k", c_uint32),
        ("top_p", c_float),
        ("seed", c_uint64),
        ("chat", c_int32),
        ("add_special", c_int32),
        ("on_token", moe_token_fn),
        ("user_data", c_void_p),
        ("ignore_eos", c_int32),
    ]


class moe_generate_result(Structure):
    """First version: 0.1.0 (all fields)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("prompt_tokens", c_uint64),
        ("generated_tokens", c_uint64),
        ("prompt_seconds", c_double),
        ("decode_seconds", c_double),
        ("tokens_per_second", c_double),
        ("stop_reason", moe_stop_reason),
    ]


class moe_trainer_params(Structure):
    """First version: 0.1.0 (up to eval_windows, with reserved0); 0.2.0 appended on_nonfinite;
    0.4.0 micro_batch and recompute; 0.5.0 precision."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("seq_len", c_uint32),
        ("batch", c_uint32),
        ("steps", c_uint32),
        ("warmup", c_uint32),
        ("lr", c_float),
        ("min_lr", c_float),
        ("schedule", moe_lr_schedule),
        ("beta1", c_float),
        ("beta2", c_float),
        ("eps", c_float),
        ("weight_decay", c_float),
        ("clip", c_float),
        ("aux_loss_coef", c_float),
        ("z_loss_coef", c_float),
        ("train_only", moe_train_only),
        ("seed", c_uint64),
        ("eval_fraction", c_double),
        ("eval_windows", c_uint32),
        ("reserved0", c_uint32),
        # 0.2.0
        ("on_nonfinite", moe_nonfinite),
        # 0.4.0
        ("micro_batch", c_uint32),
        ("recompute", c_int32),
        # 0.5.0
        ("precision", moe_dtype),
    ]


class moe_train_stats(Structure):
    """First version: 0.1.0 (up to max_expert_load); 0.2.0 appended skipped; 0.4.0 appended model_flops
    and activation_bytes."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("step", c_uint64),
        ("loss", c_double),
        ("aux_loss", c_double),
        ("z_loss", c_double),
        ("lr", c_double),
        ("grad_norm", c_double),
        ("tokens", c_uint64),
        ("seconds", c_double),
        ("tokens_per_second", c_double),
        ("max_expert_load", c_double),
        # 0.2.0
        ("skipped", c_int32),
        # 0.4.0
        ("model_flops", c_double),
        ("activation_bytes", c_uint64),
    ]


# ------------------------------------------------------------------------ the library


def _find_library() -> str:
    env = os.environ.get("MOEUPCYCLE_LIBRARY")
    if env:
        return env
    own = Path(__file__).resolve().parent / "lib" / "libmoeupcycle.so"
    if own.exists():
        return str(own)
    return "libmoeupcycle.so"


lib = ctypes.CDLL(_find_library())


def _declare(name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


# ---- version, status, errors

# uint32_t moe_version_number(void);
_declare("moe_version_number", c_uint32)
# const char *moe_version_string(void);
_declare("moe_version_string", c_char_p)
# const char *moe_status_string(moe_status status);
_declare("moe_status_string", c_char_p, moe_status)
# const char *moe_last_error(void);
_declare("moe_last_error", c_char_p)

# ---- checkpoint inspection

# moe_status moe_checkpoint_inspect(moe_checkpoint_info *out, const char *path);
_declare("moe_checkpoint_inspect", moe_status, POINTER(moe_checkpoint_info), c_char_p)

# ---- upcycling

# moe_status moe_upcycle_params_init(moe_upcycle_params *params, size_t struct_size);
_declare("moe_upcycle_params_init", moe_status, POINTER(moe_upcycle_params), c_size_t)
# moe_status moe_upcycle(moe_upcycle_result *out, const char *input_path, const char *output_path,
#                        const moe_upcycle_params *params);
_declare("moe_upcycle", moe_status, POINTER(moe_upcycle_result), c_char_p, c_char_p, POINTER(moe_upcycle_params))
# moe_status moe_calibrate(const char *input_path, const char *stats_path, const moe_upcycle_params *params);
_declare("moe_calibrate", moe_status, c_char_p, c_char_p, POINTER(moe_upcycle_params))
# moe_status moe_export_params_init(moe_export_params *params, size_t struct_size);
_declare("moe_export_params_init", moe_status, POINTER(moe_export_params), c_size_t)
# moe_status moe_export(moe_export_result *out, const char *input_path, const char *output_path,
#                       const moe_export_params *params);
_declare("moe_export", moe_status, POINTER(moe_export_result), c_char_p, c_char_p, POINTER(moe_export_params))

# ---- models from scratch

# moe_status moe_init_params_init(moe_init_params *params, size_t struct_size);
_declare("moe_init_params_init", moe_status, POINTER(moe_init_params), c_size_t)
# moe_status moe_init_model(moe_init_result *out, const char *tokenizer_source, const char *output_path,
#                           const moe_init_params *params);
_declare("moe_init_model", moe_status, POINTER(moe_init_result), c_char_p, c_char_p, POINTER(moe_init_params))

# ---- scaling laws

_DP = POINTER(c_double)
# moe_status moe_scaling_law_preset(moe_scaling_law *out, const char *name);
_declare("moe_scaling_law_preset", moe_status, POINTER(moe_scaling_law), c_char_p)
# moe_status moe_scaling_law_predict(const moe_scaling_law *law, const double *tokens, const double *dense_tokens,
#                                    const double *parameters, size_t count, double *losses);
_declare("moe_scaling_law_predict", moe_status, POINTER(moe_scaling_law), _DP, _DP, _DP, c_size_t, _DP)
# moe_status moe_fit_params_init(moe_fit_params *params, size_t struct_size);
_declare("moe_fit_params_init", moe_status, POINTER(moe_fit_params), c_size_t)
# moe_status moe_scaling_fit(moe_scaling_law *law, moe_scaling_law *low, moe_scaling_law *high, const double *tokens,
#                            const double *dense_tokens, const double *parameters, const double *losses, size_t count,
#                            const moe_fit_params *params);
_declare("moe_scaling_fit", moe_status, POINTER(moe_scaling_law), POINTER(moe_scaling_law), POINTER(moe_scaling_law),
         _DP, _DP, _DP, _DP, c_size_t, POINTER(moe_fit_params))
# moe_status moe_study_params_init(moe_study_params *params, size_t struct_size);
_declare("moe_study_params_init", moe_status, POINTER(moe_study_params), c_size_t)
# moe_status moe_study_run(const char *recipe_path, const char *out_dir, const moe_study_params *params);
_declare("moe_study_run", moe_status, c_char_p, c_char_p, POINTER(moe_study_params))
# moe_status moe_plan_params_init(moe_plan_params *params, size_t struct_size);
_declare("moe_plan_params_init", moe_status, POINTER(moe_plan_params), c_size_t)
# moe_status moe_scaling_plan(moe_plan_result *out, const moe_plan_params *params);
_declare("moe_scaling_plan", moe_status, POINTER(moe_plan_result), POINTER(moe_plan_params))

# ---- runtime

# moe_status moe_runtime_params_init(moe_runtime_params *params, size_t struct_size);
_declare("moe_runtime_params_init", moe_status, POINTER(moe_runtime_params), c_size_t)
# moe_status moe_runtime_create(moe_runtime **out, const moe_runtime_params *params);
_declare("moe_runtime_create", moe_status, POINTER(c_void_p), POINTER(moe_runtime_params))
# void moe_runtime_free(moe_runtime *runtime);
_declare("moe_runtime_free", None, c_void_p)
# moe_status moe_runtime_get_info(moe_runtime_info *out, const moe_runtime *runtime);
_declare("moe_runtime_get_info", moe_status, POINTER(moe_runtime_info), c_void_p)
# moe_status moe_runtime_measure_peak(moe_runtime *runtime, moe_dtype dtype, double seconds, double *gflops);
_declare("moe_runtime_measure_peak", moe_status, c_void_p, moe_dtype, c_double, POINTER(c_double))
# moe_status moe_runtime_describe(const moe_runtime *runtime, const struct moe_layer_config *layer,
#                                 moe_text_format format, char *buffer, size_t capacity, size_t *needed);
_declare("moe_runtime_describe", moe_status, c_void_p, POINTER(moe_layer_config), moe_text_format, c_char_p,
         c_size_t, POINTER(c_size_t))

# ---- MoE layer

# moe_status moe_layer_config_init(moe_layer_config *config, size_t struct_size);
_declare("moe_layer_config_init", moe_status, POINTER(moe_layer_config), c_size_t)
# moe_status moe_layer_create(moe_layer **out, moe_runtime *runtime, const moe_layer_config *config);
_declare("moe_layer_create", moe_status, POINTER(c_void_p), c_void_p, POINTER(moe_layer_config))
# moe_status moe_layer_load(moe_layer **out, moe_runtime *runtime, const char *checkpoint_path,
#                           uint32_t layer_index, const moe_layer_config *overrides);
_declare("moe_layer_load", moe_status, POINTER(c_void_p), c_void_p, c_char_p, c_uint32, POINTER(moe_layer_config))
# void moe_layer_free(moe_layer *layer);
_declare("moe_layer_free", None, c_void_p)
# moe_status moe_layer_get_config(moe_layer_config *out, const moe_layer *layer);
_declare("moe_layer_get_config", moe_status, POINTER(moe_layer_config), c_void_p)
# moe_status moe_layer_weight_count(size_t *out, const moe_layer *layer, moe_weight weight, int64_t expert);
_declare("moe_layer_weight_count", moe_status, POINTER(c_size_t), c_void_p, moe_weight, c_int64)
# moe_status moe_layer_set_weight(moe_layer *layer, moe_weight weight, int64_t expert, const float *data,
#                                 size_t count);
_declare("moe_layer_set_weight", moe_status, c_void_p, moe_weight, c_int64, POINTER(c_float), c_size_t)
# moe_status moe_layer_get_weight(const moe_layer *layer, moe_weight weight, int64_t expert, float *out,
#                                 size_t capacity, size_t *needed);
_declare("moe_layer_get_weight", moe_status, c_void_p, moe_weight, c_int64, POINTER(c_float), c_size_t,
         POINTER(c_size_t))
# moe_status moe_layer_borrow_experts(moe_layer *layer, moe_dtype dtype, const void *gate, const void *up,
#                                     const void *down);
_declare("moe_layer_borrow_experts", moe_status, c_void_p, moe_dtype, c_void_p, c_void_p, c_void_p)
# moe_status moe_layer_init_random(moe_layer *layer, uint64_t seed, float std);
_declare("moe_layer_init_random", moe_status, c_void_p, c_uint64, c_float)
# moe_status moe_layer_forward(moe_layer *layer, const float *x, size_t tokens, float *out, uint32_t flags);
_declare("moe_layer_forward", moe_status, c_void_p, POINTER(c_float), c_size_t, POINTER(c_float), c_uint32)
# moe_status moe_layer_backward(moe_layer *layer, const float *grad_out, float *grad_x);
_declare("moe_layer_backward", moe_status, c_void_p, POINTER(c_float), POINTER(c_float))
# moe_status moe_layer_get_grad(const moe_layer *layer, moe_weight weight, int64_t expert, float *out,
#                               size_t capacity, size_t *needed);
_declare("moe_layer_get_grad", moe_status, c_void_p, moe_weight, c_int64, POINTER(c_float), c_size_t,
         POINTER(c_size_t))
# moe_status moe_layer_zero_grad(moe_layer *layer);
_declare("moe_layer_zero_grad", moe_status, c_void_p)
# moe_status moe_layer_set_noise_step(moe_layer *layer, uint64_t step);
_declare("moe_layer_set_noise_step", moe_status, c_void_p, c_uint64)
# moe_status moe_layer_get_stats(moe_layer_stats *out, const moe_layer *layer, uint64_t *tokens_per_expert,
#                                size_t capacity, size_t *needed);
_declare("moe_layer_get_stats", moe_status, POINTER(moe_layer_stats), c_void_p, POINTER(c_uint64), c_size_t,
         POINTER(c_size_t))
# moe_status moe_layer_get_routing(const moe_layer *layer, float *out, size_t capacity, size_t *needed);
_declare("moe_layer_get_routing", moe_status, c_void_p, POINTER(c_float), c_size_t, POINTER(c_size_t))

# ---- models

# moe_status moe_model_params_init(moe_model_params *params, size_t struct_size);
_declare("moe_model_params_init", moe_status, POINTER(moe_model_params), c_size_t)
# moe_status moe_model_load(moe_model **out, moe_runtime *runtime, const char *path,
#                           const moe_model_params *params);
_declare("moe_model_load", moe_status, POINTER(c_void_p), c_void_p, c_char_p, POINTER(moe_model_params))
# void moe_model_free(moe_model *model);
_declare("moe_model_free", None, c_void_p)
# moe_status moe_model_get_info(moe_model_info *out, const moe_model *model);
_declare("moe_model_get_info", moe_status, POINTER(moe_model_info), c_void_p)
# moe_status moe_model_tokenize(const moe_model *model, const char *text, size_t length, int32_t add_special,
#                               int32_t *tokens, size_t capacity, size_t *needed);
_declare("moe_model_tokenize", moe_status, c_void_p, c_char_p, c_size_t, c_int32, POINTER(c_int32), c_size_t,
         POINTER(c_size_t))
# moe_status moe_model_detokenize(const moe_model *model, const int32_t *tokens, size_t count,
#                                 int32_t skip_special, char *buffer, size_t capacity, size_t *needed);
_declare("moe_model_detokenize", moe_status, c_void_p, POINTER(c_int32), c_size_t, c_int32, c_char_p, c_size_t,
         POINTER(c_size_t))
# moe_status moe_model_logits(moe_model *model, const int32_t *tokens, size_t count, float *logits,
#                             size_t capacity, size_t *needed);
_declare("moe_model_logits", moe_status, c_void_p, POINTER(c_int32), c_size_t, POINTER(c_float), c_size_t,
         POINTER(c_size_t))
# moe_status moe_eval_params_init(moe_eval_params *params, size_t struct_size);
_declare("moe_eval_params_init", moe_status, POINTER(moe_eval_params), c_size_t)
# moe_status moe_model_eval_text(moe_eval_result *out, moe_model *model, const char *text, size_t length,
#                                const moe_eval_params *params);
_declare("moe_model_eval_text", moe_status, POINTER(moe_eval_result), c_void_p, c_char_p, c_size_t,
         POINTER(moe_eval_params))
# moe_status moe_model_eval_tokens(moe_eval_result *out, moe_model *model, const int32_t *tokens, size_t count,
#                                  const moe_eval_params *params);
_declare("moe_model_eval_tokens", moe_status, POINTER(moe_eval_result), c_void_p, POINTER(c_int32), c_size_t,
         POINTER(moe_eval_params))
# moe_status moe_model_router_stats(const moe_model *model, uint32_t layer, uint64_t *tokens_per_expert,
#                                   size_t capacity, size_t *needed);
_declare("moe_model_router_stats", moe_status, c_void_p, c_uint32, POINTER(c_uint64), c_size_t, POINTER(c_size_t))
# moe_status moe_generate_params_init(moe_generate_params *params, size_t struct_size);
_declare("moe_generate_params_init", moe_status, POINTER(moe_generate_params), c_size_t)
# moe_status moe_model_generate(moe_generate_result *out, moe_model *model, const char *prompt,
#                               const moe_generate_params *params, char *text, size_t capacity,
#                               size_t *needed);
_declare("moe_model_generate", moe_status, POINTER(moe_generate_result), c_void_p, c_char_p,
         POINTER(moe_generate_params), c_char_p, c_size_t, POINTER(c_size_t))

# ---- training

# moe_status moe_trainer_params_init(moe_trainer_params *params, size_t struct_size);
_declare("moe_trainer_params_init", moe_status, POINTER(moe_trainer_params), c_size_t)
# moe_status moe_trainer_create(moe_trainer **out, moe_model *model, const int32_t *tokens, size_t count,
#                               const moe_trainer_params *params);
_declare("moe_trainer_create", moe_status, POINTER(c_void_p), c_void_p, POINTER(c_int32), c_size_t,
         POINTER(moe_trainer_params))
# moe_status moe_trainer_create_text(moe_trainer **out, moe_model *model, const char *text, size_t length,
#                                    const moe_trainer_params *params);
_declare("moe_trainer_create_text", moe_status, POINTER(c_void_p), c_void_p, c_char_p, c_size_t,
         POINTER(moe_trainer_params))
# void moe_trainer_free(moe_trainer *trainer);
_declare("moe_trainer_free", None, c_void_p)
# moe_status moe_trainer_step(moe_train_stats *out, moe_trainer *trainer);
_declare("moe_trainer_step", moe_status, POINTER(moe_train_stats), c_void_p)
# moe_status moe_trainer_eval(double *mean_nll, moe_trainer *trainer);
_declare("moe_trainer_eval", moe_status, POINTER(c_double), c_void_p)
# moe_status moe_trainer_get_step(uint64_t *out, const moe_trainer *trainer);
_declare("moe_trainer_get_step", moe_status, POINTER(c_uint64), c_void_p)
# moe_status moe_trainer_save(moe_trainer *trainer, const char *path, int32_t force);
_declare("moe_trainer_save", moe_status, c_void_p, c_char_p, c_int32)
# moe_status moe_trainer_resume(moe_trainer *trainer, const char *path);
_declare("moe_trainer_resume", moe_status, c_void_p, c_char_p)

# ---- names: the one table of every enum's names

# const char *moe_dtype_name(moe_dtype value);
_declare("moe_dtype_name", c_char_p, moe_dtype)
# moe_status moe_dtype_from_name(moe_dtype *out, const char *name);
_declare("moe_dtype_from_name", moe_status, POINTER(moe_dtype), c_char_p)
# const char *moe_method_name(moe_method value);
_declare("moe_method_name", c_char_p, moe_method)
# moe_status moe_method_from_name(moe_method *out, const char *name);
_declare("moe_method_from_name", moe_status, POINTER(moe_method), c_char_p)
# const char *moe_router_init_name(moe_router_init value);
_declare("moe_router_init_name", c_char_p, moe_router_init)
# moe_status moe_router_init_from_name(moe_router_init *out, const char *name);
_declare("moe_router_init_from_name", moe_status, POINTER(moe_router_init), c_char_p)
# const char *moe_routing_name(moe_routing value);
_declare("moe_routing_name", c_char_p, moe_routing)
# moe_status moe_routing_from_name(moe_routing *out, const char *name);
_declare("moe_routing_from_name", moe_status, POINTER(moe_routing), c_char_p)
# const char *moe_format_name(moe_format value);
_declare("moe_format_name", c_char_p, moe_format)
# moe_status moe_format_from_name(moe_format *out, const char *name);
_declare("moe_format_from_name", moe_status, POINTER(moe_format), c_char_p)
# const char *moe_partition_select_name(moe_partition_select value);
_declare("moe_partition_select_name", c_char_p, moe_partition_select)
# moe_status moe_partition_select_from_name(moe_partition_select *out, const char *name);
_declare("moe_partition_select_from_name", moe_status, POINTER(moe_partition_select), c_char_p)
# const char *moe_granular_scaling_name(moe_granular_scaling value);
_declare("moe_granular_scaling_name", c_char_p, moe_granular_scaling)
# moe_status moe_granular_scaling_from_name(moe_granular_scaling *out, const char *name);
_declare("moe_granular_scaling_from_name", moe_status, POINTER(moe_granular_scaling), c_char_p)
# const char *moe_importance_name(moe_importance value);
_declare("moe_importance_name", c_char_p, moe_importance)
# moe_status moe_importance_from_name(moe_importance *out, const char *name);
_declare("moe_importance_from_name", moe_status, POINTER(moe_importance), c_char_p)
# const char *moe_drop_select_name(moe_drop_select value);
_declare("moe_drop_select_name", c_char_p, moe_drop_select)
# moe_status moe_drop_select_from_name(moe_drop_select *out, const char *name);
_declare("moe_drop_select_from_name", moe_status, POINTER(moe_drop_select), c_char_p)
# const char *moe_placement_name(moe_placement value);
_declare("moe_placement_name", c_char_p, moe_placement)
# moe_status moe_placement_from_name(moe_placement *out, const char *name);
_declare("moe_placement_from_name", moe_status, POINTER(moe_placement), c_char_p)
# const char *moe_text_format_name(moe_text_format value);
_declare("moe_text_format_name", c_char_p, moe_text_format)
# moe_status moe_text_format_from_name(moe_text_format *out, const char *name);
_declare("moe_text_format_from_name", moe_status, POINTER(moe_text_format), c_char_p)
# const char *moe_weight_name(moe_weight value);
_declare("moe_weight_name", c_char_p, moe_weight)
# moe_status moe_weight_from_name(moe_weight *out, const char *name);
_declare("moe_weight_from_name", moe_status, POINTER(moe_weight), c_char_p)
# const char *moe_stop_reason_name(moe_stop_reason value);
_declare("moe_stop_reason_name", c_char_p, moe_stop_reason)
# moe_status moe_stop_reason_from_name(moe_stop_reason *out, const char *name);
_declare("moe_stop_reason_from_name", moe_status, POINTER(moe_stop_reason), c_char_p)
# const char *moe_train_only_name(moe_train_only value);
_declare("moe_train_only_name", c_char_p, moe_train_only)
# moe_status moe_train_only_from_name(moe_train_only *out, const char *name);
_declare("moe_train_only_from_name", moe_status, POINTER(moe_train_only), c_char_p)
# const char *moe_lr_schedule_name(moe_lr_schedule value);
_declare("moe_lr_schedule_name", c_char_p, moe_lr_schedule)
# moe_status moe_lr_schedule_from_name(moe_lr_schedule *out, const char *name);
_declare("moe_lr_schedule_from_name", moe_status, POINTER(moe_lr_schedule), c_char_p)
# const char *moe_nonfinite_name(moe_nonfinite value);
_declare("moe_nonfinite_name", c_char_p, moe_nonfinite)
# moe_status moe_nonfinite_from_name(moe_nonfinite *out, const char *name);
_declare("moe_nonfinite_from_name", moe_status, POINTER(moe_nonfinite), c_char_p)
# const char *moe_law_form_name(moe_law_form value);
_declare("moe_law_form_name", c_char_p, moe_law_form)
# moe_status moe_law_form_from_name(moe_law_form *out, const char *name);
_declare("moe_law_form_from_name", moe_status, POINTER(moe_law_form), c_char_p)
