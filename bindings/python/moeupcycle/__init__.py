"""moeupcycle: upcycle dense transformer checkpoints into Mixture-of-Experts models,
and run and train them on CPU.

A high-level API over the C library (``_capi`` mirrors the header 1:1)::

    import moeupcycle as mu
    mu.upcycle("SmolLM2.gguf", "smollm2-moe", num_experts=8, top_k=2, method="drop", ratio=0.5)
    with mu.Runtime() as rt, mu.Model(rt, "smollm2-moe") as model:
        print(model.generate("The capital of France is", max_new_tokens=8))
        print(model.eval_text(open("hamlet.txt").read()).perplexity)

Options are the fields of the C parameter structs, by their C names. Enum fields take the
value or its name as the library spells it ("drop", "qwen2-moe", "softmax-topk-renorm";
case is ignored and "_" reads as "-"); `names(enum)` lists them.

The library is found through $MOEUPCYCLE_LIBRARY, then the package's own lib/
directory, then the system loader path.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from . import _capi as C

__all__ = ["MoeError", "Runtime", "MoELayer", "Model", "Trainer", "upcycle", "calibrate", "export_gguf", "init_model", "inspect", "scaling_law", "fit_scaling_law",
           "predict_loss", "plan", "run_study", "version", "names"]

_F32P = ctypes.POINTER(ctypes.c_float)
_I32P = ctypes.POINTER(ctypes.c_int32)
_U64P = ctypes.POINTER(ctypes.c_uint64)


class MoeError(Exception):
    """A failed library call: `code` is the moe_status, `message` says what was wrong."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{message} ({C.lib.moe_status_string(code).decode()})")
        self.code = code
        self.message = message


def _check(status: int) -> None:
    if status != C.MOE_OK:
        raise MoeError(status, C.lib.moe_last_error().decode())


def version() -> str:
    """The library's version, e.g. "0.8.0"."""
    return C.lib.moe_version_string().decode()


# Before 1.0 a library of another minor version is not compatible with this binding's header.
if C.lib.moe_version_number() // 100 != C.MOE_VERSION_NUMBER // 100:
    raise ImportError(f"libmoeupcycle {version()} does not match this binding's ABI {C.MOE_VERSION_STRING}")


# ------------------------------------------------------------------------ enums by name

# Which enum each enum-typed struct field holds (the field names are the header's).
_ENUM_OF_FIELD = {
    "method": "method", "router_init": "router_init", "routing": "routing", "format": "format",
    "dtype": "dtype", "storage": "dtype", "weight_dtype": "dtype", "partition_select": "partition_select",
    "granular_scaling": "granular_scaling", "importance": "importance", "drop_select": "drop_select",
    "placement": "placement", "train_only": "train_only",
    "schedule": "lr_schedule", "on_nonfinite": "nonfinite", "form": "law_form",
}


def names(enum: str) -> list[str]:
    """The canonical names of enum `enum` ("method", "routing", "dtype", ...) in value order, from 0."""
    if enum not in C.NAMED_ENUMS:
        raise ValueError(f"unknown enum {enum!r}; the enums are {', '.join(C.NAMED_ENUMS)}")
    name_of = getattr(C.lib, f"moe_{enum}_name")
    out = []
    while (name := name_of(len(out))) is not None:
        out.append(name.decode())
    return out


def _enum_value(enum: str, value) -> int:
    """`value` of enum `enum`: an int as given, a name through the library's moe_<enum>_from_name."""
    if not isinstance(value, str):
        return int(value)
    out = ctypes.c_int()
    _check(getattr(C.lib, f"moe_{enum}_from_name")(ctypes.byref(out), value.encode()))
    return out.value


# ------------------------------------------------------------------------ versioned structs


# Each parameter struct's _init function.
_INIT = {
    C.moe_upcycle_params: C.lib.moe_upcycle_params_init, C.moe_runtime_params: C.lib.moe_runtime_params_init,
    C.moe_layer_config: C.lib.moe_layer_config_init, C.moe_model_params: C.lib.moe_model_params_init,
    C.moe_eval_params: C.lib.moe_eval_params_init, C.moe_generate_params: C.lib.moe_generate_params_init,
    C.moe_trainer_params: C.lib.moe_trainer_params_init, C.moe_init_params: C.lib.moe_init_params_init,
    C.moe_fit_params: C.lib.moe_fit_params_init, C.moe_plan_params: C.lib.moe_plan_params_init,
    C.moe_study_params: C.lib.moe_study_params_init, C.moe_export_params: C.lib.moe_export_params_init,
}


