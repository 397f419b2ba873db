"""moeupcycle: upcycle dense transformer checkpoints into Mixture-of-Experts models,
and run and train them on CPU.

A high-level API over the C library (``_capi`` mirrors the header 1:1)::

    import moeupcycle as mu
    mu.upcycle("SmolLM2.gguf", "smollm2-moe", num_experts=8, top_k=2, method="drop", ratio=0.5)
    with mu.Runtime() as rt, mu.Model(rt, "smollm2-moe") as model:
        print(model.generate("The capital of France is", max_new_tokens=8))
        print(model.eval_text(open("hamlet.txt").read()).perplexity)

The library is found through $MOEUPCYCLE_LIBRARY, then the package's own lib/
directory, then the system loader path.
"""
from __future__ import annotations

import ctypes
from typing import Callable, Iterable, Optional

import numpy as np

from . import _capi as C

__all__ = ["MoeError", "Runtime", "MoELayer", "Model", "Trainer", "upcycle", "inspect", "version"]

_F32P = ctypes.POINTER(ctypes.c_float)
_I32P = ctypes.POINTER(ctypes.c_int32)


class MoeError(Exception):
    """A failed library call: `code` is the moe_status, `message` says what was wrong."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{message} ({C.lib.moe_status_string(code).decode()})")
        self.code = code
        self.message = message


def _check(status: int) -> None:
    if status != C.MOE_OK:
        raise MoeError(status, C.lib.moe_last_error().decode())


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


def version() -> str:
    """The library's version, e.g. "0.1.0"."""
    return C.lib.moe_version_string().decode()


_UPCYCLE_ENUMS = {
    "method": {"copy": 0, "drop": 1, "noise": 2, "granular": 3, "partition": 4},
    "router_init": {"normal": 0, "uniform": 1, "zeros": 2},
    "routing": {"softmax-topk-renorm": 0, "softmax-topk": 1, "topk-softmax": 2},
    "format": {"mixtral": 0, "qwen2-moe": 1},
    "dtype": {"keep": 0, "f32": 1, "bf16": 2, "f16": 3},
    "partition_select": {"random": 0, "uniform": 1, "importance": 2},
    "granular_scaling": {"down": 0, "cube-root": 1, "none": 2},
}


def upcycle(source: str, output: str, progress: Optional[Callable[[int, int, str], bool]] = None,
            **options) -> C.moe_upcycle_result:
    """Upcycle the dense checkpoint `source` into an MoE checkpoint at `output`.

    Options are the fields of moe_upcycle_params (num_experts, top_k, method, ratio, layers,
    format, dtype, seed, force, ...); enum fields also take their names ("drop", "qwen2-moe").
    `progress(done, total, stage)` may return False to cancel.
    """
    p = C.moe_upcycle_params()
    C.lib.moe_upcycle_params_init(p)
    for key, value in options.items():
        if not hasattr(p, key) or key in ("struct_size", "progress", "user_data"):
            raise TypeError(f"unknown upcycle option {key!r}")
        if key in _UPCYCLE_ENUMS and isinstance(value, str):
            if value not in _UPCYCLE_ENUMS[key]:
                raise ValueError(f"{key} must be one of {sorted(_UPCYCLE_ENUMS[key])}")
            value = _UPCYCLE_ENUMS[key][value]
        if key == "layers" and isinstance(value, str):
            value = value.encode()
        setattr(p, key, value)
    callback = None
    if progress is not None:
        callback = C.moe_progress_fn(lambda done, total, stage, _: 0 if progress(done, total, stage.decode()) is not False else 1)
        p.progress = callback
    r = C.moe_upcycle_result()
    r.struct_size = ctypes.sizeof(r)
    _check(C.lib.moe_upcycle(r, str(source).encode(), str(output).encode(), p))
    return r


