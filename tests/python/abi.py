"""The one set of test helpers over the C ABI (through the binding's ctypes mirror `_capi`):
status checks and messages, parameter and result structs, and thin owners of runtimes, layers,
models and trainers that keep the raw handles (`.h`) for tests that call the C functions
themselves. Every output buffer is read by the header's rule: ask with NULL, then fill."""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

import moeupcycle
from moeupcycle import _capi as C

# The weights by the names the reference code and the tests use; the values are the header's.
WEIGHT_IDS = {"router": C.MOE_WEIGHT_ROUTER, "gate": C.MOE_WEIGHT_GATE, "up": C.MOE_WEIGHT_UP,
              "down": C.MOE_WEIGHT_DOWN, "shared_gate": C.MOE_WEIGHT_SHARED_GATE,
              "shared_up": C.MOE_WEIGHT_SHARED_UP, "shared_down": C.MOE_WEIGHT_SHARED_DOWN,
              "shared_expert_gate": C.MOE_WEIGHT_SHARED_EXPERT_GATE}


# --------------------------------------------------------------------------- statuses and messages


class LibError(Exception):
    """A failed call: `code` is the moe_status, `message` is moe_last_error()."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def last_error() -> str:
    return C.lib.moe_last_error().decode()


def check(st):
    if st != C.MOE_OK:
        raise LibError(st, last_error())


def expect(status, code, *fragments):
    """Asserts the status code and that moe_last_error() names the problem: each fragment must appear
    (case-insensitive); a fragment "a|b" is satisfied by either word. Returns the message."""
    msg = last_error()
    assert status == code, f"expected {code}, got {status}: {msg!r}"
    for f in fragments:
        assert any(w.lower() in msg.lower() for w in f.split("|")), f"{f!r} not in {msg!r}"
    return msg


def raises(code, fragment, fn, *args, **kw):
    """Calls a helper that raises LibError; asserts its code and that the message contains `fragment`."""
    try:
        fn(*args, **kw)
    except LibError as e:
        assert e.code == code, e.message
        assert fragment in e.message, e.message
        return e.message
    raise AssertionError(f"no error; expected status {code} mentioning {fragment!r}")


# --------------------------------------------------------------------------- structs and buffers


def params(cls, **fields):
    """A parameter struct with the library's defaults and `fields` set (enum fields also take names)."""
    return moeupcycle._params(cls, fields, cls.__name__)


def result(cls):
    """A result struct with its struct_size set."""
    r = cls()
    r.struct_size = ctypes.sizeof(r)
    return r


def fptr(a):
    if a is None:
        return None
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def ids_array(ids):
    return (ctypes.c_int32 * max(len(ids), 1))(*ids)


def ask(call):
    """The size an output-buffer call needs: `call(NULL, 0, &needed)` must return MOE_OK."""
    needed = ctypes.c_size_t(12345)
    st = call(None, 0, ctypes.byref(needed))
    assert st == C.MOE_OK, (st, last_error())
    return needed.value


# --------------------------------------------------------------------------- checkpoints


def upcycle(src, dst, progress=None, **fields):
    p = params(C.moe_upcycle_params, **fields)
    if progress is not None:
        p.progress = progress
    r = result(C.moe_upcycle_result)
    check(C.lib.moe_upcycle(r, str(src).encode(), str(dst).encode(), p))
    return r


def inspect(path):
    info = result(C.moe_checkpoint_info)
    check(C.lib.moe_checkpoint_inspect(info, str(path).encode()))
    return info


# --------------------------------------------------------------------------- runtime