def _params(cls, options: dict, what: str):
    """A parameter struct filled with the library's defaults by its _init function, then with
    `options` (C field names; enum fields also take names; text fields take str)."""
    p = cls()
    _check(_INIT[cls](p, ctypes.sizeof(p)))
    fields = {name: ctype for name, ctype in cls._fields_}
    for key, value in options.items():
        if key not in fields or key == "struct_size" or key.startswith("reserved") or \
                fields[key] in (C.moe_progress_fn, C.moe_token_fn, ctypes.c_void_p):
            raise TypeError(f"unknown {what} option {key!r}")
        if key in _ENUM_OF_FIELD:
            value = _enum_value(_ENUM_OF_FIELD[key], value)
        elif fields[key] is ctypes.c_char_p and isinstance(value, (str, os.PathLike)):
            value = os.fspath(value).encode()
        setattr(p, key, value)
    return p


def _result(cls):
    """A result struct with its struct_size set."""
    r = cls()
    r.struct_size = ctypes.sizeof(r)
    return r


def _fetch(call, new):
    """The output-buffer rule: ask with a NULL buffer how many elements the answer takes, then fill a
    buffer of that size. `call(buffer, capacity, needed)`; `new(n)` gives (result, pointer to pass)."""
    needed = ctypes.c_size_t()
    _check(call(None, 0, ctypes.byref(needed)))
    result, pointer = new(needed.value)
    _check(call(pointer, needed.value, ctypes.byref(needed)))
    return result


def _floats(n: int):
    a = np.empty(n, np.float32)
    return a, a.ctypes.data_as(_F32P)


def _text(n: int):
    buf = ctypes.create_string_buffer(max(n, 1))
    return buf, buf


def _f32(a, name: str, shape: Optional[tuple] = None, writable: bool = False) -> np.ndarray:
    """The array itself when it is float32 and C-contiguous (zero copy); otherwise an error."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous float32 numpy array")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} must be writable")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    return a


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(_F32P)


def _ids(tokens: Iterable[int]) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(list(tokens), dtype=np.int32))


def _progress_callback(progress):
    if progress is None:
        return None
    return C.moe_progress_fn(lambda done, total, stage, _: 0 if progress(done, total, stage.decode()) is not False
                             else 1)


# ------------------------------------------------------------------------ checkpoints


def upcycle(source: str, output: str, progress: Optional[Callable[[int, int, str], bool]] = None,
            **options) -> C.moe_upcycle_result:
    """Upcycle the dense checkpoint `source` into an MoE checkpoint at `output`.

    Options are the fields of moe_upcycle_params (num_experts, top_k, method, ratio, layers,
    format, dtype, aux_loss_coef, seed, force, ...); enum fields also take their names
    ("drop", "qwen2-moe", dtype "keep"). Data-aware upcycling takes calibration_path (text, or
    token ids with calibration_ids=1), stats_path / save_stats_path, partition_select
    "activation" | "cluster", importance, shared_from_frequent, drop_select "least-important",
    router_init "kmeans" | "prompts" with router_prompts_path. `progress(done, total, stage)`
    may return False to cancel.
    """
    p = _params(C.moe_upcycle_params, options, "upcycle")
    callback = _progress_callback(progress)
    if callback is not None:
        p.progress = callback
    r = _result(C.moe_upcycle_result)
    _check(C.lib.moe_upcycle(r, str(source).encode(), str(output).encode(), p))
    return r


def calibrate(source: str, stats: str, **options) -> None:
    """Run the dense checkpoint `source` over calibration data and save its statistics at `stats`
    (the file that upcycle(..., stats_path=...) reads). Options are the calibration fields of
    moe_upcycle_params: calibration_path (required), calibration_ids, calibration_tokens,
    calibration_samples, fire_quantile, force."""
    p = _params(C.moe_upcycle_params, options, "calibrate")
    _check(C.lib.moe_calibrate(os.fspath(source).encode(), os.fspath(stats).encode(), p))


def export_gguf(source: str, output: str, **options) -> C.moe_export_result:
    """Write the checkpoint `source` (dense, Mixtral or Qwen2-MoE; HF or GGUF) as a GGUF file llama.cpp
    runs. Options: dtype ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"), force."""
    p = _params(C.moe_export_params, options, "export")
    r = _result(C.moe_export_result)
    _check(C.lib.moe_export(r, os.fspath(source).encode(), os.fspath(output).encode(), p))
    return r