def inspect(path: str) -> C.moe_checkpoint_info:
    """What the checkpoint at `path` is (architecture, sizes, experts, parameters)."""
    info = C.moe_checkpoint_info()
    info.struct_size = ctypes.sizeof(info)
    _check(C.lib.moe_checkpoint_inspect(info, str(path).encode()))
    return info


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
    """Pinned worker threads (one per core by default) grouped by NUMA node."""

    _free = staticmethod(C.lib.moe_runtime_free)

    def __init__(self, threads: int = 0, pin: bool = True, placement: str = "row-slice",
                 topology_synthetic: Optional[str] = None):
        super().__init__()
        p = C.moe_runtime_params()
        C.lib.moe_runtime_params_init(p)
        p.threads = threads
        p.pin = 1 if pin else 0
        p.placement = {"row-slice": 0, "expert": 1, "interleave": 2, "none": 3}[placement]
        if topology_synthetic:
            p.topology_synthetic = topology_synthetic.encode()
        _check(C.lib.moe_runtime_create(ctypes.byref(self._h), p))
        self._children = []

    def info(self) -> C.moe_runtime_info:
        i = C.moe_runtime_info()
        i.struct_size = ctypes.sizeof(i)
        _check(C.lib.moe_runtime_get_info(i, self.handle))
        return i

    def describe(self, json: bool = False) -> str:
        """Nodes, cores, worker pinning, OpenBLAS settings (text or JSON)."""
        needed = ctypes.c_size_t()
        fmt = C.MOE_TEXT_JSON if json else C.MOE_TEXT_PLAIN
        st = C.lib.moe_runtime_describe(self.handle, None, fmt, None, 0, ctypes.byref(needed))
        if st not in (C.MOE_OK, C.MOE_ERR_BUFFER_TOO_SMALL):
            _check(st)
        buf = ctypes.create_string_buffer(needed.value)
        _check(C.lib.moe_runtime_describe(self.handle, None, fmt, buf, needed.value, ctypes.byref(needed)))
        return buf.value.decode()

    def close(self) -> None:
        for child in getattr(self, "_children", []):
            child.close()
        self._children = []
        super().close()


_WEIGHTS = {"router": 0, "gate": 1, "up": 2, "down": 3, "shared_gate": 4, "shared_up": 5, "shared_down": 6,
            "shared_expert_gate": 7}
_ROUTING = {"softmax-topk-renorm": 0, "softmax-topk": 1, "topk-softmax": 2, "sigmoid-topk": 3,
            "sigmoid-topk-renorm": 4}


