"""Low-level ctypes mirror of include/moeupcycle.h, one declaration per C function.

The library is found through $MOEUPCYCLE_LIBRARY, then the package's own lib/
directory, then the system loader path.
"""
from __future__ import annotations

import ctypes
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double,
                    c_int, c_int32, c_size_t, c_uint32, c_uint64, c_void_p)
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

# moe_upcycle_method
MOE_METHOD_COPY, MOE_METHOD_DROP, MOE_METHOD_NOISE, MOE_METHOD_GRANULAR, MOE_METHOD_PARTITION = range(5)
# moe_router_init
MOE_ROUTER_INIT_NORMAL, MOE_ROUTER_INIT_UNIFORM, MOE_ROUTER_INIT_ZEROS = range(3)
# moe_routing
MOE_ROUTING_SOFTMAX_TOPK_RENORM, MOE_ROUTING_SOFTMAX_TOPK, MOE_ROUTING_TOPK_SOFTMAX = range(3)
# moe_output_format
MOE_FORMAT_MIXTRAL, MOE_FORMAT_QWEN2_MOE = range(2)
# moe_output_dtype
MOE_OUTPUT_DTYPE_KEEP, MOE_OUTPUT_DTYPE_F32, MOE_OUTPUT_DTYPE_BF16, MOE_OUTPUT_DTYPE_F16 = range(4)
# moe_partition_select
MOE_PARTITION_RANDOM, MOE_PARTITION_UNIFORM, MOE_PARTITION_IMPORTANCE = range(3)
# moe_granular_scaling
MOE_GRANULAR_SCALE_DOWN, MOE_GRANULAR_SCALE_CUBE_ROOT, MOE_GRANULAR_SCALE_NONE = range(3)

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