def init_model(tokenizer_source: str, output: str, **options) -> C.moe_init_result:
    """Write a new model with random weights at `output`, with the tokenizer and vocabulary of
    `tokenizer_source` (an HF directory or a .gguf file).

    Options are the fields of moe_init_params (hidden_size, num_layers, num_heads, num_kv_heads,
    intermediate_size, num_experts (0 = dense Llama), top_k, format ("mixtral", "qwen2-moe"),
    init_std, dtype, seed, force, ...).
    """
    p = _params(C.moe_init_params, options, "init")
    r = _result(C.moe_init_result)
    _check(C.lib.moe_init_model(r, str(tokenizer_source).encode(), str(output).encode(), p))
    return r


# ------------------------------------------------------------------------ scaling laws


def _law_struct(law) -> C.moe_scaling_law:
    """A moe_scaling_law from a struct or a dict (form, e, a, alpha, alpha2, alpha3, b, beta)."""
    if isinstance(law, C.moe_scaling_law):
        return law
    out = _result(C.moe_scaling_law)
    for key, value in law.items():
        setattr(out, key, _enum_value("law_form", value) if key == "form" else value)
    return out


def _doubles(values, count, what):
    if values is None:
        return None
    values = [float(v) for v in values]
    if len(values) != count:
        raise ValueError(f"{what} has {len(values)} values; tokens has {count}")
    return (ctypes.c_double * max(count, 1))(*values)


def scaling_law(preset: str) -> C.moe_scaling_law:
    """A published law: "liew2025-dense", "liew2025-moe" or "liew2025-upcycled"."""
    out = _result(C.moe_scaling_law)
    _check(C.lib.moe_scaling_law_preset(out, preset.encode()))
    return out


def predict_loss(law, tokens, dense_tokens=None, parameters=None) -> list[float]:
    """The law's losses at the points (D or D2, D1 for upcycle forms, N for params forms)."""
    n = len(tokens)
    out = (ctypes.c_double * max(n, 1))()
    _check(C.lib.moe_scaling_law_predict(_law_struct(law), _doubles(tokens, n, "tokens"),
                                         _doubles(dense_tokens, n, "dense_tokens"),
                                         _doubles(parameters, n, "parameters"), n, out))
    return list(out[:n])


def fit_scaling_law(tokens, losses, dense_tokens=None, parameters=None, *, intervals=False, **options):
    """Fits a law to observed losses. Options are the fields of moe_fit_params (form: "data",
    "data-params", "upcycle", "upcycle-params"; huber_delta; bootstrap; seed; max_iterations).
    Returns the law, or (law, low, high) with intervals=True (needs bootstrap > 0)."""
    n = len(tokens)
    p = _params(C.moe_fit_params, options, "fit")
    law = _result(C.moe_scaling_law)
    low = _result(C.moe_scaling_law) if intervals else None
    high = _result(C.moe_scaling_law) if intervals else None
    _check(C.lib.moe_scaling_fit(law, low, high, _doubles(tokens, n, "tokens"), _doubles(dense_tokens, n, "dense_tokens"),
                                 _doubles(parameters, n, "parameters"), _doubles(losses, n, "losses"), n, p))
    return (law, low, high) if intervals else law


def plan(dense_law=None, moe_law=None, upcycled_law=None, **options) -> C.moe_plan_result:
    """Upcycle, train the MoE from scratch, or train the dense model further? Options are the fields
    of moe_plan_params (dense_tokens, budget_tokens or budget_flops, dense_parameters,
    active_parameters, law_file); laws (structs or dicts) replace those of the file or presets."""
    p = _params(C.moe_plan_params, options, "plan")
    keep = []
    for name, law in (("dense_law", dense_law), ("moe_law", moe_law), ("upcycled_law", upcycled_law)):
        if law is not None:
            s = _law_struct(law)
            keep.append(s)
            setattr(p, name, ctypes.pointer(s))
    r = _result(C.moe_plan_result)
    _check(C.lib.moe_scaling_plan(r, p))
    return r


def run_study(recipe: str, out: str, progress: Optional[Callable[[int, int, str], bool]] = None, **options) -> str:
    """Run (or resume) the upcycling study of a recipe in `out`; returns report.json's path.
    Options are the fields of moe_study_params (threads, tokenizer, data)."""
    p = _params(C.moe_study_params, options, "study")
    callback = _progress_callback(progress)
    if callback is not None:
        p.progress = callback
    _check(C.lib.moe_study_run(str(recipe).encode(), str(out).encode(), p))
    return str(Path(out) / "report.json")


