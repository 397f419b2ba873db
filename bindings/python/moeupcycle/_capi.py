"""Low-level ctypes mirror of include/moeupcycle.h, one declaration per C function.

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

# moe_status codes (frozen).
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

# moe_dtype
MOE_DTYPE_F32, MOE_DTYPE_F16, MOE_DTYPE_BF16, MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0, MOE_DTYPE_Q4_1 = range(6)
# moe_upcycle_method
MOE_METHOD_COPY, MOE_METHOD_DROP, MOE_METHOD_NOISE, MOE_METHOD_GRANULAR, MOE_METHOD_PARTITION = range(5)
# moe_router_init
MOE_ROUTER_INIT_NORMAL, MOE_ROUTER_INIT_UNIFORM, MOE_ROUTER_INIT_ZEROS = range(3)
# moe_routing
(MOE_ROUTING_SOFTMAX_TOPK_RENORM, MOE_ROUTING_SOFTMAX_TOPK, MOE_ROUTING_TOPK_SOFTMAX,
 MOE_ROUTING_SIGMOID_TOPK, MOE_ROUTING_SIGMOID_TOPK_RENORM) = range(5)
# moe_output_format
MOE_FORMAT_MIXTRAL, MOE_FORMAT_QWEN2_MOE = range(2)
# moe_output_dtype
MOE_OUTPUT_DTYPE_KEEP, MOE_OUTPUT_DTYPE_F32, MOE_OUTPUT_DTYPE_BF16, MOE_OUTPUT_DTYPE_F16 = range(4)
# moe_partition_select
MOE_PARTITION_RANDOM, MOE_PARTITION_UNIFORM, MOE_PARTITION_IMPORTANCE = range(3)
# moe_granular_scaling
MOE_GRANULAR_SCALE_DOWN, MOE_GRANULAR_SCALE_CUBE_ROOT, MOE_GRANULAR_SCALE_NONE = range(3)

# moe_placement
MOE_PLACEMENT_ROW_SLICE, MOE_PLACEMENT_EXPERT, MOE_PLACEMENT_INTERLEAVE, MOE_PLACEMENT_NONE = range(4)
# moe_text_format
MOE_TEXT_PLAIN, MOE_TEXT_JSON = range(2)
# moe_weight
(MOE_WEIGHT_ROUTER, MOE_WEIGHT_GATE, MOE_WEIGHT_UP, MOE_WEIGHT_DOWN, MOE_WEIGHT_SHARED_GATE,
 MOE_WEIGHT_SHARED_UP, MOE_WEIGHT_SHARED_DOWN, MOE_WEIGHT_SHARED_EXPERT_GATE) = range(8)
# moe_layer_forward() flags
MOE_FORWARD_SAVE = 1
MOE_FORWARD_TRAIN = 2

# typedef int (*moe_progress_fn)(uint64_t done, uint64_t total, const char *stage, void *user_data);
moe_progress_fn = CFUNCTYPE(c_int, c_uint64, c_uint64, c_char_p, c_void_p)


class moe_checkpoint_info(Structure):
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
    _fields_ = [
        ("struct_size", c_size_t),
        ("num_experts", c_uint32),
        ("top_k", c_uint32),
        ("method", c_int),
        ("ratio", c_double),
        ("shared_indices", c_int32),
        ("noise_std", c_double),
        ("granularity", c_uint32),
        ("granular_scaling", c_int),
        ("partition_select", c_int),
        ("partition_disjoint", c_int32),
        ("partition_scale", c_int32),
        ("layers", c_char_p),
        ("router_init", c_int),
        ("router_std", c_double),
        ("shared_expert", c_int32),
        ("routing", c_int),
        ("format", c_int),
        ("dtype", c_int),
        ("seed", c_uint64),
        ("force", c_int32),
        ("max_shard_bytes", c_uint64),
        ("threads", c_uint32),
        ("router_aux_loss_coef", c_double),
        ("progress", moe_progress_fn),
        ("user_data", c_void_p),
    ]


class moe_upcycle_result(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("bytes_written", c_uint64),
        ("tensors_written", c_uint64),
        ("shards", c_uint32),
        ("moe_layers", c_uint32),
        ("seconds", c_double),
        ("peak_rss_bytes", c_uint64),
    ]


class moe_runtime_params(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("threads", c_uint32),
        ("pin", c_int32),
        ("placement", c_int),
        ("topology_synthetic", c_char_p),
        ("topology_xml", c_char_p),
    ]


class moe_runtime_info(Structure):
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
    ]


class moe_layer_config(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("hidden", c_uint32),
        ("ffn", c_uint32),
        ("experts", c_uint32),
        ("top_k", c_uint32),
        ("routing", c_int),
        ("capacity_factor", c_float),
        ("expert_choice", c_int32),
        ("shared_ffn", c_uint32),
        ("storage", c_int),
        ("placement", c_int32),
        ("jitter", c_float),
        ("seed", c_uint64),
        ("balance_loss_coef", c_float),
        ("z_loss_coef", c_float),
    ]


class moe_layer_stats(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("tokens", c_uint64),
        ("assignments", c_uint64),
        ("dropped", c_uint64),
        ("balance_loss", c_double),
        ("z_loss", c_double),
        ("weight_bytes", c_uint64),
        ("bound_bytes", c_uint64),
    ]


def _find_library() -> str:
    env = os.environ.get("MOEUPCYCLE_LIBRARY")
    if env:
        return env
    own = Path(__file__).resolve().parent / "lib" / "libmoeupcycle.so"
    if own.exists():
        return str(own)
    return "libmoeupcycle.so"


lib = ctypes.CDLL(_find_library())

# uint32_t moe_version_number(void);
lib.moe_version_number.argtypes = []
lib.moe_version_number.restype = c_uint32
# const char *moe_version_string(void);
lib.moe_version_string.argtypes = []
lib.moe_version_string.restype = c_char_p
# const char *moe_status_string(moe_status status);
lib.moe_status_string.argtypes = [c_int]
lib.moe_status_string.restype = c_char_p
# const char *moe_last_error(void);
lib.moe_last_error.argtypes = []
lib.moe_last_error.restype = c_char_p
# moe_status moe_checkpoint_inspect(moe_checkpoint_info *out, const char *path);
lib.moe_checkpoint_inspect.argtypes = [POINTER(moe_checkpoint_info), c_char_p]
lib.moe_checkpoint_inspect.restype = c_int
# void moe_upcycle_params_init(moe_upcycle_params *params);
lib.moe_upcycle_params_init.argtypes = [POINTER(moe_upcycle_params)]
lib.moe_upcycle_params_init.restype = None
# moe_status moe_upcycle(moe_upcycle_result *out, const char *input_path,
#                        const char *output_path, const moe_upcycle_params *params);
lib.moe_upcycle.argtypes = [POINTER(moe_upcycle_result), c_char_p, c_char_p, POINTER(moe_upcycle_params)]
lib.moe_upcycle.restype = c_int

# void moe_runtime_params_init(moe_runtime_params *params);
lib.moe_runtime_params_init.argtypes = [POINTER(moe_runtime_params)]
lib.moe_runtime_params_init.restype = None
# moe_status moe_runtime_create(moe_runtime **out, const moe_runtime_params *params);
lib.moe_runtime_create.argtypes = [POINTER(c_void_p), POINTER(moe_runtime_params)]
lib.moe_runtime_create.restype = c_int
# void moe_runtime_free(moe_runtime *runtime);
lib.moe_runtime_free.argtypes = [c_void_p]
lib.moe_runtime_free.restype = None
# moe_status moe_runtime_get_info(moe_runtime_info *out, const moe_runtime *runtime);
lib.moe_runtime_get_info.argtypes = [POINTER(moe_runtime_info), c_void_p]
lib.moe_runtime_get_info.restype = c_int
# moe_status moe_runtime_describe(const moe_runtime *runtime, const struct moe_layer_config *layer,
#                                 moe_text_format format, char *buffer, size_t capacity,
#                                 size_t *needed);
lib.moe_runtime_describe.argtypes = [c_void_p, POINTER(moe_layer_config), c_int, c_char_p, c_size_t,
                                     POINTER(c_size_t)]
lib.moe_runtime_describe.restype = c_int
# void moe_layer_config_init(moe_layer_config *config);
lib.moe_layer_config_init.argtypes = [POINTER(moe_layer_config)]
lib.moe_layer_config_init.restype = None
# moe_status moe_layer_create(moe_layer **out, moe_runtime *runtime, const moe_layer_config *config);
lib.moe_layer_create.argtypes = [POINTER(c_void_p), c_void_p, POINTER(moe_layer_config)]
lib.moe_layer_create.restype = c_int
# moe_status moe_layer_load(moe_layer **out, moe_runtime *runtime, const char *checkpoint_path,
#                           uint32_t layer_index, const moe_layer_config *overrides);
lib.moe_layer_load.argtypes = [POINTER(c_void_p), c_void_p, c_char_p, c_uint32, POINTER(moe_layer_config)]
lib.moe_layer_load.restype = c_int
# void moe_layer_free(moe_layer *layer);
lib.moe_layer_free.argtypes = [c_void_p]
lib.moe_layer_free.restype = None
# moe_status moe_layer_get_config(moe_layer_config *out, const moe_layer *layer);
lib.moe_layer_get_config.argtypes = [POINTER(moe_layer_config), c_void_p]
lib.moe_layer_get_config.restype = c_int
# moe_status moe_layer_weight_count(size_t *out, const moe_layer *layer, moe_weight weight,
#                                   int64_t expert);
lib.moe_layer_weight_count.argtypes = [POINTER(c_size_t), c_void_p, c_int, c_int64]
lib.moe_layer_weight_count.restype = c_int
# moe_status moe_layer_set_weight(moe_layer *layer, moe_weight weight, int64_t expert,
#                                 const float *data, size_t count);
lib.moe_layer_set_weight.argtypes = [c_void_p, c_int, c_int64, POINTER(c_float), c_size_t]
lib.moe_layer_set_weight.restype = c_int
# moe_status moe_layer_get_weight(const moe_layer *layer, moe_weight weight, int64_t expert,
#                                 float *out, size_t capacity);
lib.moe_layer_get_weight.argtypes = [c_void_p, c_int, c_int64, POINTER(c_float), c_size_t]
lib.moe_layer_get_weight.restype = c_int
# moe_status moe_layer_borrow_experts(moe_layer *layer, moe_dtype dtype, const void *gate,
#                                     const void *up, const void *down);
lib.moe_layer_borrow_experts.argtypes = [c_void_p, c_int, c_void_p, c_void_p, c_void_p]
lib.moe_layer_borrow_experts.restype = c_int
# moe_status moe_layer_init_random(moe_layer *layer, uint64_t seed, float std);
lib.moe_layer_init_random.argtypes = [c_void_p, c_uint64, c_float]
lib.moe_layer_init_random.restype = c_int
# moe_status moe_layer_forward(moe_layer *layer, const float *x, size_t tokens, float *out,
#                              uint32_t flags);
lib.moe_layer_forward.argtypes = [c_void_p, POINTER(c_float), c_size_t, POINTER(c_float), c_uint32]
lib.moe_layer_forward.restype = c_int
# moe_status moe_layer_backward(moe_layer *layer, const float *grad_out, float *grad_x);
lib.moe_layer_backward.argtypes = [c_void_p, POINTER(c_float), POINTER(c_float)]
lib.moe_layer_backward.restype = c_int
# moe_status moe_layer_get_grad(const moe_layer *layer, moe_weight weight, int64_t expert,
#                               float *out, size_t capacity);
lib.moe_layer_get_grad.argtypes = [c_void_p, c_int, c_int64, POINTER(c_float), c_size_t]
lib.moe_layer_get_grad.restype = c_int
# moe_status moe_layer_zero_grad(moe_layer *layer);
lib.moe_layer_zero_grad.argtypes = [c_void_p]
lib.moe_layer_zero_grad.restype = c_int
# moe_status moe_layer_set_noise_step(moe_layer *layer, uint64_t step);
lib.moe_layer_set_noise_step.argtypes = [c_void_p, c_uint64]
lib.moe_layer_set_noise_step.restype = c_int
# moe_status moe_layer_get_stats(moe_layer_stats *out, const moe_layer *layer,
#                                uint64_t *tokens_per_expert, size_t capacity);
lib.moe_layer_get_stats.argtypes = [POINTER(moe_layer_stats), c_void_p, POINTER(c_uint64), c_size_t]
lib.moe_layer_get_stats.restype = c_int
# moe_status moe_layer_get_routing(const moe_layer *layer, float *out, size_t capacity);
lib.moe_layer_get_routing.argtypes = [c_void_p, POINTER(c_float), c_size_t]
lib.moe_layer_get_routing.restype = c_int

# --------------------------------------------------------------------------- models

# typedef int (*moe_token_fn)(int32_t token, const char *text, void *user_data);
moe_token_fn = CFUNCTYPE(c_int, c_int32, c_char_p, c_void_p)


class moe_model_params(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("weight_dtype", c_int32),
        ("placement", c_int32),
        ("max_context", c_uint32),
    ]


class moe_model_info(Structure):
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
        ("weight_dtype", c_int),
        ("weight_bytes", c_uint64),
        ("weight_bytes_per_token", c_uint64),
    ]


class moe_eval_params(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("seq_len", c_uint32),
        ("max_tokens", c_uint64),
        ("progress", moe_progress_fn),
        ("user_data", c_void_p),
    ]


class moe_eval_result(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("tokens_scored", c_uint64),
        ("windows", c_uint32),
        ("mean_nll", c_double),
        ("perplexity", c_double),
        ("seconds", c_double),
        ("tokens_per_second", c_double),
        ("balance", c_double),
    ]


class moe_generate_params(Structure):
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
    _fields_ = [
        ("struct_size", c_size_t),
        ("prompt_tokens", c_uint64),
        ("generated_tokens", c_uint64),
        ("prompt_seconds", c_double),
        ("decode_seconds", c_double),
        ("tokens_per_second", c_double),
        ("stop_reason", c_int32),
    ]


# void moe_model_params_init(moe_model_params *params);
lib.moe_model_params_init.argtypes = [POINTER(moe_model_params)]
lib.moe_model_params_init.restype = None
# moe_status moe_model_load(moe_model **out, moe_runtime *runtime, const char *path,
#                           const moe_model_params *params);
lib.moe_model_load.argtypes = [POINTER(c_void_p), c_void_p, c_char_p, POINTER(moe_model_params)]
lib.moe_model_load.restype = c_int
# void moe_model_free(moe_model *model);
lib.moe_model_free.argtypes = [c_void_p]
lib.moe_model_free.restype = None
# moe_status moe_model_get_info(moe_model_info *out, const moe_model *model);
lib.moe_model_get_info.argtypes = [POINTER(moe_model_info), c_void_p]
lib.moe_model_get_info.restype = c_int
# moe_status moe_model_tokenize(const moe_model *model, const char *text, size_t length,
#                               int32_t add_special, int32_t *tokens, size_t capacity,
#                               size_t *count);
lib.moe_model_tokenize.argtypes = [c_void_p, c_char_p, c_size_t, c_int32, POINTER(c_int32), c_size_t,
                                   POINTER(c_size_t)]
lib.moe_model_tokenize.restype = c_int
# moe_status moe_model_detokenize(const moe_model *model, const int32_t *tokens, size_t count,
#                                 int32_t skip_special, char *buffer, size_t capacity,
#                                 size_t *needed);
lib.moe_model_detokenize.argtypes = [c_void_p, POINTER(c_int32), c_size_t, c_int32, c_char_p, c_size_t,
                                     POINTER(c_size_t)]
lib.moe_model_detokenize.restype = c_int
# moe_status moe_model_logits(moe_model *model, const int32_t *tokens, size_t count,
#                             float *logits, size_t capacity);
lib.moe_model_logits.argtypes = [c_void_p, POINTER(c_int32), c_size_t, POINTER(c_float), c_size_t]
lib.moe_model_logits.restype = c_int
# void moe_eval_params_init(moe_eval_params *params);
lib.moe_eval_params_init.argtypes = [POINTER(moe_eval_params)]
lib.moe_eval_params_init.restype = None
# moe_status moe_model_eval_text(moe_eval_result *out, moe_model *model, const char *text,
#                                size_t length, const moe_eval_params *params);
lib.moe_model_eval_text.argtypes = [POINTER(moe_eval_result), c_void_p, c_char_p, c_size_t,
                                    POINTER(moe_eval_params)]
lib.moe_model_eval_text.restype = c_int
# moe_status moe_model_eval_tokens(moe_eval_result *out, moe_model *model,
#                                  const int32_t *tokens, size_t count,
#                                  const moe_eval_params *params);
lib.moe_model_eval_tokens.argtypes = [POINTER(moe_eval_result), c_void_p, POINTER(c_int32), c_size_t,
                                      POINTER(moe_eval_params)]
lib.moe_model_eval_tokens.restype = c_int
# moe_status moe_model_router_stats(const moe_model *model, uint32_t layer,
#                                   uint64_t *tokens_per_expert, size_t capacity,
#                                   uint32_t *experts);
lib.moe_model_router_stats.argtypes = [c_void_p, c_uint32, POINTER(c_uint64), c_size_t, POINTER(c_uint32)]
lib.moe_model_router_stats.restype = c_int
# void moe_generate_params_init(moe_generate_params *params);
lib.moe_generate_params_init.argtypes = [POINTER(moe_generate_params)]
lib.moe_generate_params_init.restype = None
# moe_status moe_model_generate(moe_generate_result *out, moe_model *model, const char *prompt,
#                               const moe_generate_params *params, char *text,
#                               size_t capacity, size_t *needed);
lib.moe_model_generate.argtypes = [POINTER(moe_generate_result), c_void_p, c_char_p,
                                   POINTER(moe_generate_params), c_char_p, c_size_t, POINTER(c_size_t)]
lib.moe_model_generate.restype = c_int

# moe_train_only
MOE_TRAIN_ALL, MOE_TRAIN_MOE, MOE_TRAIN_ROUTERS = range(3)
# moe_lr_schedule
MOE_LR_COSINE, MOE_LR_CONSTANT = range(2)


class moe_trainer_params(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("seq_len", c_uint32),
        ("batch", c_uint32),
        ("steps", c_uint32),
        ("warmup", c_uint32),
        ("lr", c_float),
        ("min_lr", c_float),
        ("schedule", c_int),
        ("beta1", c_float),
        ("beta2", c_float),
        ("eps", c_float),
        ("weight_decay", c_float),
        ("clip", c_float),
        ("aux_loss_coef", c_float),
        ("z_loss_coef", c_float),
        ("train_only", c_int),
        ("seed", c_uint64),
        ("eval_fraction", c_double),
        ("eval_windows", c_uint32),
    ]


class moe_train_stats(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("step", c_uint64),
        ("loss", c_double),
        ("balance", c_double),
        ("z_loss", c_double),
        ("lr", c_double),
        ("grad_norm", c_double),
        ("tokens", c_uint64),
        ("seconds", c_double),
        ("tokens_per_second", c_double),
        ("max_expert_load", c_double),
    ]


# void moe_trainer_params_init(moe_trainer_params *params);
lib.moe_trainer_params_init.argtypes = [POINTER(moe_trainer_params)]
lib.moe_trainer_params_init.restype = None
# moe_status moe_trainer_create(moe_trainer **out, moe_model *model, const int32_t *tokens,
#                               size_t count, const moe_trainer_params *params);
lib.moe_trainer_create.argtypes = [POINTER(c_void_p), c_void_p, POINTER(c_int32), c_size_t,
                                   POINTER(moe_trainer_params)]
lib.moe_trainer_create.restype = c_int
# moe_status moe_trainer_create_text(moe_trainer **out, moe_model *model, const char *text,
#                                    size_t length, const moe_trainer_params *params);
lib.moe_trainer_create_text.argtypes = [POINTER(c_void_p), c_void_p, c_char_p, c_size_t,
                                        POINTER(moe_trainer_params)]
lib.moe_trainer_create_text.restype = c_int
# void moe_trainer_free(moe_trainer *trainer);
lib.moe_trainer_free.argtypes = [c_void_p]
lib.moe_trainer_free.restype = None
# moe_status moe_trainer_step(moe_train_stats *out, moe_trainer *trainer);
lib.moe_trainer_step.argtypes = [POINTER(moe_train_stats), c_void_p]
lib.moe_trainer_step.restype = c_int
# moe_status moe_trainer_eval(double *mean_nll, moe_trainer *trainer);
lib.moe_trainer_eval.argtypes = [POINTER(c_double), c_void_p]
lib.moe_trainer_eval.restype = c_int
# moe_status moe_trainer_get_step(uint64_t *out, const moe_trainer *trainer);
lib.moe_trainer_get_step.argtypes = [POINTER(c_uint64), c_void_p]
lib.moe_trainer_get_step.restype = c_int
# moe_status moe_trainer_save(moe_trainer *trainer, const char *path, int32_t force);
lib.moe_trainer_save.argtypes = [c_void_p, c_char_p, c_int32]
lib.moe_trainer_save.restype = c_int
# moe_status moe_trainer_resume(moe_trainer *trainer, const char *path);
lib.moe_trainer_resume.argtypes = [c_void_p, c_char_p]
lib.moe_trainer_resume.restype = c_int