class MoELayer(_Handle):
    """A Mixture-of-Experts SwiGLU layer: forward and backward through the library's kernels.

    Weights use HF layouts: router [E, H], gate/up [E, F, H], down [E, H, F].
    """

    _free = staticmethod(C.lib.moe_layer_free)

    def __init__(self, runtime: Runtime, hidden: int, ffn: int, experts: int, top_k: int,
                 routing: str = "softmax-topk-renorm", shared_ffn: int = 0, storage: str = "f32", **options):
        super().__init__()
        c = C.moe_layer_config()
        C.lib.moe_layer_config_init(c)
        c.hidden, c.ffn, c.experts, c.top_k = hidden, ffn, experts, top_k
        c.routing = _ROUTING[routing]
        c.shared_ffn = shared_ffn
        c.storage = {"f32": C.MOE_DTYPE_F32, "bf16": C.MOE_DTYPE_BF16}[storage]
        for key, value in options.items():
            if not hasattr(c, key) or key == "struct_size":
                raise TypeError(f"unknown layer option {key!r}")
            setattr(c, key, value)
        _check(C.lib.moe_layer_create(ctypes.byref(self._h), runtime.handle, c))
        self.hidden, self.experts = hidden, experts
        self._runtime = runtime
        runtime._children.append(self)

    def _count(self, name: str, expert: int) -> int:
        n = ctypes.c_size_t()
        _check(C.lib.moe_layer_weight_count(ctypes.byref(n), self.handle, _WEIGHTS[name], expert))
        return n.value

    def set_weight(self, name: str, values: np.ndarray, expert: int = -1) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        _check(C.lib.moe_layer_set_weight(self.handle, _WEIGHTS[name], expert, _ptr(values), values.size))

    def weight(self, name: str, expert: int = -1) -> np.ndarray:
        out = np.empty(self._count(name, expert), np.float32)
        _check(C.lib.moe_layer_get_weight(self.handle, _WEIGHTS[name], expert, _ptr(out), out.size))
        return out

    def grad(self, name: str, expert: int = -1) -> np.ndarray:
        out = np.empty(self._count(name, expert), np.float32)
        _check(C.lib.moe_layer_get_grad(self.handle, _WEIGHTS[name], expert, _ptr(out), out.size))
        return out

    def init_random(self, seed: int = 0, std: float = 0.02) -> None:
        _check(C.lib.moe_layer_init_random(self.handle, seed, std))

    def forward(self, x: np.ndarray, save: bool = False, training: bool = False) -> np.ndarray:
        """out [T, H] for x [T, H] (float32, C-contiguous; passed without copying)."""
        if x.ndim != 2 or x.shape[1] != self.hidden:
            raise ValueError(f"x must have shape [T, {self.hidden}], got {x.shape}")
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
        s = C.moe_layer_stats()
        s.struct_size = ctypes.sizeof(s)
        counts = (ctypes.c_uint64 * self.experts)()
        _check(C.lib.moe_layer_get_stats(s, self.handle, counts, self.experts))
        return s, np.array(list(counts), dtype=np.int64)

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
    """A dense or MoE decoder with its tokenizer (HF directory or GGUF file)."""

    _free = staticmethod(C.lib.moe_model_free)

    def __init__(self, runtime: Runtime, path: str, weight_dtype: Optional[str] = None, max_context: int = 0):
        super().__init__()
        p = C.moe_model_params()
        C.lib.moe_model_params_init(p)
        if weight_dtype is not None:
            p.weight_dtype = {"f32": C.MOE_DTYPE_F32, "bf16": C.MOE_DTYPE_BF16}[weight_dtype]
        p.max_context = max_context
        _check(C.lib.moe_model_load(ctypes.byref(self._h), runtime.handle, str(path).encode(), p))
        self._runtime = runtime
        runtime._children.append(self)
        self.info = self._info()
        self.vocab_size = self.info.vocab_size

    def _info(self) -> C.moe_model_info:
        i = C.moe_model_info()
        i.struct_size = ctypes.sizeof(i)
        _check(C.lib.moe_model_get_info(i, self.handle))
        return i

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        data = text.encode()
        n = ctypes.c_size_t()
        st = C.lib.moe_model_tokenize(self.handle, data, len(data), int(add_special), None, 0, ctypes.byref(n))
        if st not in (C.MOE_OK, C.MOE_ERR_BUFFER_TOO_SMALL):
            _check(st)
        out = np.empty(max(n.value, 1), np.int32)
        _check(C.lib.moe_model_tokenize(self.handle, data, len(data), int(add_special), out.ctypes.data_as(_I32P),
                                        n.value, ctypes.byref(n)))
        return out[:n.value].tolist()

    def detokenize(self, tokens: Iterable[int], skip_special: bool = False) -> str:
        ids = _ids(tokens)
        needed = ctypes.c_size_t()
        st = C.lib.moe_model_detokenize(self.handle, ids.ctypes.data_as(_I32P), ids.size, int(skip_special), None, 0,
                                        ctypes.byref(needed))
        if st not in (C.MOE_OK, C.MOE_ERR_BUFFER_TOO_SMALL):
            _check(st)
        buf = ctypes.create_string_buffer(needed.value)
        _check(C.lib.moe_model_detokenize(self.handle, ids.ctypes.data_as(_I32P), ids.size, int(skip_special), buf,
                                          needed.value, ctypes.byref(needed)))
        return buf.value.decode()

    def logits(self, tokens: Iterable[int]) -> np.ndarray:
        """Logits [T, vocab] of the tokens run as a fresh sequence."""
        ids = _ids(tokens)
        out = np.empty((ids.size, self.vocab_size), np.float32)
        _check(C.lib.moe_model_logits(self.handle, ids.ctypes.data_as(_I32P), ids.size, _ptr(out), out.size))
        return out

    def eval_text(self, text: str, seq_len: int = 0, max_tokens: int = 0) -> C.moe_eval_result:
        """Perplexity over non-overlapping windows (result.perplexity, result.mean_nll)."""
        p = C.moe_eval_params()
        C.lib.moe_eval_params_init(p)
        p.seq_len, p.max_tokens = seq_len, max_tokens
        r = C.moe_eval_result()
        r.struct_size = ctypes.sizeof(r)
        data = text.encode()
        _check(C.lib.moe_model_eval_text(r, self.handle, data, len(data), p))
        return r

    def generate(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, chat: bool = False,
                 on_token: Optional[Callable[[int, str], Optional[bool]]] = None) -> str:
        """The generated text; `on_token(id, text)` streams it and may return False to stop."""
        p = C.moe_generate_params()
        C.lib.moe_generate_params_init(p)
        p.max_new_tokens, p.temperature, p.top_k, p.top_p, p.seed, p.chat = (
            max_new_tokens, temperature, top_k, top_p, seed, int(chat))
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
    """Continued pretraining of a Model (loaded with weight_dtype="f32") on token ids or text."""

    _free = staticmethod(C.lib.moe_trainer_free)

    def __init__(self, model: Model, data, **options):
        super().__init__()
        p = C.moe_trainer_params()
        C.lib.moe_trainer_params_init(p)
        for key, value in options.items():
            if key == "train_only" and isinstance(value, str):
                value = {"all": 0, "moe": 1, "routers": 2}[value]
            if key == "schedule" and isinstance(value, str):
                value = {"cosine": 0, "constant": 1}[value]
            if not hasattr(p, key) or key == "struct_size":
                raise TypeError(f"unknown trainer option {key!r}")
            setattr(p, key, value)
        if isinstance(data, str):
            text = data.encode()
            _check(C.lib.moe_trainer_create_text(ctypes.byref(self._h), model.handle, text, len(text), p))
        else:
            ids = _ids(data)
            _check(C.lib.moe_trainer_create(ctypes.byref(self._h), model.handle, ids.ctypes.data_as(_I32P), ids.size, p))
        self.model = model

    def step(self) -> C.moe_train_stats:
        s = C.moe_train_stats()
        s.struct_size = ctypes.sizeof(s)
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