def inspect(path: str) -> C.moe_checkpoint_info:
    """What the checkpoint at `path` is (architecture, sizes, experts, parameters)."""
    info = _result(C.moe_checkpoint_info)
    _check(C.lib.moe_checkpoint_inspect(info, str(path).encode()))
    return info


# ------------------------------------------------------------------------ handles


class _Handle:
    """An owned C handle, freed by close() or at the end of a with block."""

    _free = None

    def __init__(self):
        self._h = ctypes.c_void_p()

    @property
    def handle(self) -> ctypes.c_void_p:
        if not self._h:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._h

    def close(self) -> None:
        if self._h:
            type(self)._free(self._h)
            self._h = ctypes.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Runtime(_Handle):
    """Pinned worker threads (one per core by default) grouped by NUMA node.

    Options are the fields of moe_runtime_params: threads, pin, placement ("row-slice", "expert",
    "interleave", "none"; default row-slice), topology_synthetic, topology_xml.
    """

    _free = staticmethod(C.lib.moe_runtime_free)

    def __init__(self, threads: int = 0, **options):
        super().__init__()
        p = _params(C.moe_runtime_params, dict(options, threads=threads), "runtime")
        _check(C.lib.moe_runtime_create(ctypes.byref(self._h), p))
        self._children = []

    def info(self) -> C.moe_runtime_info:
        i = _result(C.moe_runtime_info)
        _check(C.lib.moe_runtime_get_info(i, self.handle))
        return i

    def measure_peak(self, seconds: float = 0.1) -> float:
        """All workers' measured f32 multiply-add throughput at once, in GFLOP/s."""
        g = ctypes.c_double()
        _check(C.lib.moe_runtime_measure_peak(self.handle, C.MOE_DTYPE_F32, seconds, ctypes.byref(g)))
        return g.value

    def describe(self, json: bool = False) -> str:
        """Nodes, cores, worker pinning, kernel path, OpenBLAS settings (text or JSON)."""
        fmt = C.MOE_TEXT_JSON if json else C.MOE_TEXT_PLAIN
        buf = _fetch(lambda b, n, needed: C.lib.moe_runtime_describe(self.handle, None, fmt, b, n, needed), _text)
        return buf.value.decode()

    def close(self) -> None:
        for child in getattr(self, "_children", []):
            child.close()
        self._children = []
        super().close()