class Runtime:
    """A moe_runtime; close() also frees the layers and models made on it that are still open."""

    def __init__(self, threads=2, placement=None, synthetic=None, pin=None):
        p = params(C.moe_runtime_params, threads=threads)
        if placement is not None:
            p.placement = placement
        if pin is not None:
            p.pin = pin
        self._synthetic = synthetic.encode() if synthetic else None
        p.topology_synthetic = self._synthetic
        h = ctypes.c_void_p()
        check(C.lib.moe_runtime_create(ctypes.byref(h), p))
        self.h = h
        self.children = []

    def info(self):
        i = result(C.moe_runtime_info)
        check(C.lib.moe_runtime_get_info(i, self.h))
        return i

    def describe(self, cfg=None, fmt=C.MOE_TEXT_JSON):
        n = ask(lambda b, c, needed: C.lib.moe_runtime_describe(self.h, cfg, fmt, b, c, needed))
        buf = ctypes.create_string_buffer(n)
        needed = ctypes.c_size_t(0)
        check(C.lib.moe_runtime_describe(self.h, cfg, fmt, buf, n, ctypes.byref(needed)))
        assert needed.value == n == len(buf.value) + 1
        return buf.value.decode()

    def close(self):
        for child in self.children:
            child.close()
        self.children = []
        if self.h:
            C.lib.moe_runtime_free(self.h)
            self.h = None


# --------------------------------------------------------------------------- MoE layer


def layer_config(hidden_size, moe_intermediate_size, num_experts, top_k, **fields):
    return params(C.moe_layer_config, hidden_size=hidden_size, moe_intermediate_size=moe_intermediate_size,
                  num_experts=num_experts, top_k=top_k, **fields)


class Layer:
    """A moe_layer made from a config (keyword fields of moe_layer_config) or an existing handle."""

    def __init__(self, rt: Runtime, handle=None, **cfg):
        self.rt = rt
        self._keep = []
        if handle is None:
            config = layer_config(**cfg)
            h = ctypes.c_void_p()
            check(C.lib.moe_layer_create(ctypes.byref(h), rt.h, config))
            handle = h
        self.h = handle
        c = result(C.moe_layer_config)
        check(C.lib.moe_layer_get_config(c, self.h))
        self.config = c
        self.H, self.E = c.hidden_size, c.num_experts

    def close(self):
        if self.h:
            C.lib.moe_layer_free(self.h)
            self.h = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def count(self, name, expert=C.MOE_ALL_EXPERTS):
        n = ctypes.c_size_t()
        check(C.lib.moe_layer_weight_count(ctypes.byref(n), self.h, WEIGHT_IDS[name], expert))
        return n.value

    def set(self, name, a, expert=C.MOE_ALL_EXPERTS):
        a = np.ascontiguousarray(a, np.float32)
        check(C.lib.moe_layer_set_weight(self.h, WEIGHT_IDS[name], expert, fptr(a), a.size))

    def set_all(self, W):
        for k, v in W.items():
            self.set(k, v)

    def _floats(self, fn, name, expert, fill):
        """A weight or gradient by the output-buffer rule; its size must equal moe_layer_weight_count."""
        n = self.count(name, expert)
        assert ask(lambda b, c, needed: fn(self.h, WEIGHT_IDS[name], expert, b, c, needed)) == n, name
        out = np.full(n, fill, np.float32)
        needed = ctypes.c_size_t(0)
        check(fn(self.h, WEIGHT_IDS[name], expert, fptr(out), n, ctypes.byref(needed)))
        assert needed.value == n
        return out

    def get(self, name, expert=C.MOE_ALL_EXPERTS):
        return self._floats(C.lib.moe_layer_get_weight, name, expert, 0.0)

    def grad(self, name, expert=C.MOE_ALL_EXPERTS):
        return self._floats(C.lib.moe_layer_get_grad, name, expert, np.nan)

    def grads(self, names):
        return {k: self.grad(k) for k in names}

    def forward(self, x, flags=0):
        x = np.ascontiguousarray(x, np.float32)
        T = x.shape[0]
        out = np.full((T, self.H), np.nan, np.float32)
        check(C.lib.moe_layer_forward(self.h, fptr(x) if T else None, T, fptr(out) if T else None, flags))
        return out

    def backward(self, dout):
        dout = np.ascontiguousarray(dout, np.float32)
        dx = np.full(dout.shape, np.nan, np.float32)
        if dout.size == 0:
            dout = np.zeros(1, np.float32)
            dx = np.zeros(1, np.float32)
        check(C.lib.moe_layer_backward(self.h, fptr(dout), fptr(dx)))
        return dx

    def stats(self):
        s = result(C.moe_layer_stats)
        assert ask(lambda b, c, needed: C.lib.moe_layer_get_stats(s, self.h, b, c, needed)) == self.E
        tpe = (ctypes.c_uint64 * self.E)()
        needed = ctypes.c_size_t(0)
        check(C.lib.moe_layer_get_stats(s, self.h, tpe, self.E, ctypes.byref(needed)))
        assert needed.value == self.E
        return s, np.array(list(tpe), dtype=np.int64)

    def routing(self, T):
        assert ask(lambda b, c, needed: C.lib.moe_layer_get_routing(self.h, b, c, needed)) == T * self.E
        out = np.full(max(T * self.E, 1), np.nan, np.float32)
        check(C.lib.moe_layer_get_routing(self.h, fptr(out), T * self.E, None))
        return out[:T * self.E].reshape(T, self.E)