class MoELayer(_Handle):
    """A Mixture-of-Experts SwiGLU layer: forward and backward through the library's kernels.

    Weights use HF layouts: router [E, H], gate/up [E, F, H], down [E, H, F]. Other options are
    the fields of moe_layer_config (routing, capacity_factor, expert_choice,
    shared_expert_intermediate_size, storage, placement, jitter, seed, aux_loss_coef, z_loss_coef,
    compute: C.MOE_DTYPE_BF16 for bf16 compute of the expert products).
    Weight names are the library's ("router", "gate", "up", "down", "shared-gate", ...).
    """

    _free = staticmethod(C.lib.moe_layer_free)

    def __init__(self, runtime: Runtime, hidden_size: int, moe_intermediate_size: int, num_experts: int,
                 top_k: int, **options):
        super().__init__()
        shape = dict(hidden_size=hidden_size, moe_intermediate_size=moe_intermediate_size, num_experts=num_experts,
                     top_k=top_k)
        c = _params(C.moe_layer_config, dict(options, **shape), "layer")
        _check(C.lib.moe_layer_create(ctypes.byref(self._h), runtime.handle, c))
        self.hidden_size, self.num_experts = hidden_size, num_experts
        self._runtime = runtime
        runtime._children.append(self)

    def config(self) -> C.moe_layer_config:
        c = _result(C.moe_layer_config)
        _check(C.lib.moe_layer_get_config(c, self.handle))
        return c

    def set_weight(self, name: str, values: np.ndarray, expert: int = C.MOE_ALL_EXPERTS) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        _check(C.lib.moe_layer_set_weight(self.handle, _enum_value("weight", name), expert, _ptr(values),
                                          values.size))

    def weight(self, name: str, expert: int = C.MOE_ALL_EXPERTS) -> np.ndarray:
        w = _enum_value("weight", name)
        return _fetch(lambda b, n, needed: C.lib.moe_layer_get_weight(self.handle, w, expert, b, n, needed), _floats)

    def grad(self, name: str, expert: int = C.MOE_ALL_EXPERTS) -> np.ndarray:
        w = _enum_value("weight", name)
        return _fetch(lambda b, n, needed: C.lib.moe_layer_get_grad(self.handle, w, expert, b, n, needed), _floats)

    def init_random(self, seed: int = 0, std: float = 0.02) -> None:
        _check(C.lib.moe_layer_init_random(self.handle, seed, std))

    def forward(self, x: np.ndarray, save: bool = False, training: bool = False) -> np.ndarray:
        """out [T, H] for x [T, H] (float32, C-contiguous; passed without copying)."""
        if x.ndim != 2 or x.shape[1] != self.hidden_size:
            raise ValueError(f"x must have shape [T, {self.hidden_size}], got {x.shape}")
        x = _f32(x, "x")
        out = np.empty_like(x)
        flags = (C.MOE_FORWARD_SAVE if save else 0) | (C.MOE_FORWARD_TRAIN if training else 0)
        _check(C.lib.moe_layer_forward(self.handle, _ptr(x), x.shape[0], _ptr(out), flags))
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """dL/dx for dL/d out of the last forward(save=True); weight gradients accumulate."""
        grad_out = _f32(grad_out, "grad_out")
        grad_x = np.empty_like(grad_out)
        _check(C.lib.moe_layer_backward(self.handle, _ptr(grad_out), _ptr(grad_x)))
        return grad_x

    def zero_grad(self) -> None:
        _check(C.lib.moe_layer_zero_grad(self.handle))

    def stats(self) -> tuple[C.moe_layer_stats, np.ndarray]:
        """The last forward's statistics (tokens, dropped, aux_loss, z_loss, ...) and tokens per expert."""
        s = _result(C.moe_layer_stats)

        def counts(n):
            a = np.zeros(n, np.uint64)
            return a, a.ctypes.data_as(_U64P)

        per_expert = _fetch(lambda b, n, needed: C.lib.moe_layer_get_stats(s, self.handle, b, n, needed), counts)
        return s, per_expert.astype(np.int64)

    def routing(self) -> np.ndarray:
        """The last forward's combine weights [T, E]."""
        w = _fetch(lambda b, n, needed: C.lib.moe_layer_get_routing(self.handle, b, n, needed), _floats)
        return w.reshape(-1, self.num_experts)

    def torch_function(self):
        """A torch.autograd.Function running this layer (needs PyTorch; optional)."""
        import torch

        layer = self

        class _MoEFunction(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                out = layer.forward(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32), save=True)
                return torch.from_numpy(out)

            @staticmethod
            def backward(ctx, grad):
                return torch.from_numpy(layer.backward(np.ascontiguousarray(grad.cpu().numpy(), dtype=np.float32)))

        return _MoEFunction