# --------------------------------------------------------------------------- models


def load_status(rt, path, p=None):
    """moe_model_load's status (the model, if any, freed again)."""
    h = ctypes.c_void_p()
    st = C.lib.moe_model_load(ctypes.byref(h), rt.h, str(path).encode(), p)
    if st == C.MOE_OK:
        C.lib.moe_model_free(h)
    return st


class Model:
    """A loaded moe_model (keyword fields of moe_model_params); freed by its runtime's close()."""

    def __init__(self, rt, path, **fields):
        h = ctypes.c_void_p()
        check(C.lib.moe_model_load(ctypes.byref(h), rt.h, str(path).encode(), params(C.moe_model_params, **fields)))
        self.h = h
        self.path = Path(path)
        rt.children.append(self)
        self.info = self.get_info()
        self.V = self.info.vocab_size

    def close(self):
        if self.h:
            C.lib.moe_model_free(self.h)
            self.h = None

    def get_info(self):
        i = result(C.moe_model_info)
        check(C.lib.moe_model_get_info(i, self.h))
        return i

    def tokenize(self, text, add_special=False):
        data = text.encode() if isinstance(text, str) else text
        n = ask(lambda b, c, needed: C.lib.moe_model_tokenize(self.h, data, len(data), int(add_special), b, c,
                                                              needed))
        buf = (ctypes.c_int32 * max(n, 1))()
        needed = ctypes.c_size_t(0)
        check(C.lib.moe_model_tokenize(self.h, data, len(data), int(add_special), buf, n, ctypes.byref(needed)))
        assert needed.value == n
        return list(buf[:n])

    def detokenize_bytes(self, ids, skip_special=False):
        arr = ids_array(ids)
        n = ask(lambda b, c, needed: C.lib.moe_model_detokenize(self.h, arr, len(ids), int(skip_special), b, c,
                                                                needed))
        buf = ctypes.create_string_buffer(n)
        needed = ctypes.c_size_t(0)
        check(C.lib.moe_model_detokenize(self.h, arr, len(ids), int(skip_special), buf, n, ctypes.byref(needed)))
        assert needed.value == n and buf.raw[n - 1] == 0
        return buf.raw[:n - 1]

    def detokenize(self, ids, skip_special=False):
        return self.detokenize_bytes(ids, skip_special).decode()

    def logits(self, ids):
        arr = ids_array(ids)
        n = ask(lambda b, c, needed: C.lib.moe_model_logits(self.h, arr, len(ids), b, c, needed))
        assert n == len(ids) * self.V
        out = np.empty((len(ids), self.V), dtype=np.float32)
        check(C.lib.moe_model_logits(self.h, arr, len(ids), fptr(out), out.size, None))
        return out

    def eval_params(self, seq_len=8, max_tokens=0, progress=None, held_out=0.0):
        p = params(C.moe_eval_params, seq_len=seq_len, max_tokens=max_tokens, held_out=held_out)
        if progress is not None:
            p.progress = progress
        return p

    def eval_tokens(self, ids, **kw):
        r = result(C.moe_eval_result)
        check(C.lib.moe_model_eval_tokens(r, self.h, ids_array(ids), len(ids), self.eval_params(**kw)))
        return r

    def eval_text(self, text, **kw):
        data = text.encode() if isinstance(text, str) else text
        r = result(C.moe_eval_result)
        check(C.lib.moe_model_eval_text(r, self.h, data, len(data), self.eval_params(**kw)))
        return r

    def router_stats(self, layer):
        n = ask(lambda b, c, needed: C.lib.moe_model_router_stats(self.h, layer, b, c, needed))
        counts = (ctypes.c_uint64 * max(n, 1))()
        needed = ctypes.c_size_t(0)
        check(C.lib.moe_model_router_stats(self.h, layer, counts, n, ctypes.byref(needed)))
        assert needed.value == n
        return list(counts[:n])

    def generate_status(self, prompt, capacity, *, stream=False, stop_after=None, **kw):
        """One moe_model_generate call with a text buffer of `capacity` bytes (None: a NULL buffer).
        Returns (status, result, buffer bytes or None, needed, streamed [(token, piece bytes)])."""
        p = params(C.moe_generate_params, **kw)
        streamed = []

        @C.moe_token_fn
        def on_token(token, text, user):
            streamed.append((token, text))
            return 1 if stop_after is not None and len(streamed) >= stop_after else 0

        if stream or stop_after is not None:
            p.on_token = on_token
        r = result(C.moe_generate_result)
        needed = ctypes.c_size_t(0)
        buf = None if capacity is None else ctypes.create_string_buffer(b"\x7f" * max(capacity, 1), max(capacity, 1))
        st = C.lib.moe_model_generate(r, self.h, prompt.encode(), p, buf, capacity or 0, ctypes.byref(needed))
        return st, r, None if buf is None else buf.raw, needed.value, streamed

    def generate(self, prompt, *, capacity=None, **kw):
        """Asks for the text's size (a first generation with a NULL buffer) unless `capacity` is given, then
        generates into a buffer of that size. Returns (result, text bytes, needed, streamed)."""
        if capacity is None:
            st, _, _, capacity, _ = self.generate_status(prompt, None, **kw)
            check(st)
        st, r, raw, needed, streamed = self.generate_status(prompt, capacity, **kw)
        check(st)
        assert needed <= capacity and raw[needed - 1] == 0
        return r, raw[:needed - 1], needed, streamed

    def greedy_chain(self, prompt_ids, n):
        ids = list(prompt_ids)
        for _ in range(n):
            ids.append(int(np.argmax(self.logits(ids)[-1])))
        return ids[len(prompt_ids):]


# --------------------------------------------------------------------------- training


class Trainer:
    """A moe_trainer over token ids (keyword fields of moe_trainer_params)."""

    def __init__(self, model, tokens, **fields):
        self.h = ctypes.c_void_p()
        check(C.lib.moe_trainer_create(ctypes.byref(self.h), model.h, ids_array(tokens), len(tokens),
                                       params(C.moe_trainer_params, **fields)))

    def step(self):
        s = result(C.moe_train_stats)
        check(C.lib.moe_trainer_step(s, self.h))
        return s

    def get_step(self):
        step = ctypes.c_uint64()
        check(C.lib.moe_trainer_get_step(step, self.h))
        return step.value

    def save(self, path, force=0):
        check(C.lib.moe_trainer_save(self.h, str(path).encode(), force))

    def close(self):
        C.lib.moe_trainer_free(self.h)
        self.h = None