class Model(_Handle):
    """A dense or MoE decoder with its tokenizer (HF directory or GGUF file).

    Options are the fields of moe_model_params: weight_dtype ("default", "f32", "bf16"),
    placement, max_context.
    """

    _free = staticmethod(C.lib.moe_model_free)

    def __init__(self, runtime: Runtime, path: str, **options):
        super().__init__()
        p = _params(C.moe_model_params, options, "model")
        _check(C.lib.moe_model_load(ctypes.byref(self._h), runtime.handle, str(path).encode(), p))
        self._runtime = runtime
        runtime._children.append(self)
        self.info = self._info()
        self.vocab_size = self.info.vocab_size

    def _info(self) -> C.moe_model_info:
        i = _result(C.moe_model_info)
        _check(C.lib.moe_model_get_info(i, self.handle))
        return i

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        data = text.encode()

        def ids(n):
            a = np.zeros(n, np.int32)
            return a, a.ctypes.data_as(_I32P)

        return _fetch(lambda b, n, needed: C.lib.moe_model_tokenize(self.handle, data, len(data), int(add_special),
                                                                    b, n, needed), ids).tolist()

    def detokenize(self, tokens: Iterable[int], skip_special: bool = False) -> str:
        ids = _ids(tokens)
        buf = _fetch(lambda b, n, needed: C.lib.moe_model_detokenize(self.handle, ids.ctypes.data_as(_I32P), ids.size,
                                                                     int(skip_special), b, n, needed), _text)
        return buf.value.decode()

    def logits(self, tokens: Iterable[int]) -> np.ndarray:
        """Logits [T, vocab] of the tokens run as a fresh sequence."""
        ids = _ids(tokens)
        out = _fetch(lambda b, n, needed: C.lib.moe_model_logits(self.handle, ids.ctypes.data_as(_I32P), ids.size,
                                                                 b, n, needed), _floats)
        return out.reshape(ids.size, self.vocab_size)

    def router_stats(self, layer: int) -> np.ndarray:
        """Tokens routed to each expert of MoE layer `layer` since the last evaluation began (empty if dense)."""
        def counts(n):
            a = np.zeros(n, np.uint64)
            return a, a.ctypes.data_as(_U64P)

        return _fetch(lambda b, n, needed: C.lib.moe_model_router_stats(self.handle, layer, b, n, needed),
                      counts).astype(np.int64)

    def eval_text(self, text: str, seq_len: int = 0, max_tokens: int = 0,
                  held_out: float = 0.0) -> C.moe_eval_result:
        """Perplexity over non-overlapping windows (result.perplexity, result.mean_nll, result.aux_loss);
        with held_out F, of the last fraction F of the text's tokens (what a Trainer with eval_fraction F
        holds out)."""
        p = _params(C.moe_eval_params, dict(seq_len=seq_len, max_tokens=max_tokens, held_out=held_out), "eval")
        r = _result(C.moe_eval_result)
        data = text.encode()
        _check(C.lib.moe_model_eval_text(r, self.handle, data, len(data), p))
        return r

    def generate(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, chat: bool = False,
                 on_token: Optional[Callable[[int, str], Optional[bool]]] = None) -> str:
        """The generated text; `on_token(id, text)` streams it and may return False to stop."""
        options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                       chat=int(chat))
        p = _params(C.moe_generate_params, options, "generate")
        # The streamed pieces equal the generated text: gather them in one run.
        pieces: list[bytes] = []

        def receive(token: int, text: bytes, _user) -> int:
            pieces.append(text)
            if on_token is not None and on_token(token, text.decode(errors="replace")) is False:
                return 1
            return 0

        callback = C.moe_token_fn(receive)
        p.on_token = callback
        _check(C.lib.moe_model_generate(None, self.handle, prompt.encode(), p, None, 0, None))
        return b"".join(pieces).decode()


class Trainer(_Handle):
    """Continued pretraining of a Model (loaded with weight_dtype="f32") on token ids or text.

    Options are the fields of moe_trainer_params: seq_len, batch, steps, warmup, lr, min_lr,
    schedule ("cosine", "constant"), beta1, beta2, eps, weight_decay, clip, aux_loss_coef,
    z_loss_coef, train_only ("all", "moe", "routers"), seed, eval_fraction, eval_windows,
    on_nonfinite ("error": a non-finite step fails with MOE_ERR_NUMERIC; "skip": it is skipped),
    micro_batch (sequences per pass, 0 = the whole batch), recompute (0 or 1) and precision
    (C.MOE_DTYPE_F32, or C.MOE_DTYPE_BF16 for mixed precision: bf16 operands of the weight products).
    step() returns a moe_train_stats (loss, aux_loss, z_loss, lr, grad_norm, skipped, ...).
    """

    _free = staticmethod(C.lib.moe_trainer_free)

    def __init__(self, model: Model, data, **options):
        super().__init__()
        p = _params(C.moe_trainer_params, options, "trainer")
        if isinstance(data, str):
            text = data.encode()
            _check(C.lib.moe_trainer_create_text(ctypes.byref(self._h), model.handle, text, len(text), p))
        else:
            ids = _ids(data)
            _check(C.lib.moe_trainer_create(ctypes.byref(self._h), model.handle, ids.ctypes.data_as(_I32P), ids.size,
                                            p))
        self.model = model

    def step(self) -> C.moe_train_stats:
        s = _result(C.moe_train_stats)
        _check(C.lib.moe_trainer_step(s, self.handle))
        return s

    def eval(self) -> float:
        """Mean cross-entropy on the held-out data."""
        v = ctypes.c_double()
        _check(C.lib.moe_trainer_eval(ctypes.byref(v), self.handle))
        return v.value

    def save(self, path: str, force: bool = False) -> None:
        _check(C.lib.moe_trainer_save(self.handle, str(path).encode(), int(force)))

    def resume(self, path: str) -> None:
        _check(C.lib.moe_trainer_resume(self.handle, str(path).encode()))
