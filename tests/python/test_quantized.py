"""Weights kept quantized in memory (moe_model_params.weight_dtype MOE_DTYPE_Q8_0, Q4_0 and Q4_1, and the
default for a quantized GGUF) through the C ABI and the CLI.

Products of more than 16 tokens dequantize weight rows exactly as GGUF dequantization does, so their logits
equal a numpy forward (reference.py) of the weights as held: a file's own blocks, or matrices quantized with
GGML's rounding by the gguf package. Products of at most 16 tokens (decoding) round their input to int8 per
block of 32 (scale max|x| / 127) for integer dot products; a numpy forward that rounds the input of each
quantized product the same way gives the library's logits to float rounding.

One property of that rounding shapes the checks of the int8 path: an activation within float rounding of the
midpoint between two int8 steps can round either way under another summation order (numpy's, another kernel
path's, another batch size's), and that one step then spreads to every later layer and position. On small
models such flips are rare, so they are held tightly on most rows and loosely on all; on the 30-layer
SmolLM2 they decorrelate the rounding altogether, so it is held to the f32 load by distribution-level bounds.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import quants

import reference as ref
from layer_reference import int8_activations
from abi import Model, Trainer, expect, ids_array, load_status, params, upcycle
from gguf_models import TYPES, moe_weights_from_gguf, smollm2_dequantized, smollm2_stored_types, write_llama_gguf
from models import CLI, bf16_round, dense_weights, read_safetensors_dir
from moeupcycle import _capi as C
from test_gguf_export import export
from test_model import TOKENS20, hamlet, smollm2_path, tiny_config, write_tiny  # noqa: F401  (module fixtures)

HERE = Path(__file__).resolve().parent
QTYPES = {"Q8_0": C.MOE_DTYPE_Q8_0, "Q4_0": C.MOE_DTYPE_Q4_0, "Q4_1": C.MOE_DTYPE_Q4_1}
# Bytes per block of 32 weights in GGML's layout (f16 scale, and for Q4_1 an f16 minimum).
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
PARIS = 7042  # " Paris" in SmolLM2's vocabulary
DECODE_WINDOWS = (0, 1000, 3000)  # offsets of 16-token Hamlet windows for the int8 path
PREFIXES = (1, 7, 16)  # prefix lengths of TOKENS20 run on the small models' int8 path


# --------------------------------------------------------------------------- numpy models of the held weights


def ggml_round(a, qtype):
    """`a` [..., cols] quantized to GGML's `qtype` blocks along its last axis and dequantized (the gguf package)."""
    t = TYPES[qtype]
    return quants.dequantize(quants.quantize(a, t), t).reshape(a.shape).astype(np.float32)


def blockwise(a):
    """Whether the library can hold matrix `a` quantized: a whole number of 32-weight blocks per row."""
    return a.ndim == 2 and a.shape[1] % 32 == 0


def held(weights, qtype, stored=None):
    """The weights as a load with weight_dtype `qtype` holds them: each matrix of whole blocks quantized to
    `qtype` with GGML's rounding, unless `stored` (HF name -> type name) says the file holds it in that type
    already (kept as it is); everything else as given."""
    stored = stored or {}
    return {k: ggml_round(v, qtype) if blockwise(v) and stored.get(k) != qtype else v for k, v in weights.items()}


def int8_linear(x, w):
    """A weight product as the int8 path computes it: the input rounded where the matrix is held quantized."""
    return (int8_activations(x) if w.shape[1] % 32 == 0 else x) @ w.T


def row_errors(got, want):
    """Per row: max |got - want| / max |want|."""
    return np.abs(got - want).max(-1) / np.abs(want).max(-1)


def assert_mostly_exact(errors, what, exact=1e-5, share=0.75, loose=0.05):
    """Rows of the int8 path against a model of it: most to float rounding, all within a few int8 steps'
    spread (a flipped rounding changes the rows after it by about 1%)."""
    errors = np.asarray(errors)
    got = float(np.mean(errors <= exact))
    print(f"{what}: {got:.0%} of {errors.size} rows within {exact:g} (median {np.median(errors):.1e}, "
          f"max {errors.max():.1e})")
    assert got >= share, (what, errors)
    assert errors.max() <= loose, (what, errors)


def log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def kl_divergence(p_logits, q_logits):
    """Per row: KL(softmax(p) || softmax(q)) in nats."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


@contextlib.contextmanager
def loaded(rt, path, dtype):
    """A model loaded for one test and freed after it (SmolLM2's loads are hundreds of MB)."""
    m = Model(rt, path, weight_dtype=dtype)
    try:
        yield m
    finally:
        m.close()
        rt.children.remove(m)


def held_row_bytes(qtype, cols):
    """Bytes of one row as the library holds it: blocks in pairs (64 int8 or 32 bytes of nibbles), then
    the pairs' f16 scales (and Q4_1's minima), padded to 64 bytes."""
    pairs = (cols // 32 + 1) // 2
    n = pairs * (64 if qtype == "Q8_0" else 32) + pairs * 4 * (2 if qtype == "Q4_1" else 1)
    return (n + 63) // 64 * 64


def ggml_bytes(shapes, qtype):
    return sum(r * c // 32 * BLOCK_BYTES[qtype] for r, c in shapes)


# --------------------------------------------------------------------------- the real SmolLM2-135M-Instruct


@pytest.fixture(scope="module")
def f32(rt, smollm2_path):
    return Model(rt, smollm2_path, weight_dtype=C.MOE_DTYPE_F32)


@pytest.fixture(scope="module")
def quant(rt, smollm2_path):
    """The default load: the file's Q4_1 layers and Q8_0 embedding (the tied LM head) kept as they are."""
    return Model(rt, smollm2_path)


@pytest.fixture(scope="module")
def hamlet_ids(f32, hamlet):  # noqa: F811
    ids = f32.tokenize(hamlet)
    assert len(ids) > 4096
    return ids


@pytest.fixture(scope="module")
def decode_windows(hamlet_ids):
    return np.array([hamlet_ids[o:o + 16] for o in DECODE_WINDOWS], dtype=np.int32)


@pytest.fixture(scope="module")
def f32_decode_logits(f32, decode_windows):
    return np.stack([f32.logits(list(w)) for w in decode_windows])


@pytest.fixture(scope="module")
def f32_eval(f32, hamlet_ids):
    return f32.eval_tokens(hamlet_ids, seq_len=512, max_tokens=1024)


@pytest.fixture(scope="module")
def smollm2_weights(smollm2_path):
    """HF-order weights dequantized by the gguf package, the reference config, and each tensor's stored type."""
    w, cfg = smollm2_dequantized(smollm2_path)
    return w, cfg, smollm2_stored_types(smollm2_path)


def test_default_load_keeps_the_files_blocks(f32, quant, smollm2_path):
    stored = smollm2_stored_types(smollm2_path)
    assert sorted(set(stored.values())) == ["F32", "Q4_1", "Q8_0"] and stored["model.embed_tokens.weight"] == "Q8_0"
    assert f32.info.weight_dtype == C.MOE_DTYPE_F32
    assert quant.info.weight_dtype == C.MOE_DTYPE_Q4_1
    # Sizes from the file's matrices: 210 Q4_1 ones in the layers, the tied Q8_0 embedding (576 wide).
    shapes = [tuple(int(d) for d in reversed(t.shape)) for t in gguf.GGUFReader(str(smollm2_path)).tensors
              if len(t.shape) == 2]
    layer_shapes = [s for s in shapes if s[0] != 49152]
    assert len(layer_shapes) == 210
    elements = sum(r * c for r, c in shapes)
    want = ggml_bytes(layer_shapes, "Q4_1") + ggml_bytes([(49152, 576)], "Q8_0")
    assert f32.info.weight_bytes == 4 * elements
    # Rows are padded for the integer kernels: a few percent over GGML's own size.
    print(f"SmolLM2 held: f32 {f32.info.weight_bytes / 1e6:.1f} MB, default {quant.info.weight_bytes / 1e6:.1f} MB "
          f"(GGML blocks {want / 1e6:.1f} MB); per token {f32.info.weight_bytes_per_token / 1e6:.1f} MB vs "
          f"{quant.info.weight_bytes_per_token / 1e6:.1f} MB")
    assert want <= quant.info.weight_bytes <= 1.1 * want
    ratio = quant.info.weight_bytes_per_token / f32.info.weight_bytes_per_token
    assert 0.15 <= ratio <= 0.25, ratio
    # Per token: every matrix (the tied embedding once, as the LM head) and one embedding row.
    assert 576 * 34 // 32 <= quant.info.weight_bytes_per_token - quant.info.weight_bytes <= 1024
    assert f32.info.weight_bytes_per_token - f32.info.weight_bytes == 576 * 4


def test_decode_logits_are_close_to_f32_but_not_equal(quant, decode_windows, f32_decode_logits):
    got = np.stack([quant.logits(list(w)) for w in decode_windows])
    want = f32_decode_logits
    diff = np.abs(got - want)
    kl = kl_divergence(want, got)
    rel = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
    top1 = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    print(f"SmolLM2 Q4_1, 16-token windows (int8 path) vs f32: max |diff| {diff.max():.3f}, relative L2 max "
          f"{rel.max():.3f}, KL mean {kl.mean():.4f} max {kl.max():.4f}, top-1 agreement {top1:.0%}")
    # Measured: max |diff| 1.03, relative L2 <= 0.113, KL mean 0.0049 max 0.0145, top-1 45 of 48.
    assert diff.max() <= 2.0
    assert rel.max() <= 0.2
    assert kl.mean() <= 0.01 and kl.max() <= 0.05
    assert top1 >= 0.8
    # The int8 path ran: every position moved (measured: by 0.38 or more; the f32 kernels agree to 1e-4).
    assert diff.max(-1).min() >= 1e-2


@pytest.mark.parametrize("count", [17, 40, 64])
def test_long_products_equal_f32(quant, f32, hamlet_ids, count):
    """More than 16 tokens dequantize weight rows as the f32 load did: the same logits, bit for bit."""
    ids = hamlet_ids[:count]
    np.testing.assert_array_equal(quant.logits(ids), f32.logits(ids))


def test_evaluation_in_long_windows_equals_f32(quant, f32_eval, hamlet_ids):
    r = quant.eval_tokens(hamlet_ids, seq_len=512, max_tokens=1024)
    print(f"SmolLM2 perplexity on 1024 Hamlet tokens: f32 {f32_eval.perplexity:.4f}, default {r.perplexity:.4f}")
    assert (r.tokens_scored, r.windows) == (f32_eval.tokens_scored, f32_eval.windows)
    assert r.mean_nll == f32_eval.mean_nll


# The LM head runs in chunks (64 rows for logits, 256 for evaluation): a last chunk of 1 to 16 rows
# still belongs to a long call and is computed as the rest of it.
@pytest.mark.parametrize("what, count", [("logits", 65), ("logits", 80), ("logits", 200), ("eval", 270)])
def test_every_row_of_a_long_call_equals_f32(quant, f32, hamlet_ids, what, count):
    if what == "logits":
        np.testing.assert_array_equal(quant.logits(hamlet_ids[:count]), f32.logits(hamlet_ids[:count]))
    else:
        a = quant.eval_tokens(hamlet_ids, seq_len=count, max_tokens=2 * count)
        b = f32.eval_tokens(hamlet_ids, seq_len=count, max_tokens=2 * count)
        assert a.mean_nll == b.mean_nll


def test_evaluation_in_decode_windows_is_close_to_f32(quant, f32, hamlet_ids):
    """16-token windows run every product on the int8 path; the perplexity moves by well under 1%."""
    a = quant.eval_tokens(hamlet_ids, seq_len=16, max_tokens=512)
    b = f32.eval_tokens(hamlet_ids, seq_len=16, max_tokens=512)
    print(f"SmolLM2 mean NLL in 16-token windows: f32 {b.mean_nll:.6f}, default {a.mean_nll:.6f}")
    assert a.tokens_scored == b.tokens_scored == 480
    # Measured: 5.057449 against 5.066576.
    assert a.mean_nll != b.mean_nll
    assert abs(a.mean_nll - b.mean_nll) <= 0.03


def test_greedy_generation_through_the_kv_cache(quant):
    prompt = "The capital of France is"
    r, text, _, streamed = quant.generate(prompt, max_new_tokens=6, stream=True)
    assert text.decode().startswith(" Paris"), text
    assert streamed[0][0] == PARIS
    # Decoding one token at a time through the cache picks what fresh sequences of the same tokens pick
    # (measured: top-two margins of 1.17 logits or more at these positions; running the same position in a
    # batch of another size moves those two logits by 0.26 at most).
    chain = quant.greedy_chain(quant.tokenize(prompt), 4)
    assert [t for t, _ in streamed[:4]] == chain


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "Q4_0"])
def test_quantized_at_load(rt, smollm2_path, smollm2_weights, f32, f32_eval, hamlet_ids, qtype):
    """An explicit type keeps the blocks the file stores in it and quantizes the rest with GGML's rounding:
    long products equal a numpy forward of those weights; the perplexity follows the type's precision."""
    w, cfg, stored = smollm2_weights
    want_weights = held(w, qtype, stored)
    ids = hamlet_ids[:24]
    want = ref.forward(want_weights, cfg, ids)
    del want_weights
    with loaded(rt, smollm2_path, QTYPES[qtype]) as m:
        assert m.info.weight_dtype == QTYPES[qtype]
        elements = f32.info.weight_bytes // 4
        want_bytes = elements * BLOCK_BYTES[qtype] // 32  # GGML's size; padded rows add up to 16% (Q4_0)
        assert want_bytes <= m.info.weight_bytes <= 1.25 * want_bytes
        got = m.logits(ids)
        diff = np.abs(got - want).max()
        r = m.eval_tokens(hamlet_ids, seq_len=512, max_tokens=1024)
    ratio = r.perplexity / f32_eval.perplexity
    print(f"SmolLM2 as {qtype}: 24-token logits vs numpy {diff:.1e}; perplexity {r.perplexity:.4f} "
          f"(f32 {f32_eval.perplexity:.4f}, ratio {ratio:.4f})")
    assert diff <= 1e-3
    # Measured: Q8_0 1.0020; Q4_1 1.0899 (its layers are the file's, the embedding/LM head requantized from
    # Q8_0); Q4_0 1.3197 (4-bit symmetric blocks requantizing Q4_1 values, the LM head included).
    lo, hi = {"Q8_0": (0.99, 1.01), "Q4_1": (1.02, 1.2), "Q4_0": (1.1, 1.5)}[qtype]
    assert lo <= ratio <= hi, ratio


@pytest.mark.parametrize("dtype", [C.MOE_DTYPE_F16, 6, 99, -2])
def test_other_weight_dtypes_are_refused(rt, small, dtype):
    path, _ = small["h64"]
    st = load_status(rt, path, params(C.moe_model_params, weight_dtype=dtype))
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "weight_dtype", "q8_0")


def test_training_needs_f32_weights(rt, small, quant):
    path, _ = small["h64"]
    tokens = ids_array([(7 * i) % 250 for i in range(600)])
    for dtype in (C.MOE_DTYPE_Q8_0, C.MOE_DTYPE_Q4_1):
        with loaded(rt, path, dtype) as m:
            h = ctypes.c_void_p()
            expect(C.lib.moe_trainer_create(ctypes.byref(h), m.h, tokens, 600, None), C.MOE_ERR_UNSUPPORTED, "f32")
            assert not h.value
    h = ctypes.c_void_p()
    expect(C.lib.moe_trainer_create(ctypes.byref(h), quant.h, tokens, 600, None), C.MOE_ERR_UNSUPPORTED, "f32")
    # The same checkpoint loaded in f32 trains.
    with loaded(rt, path, C.MOE_DTYPE_F32) as m:
        t = Trainer(m, [(7 * i) % 250 for i in range(600)], seq_len=16, batch=2, steps=1)
        assert np.isfinite(t.step().loss)
        t.close()


# --------------------------------------------------------------------------- small checkpoints, exact models


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Tiny HF llama checkpoints (f32 safetensors): rows of 2 and 4 blocks (h64), and of 3 and 5 blocks (h96:
    a half-empty last pair of blocks)."""
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for name, hidden, ffn, seed in (("h64", 64, 128, 21), ("h96", 96, 160, 22)):
        stored = write_tiny(root / name, hidden=hidden, ffn=ffn, seed=seed)
        out[name] = (root / name, stored)
    return out


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_hf_checkpoint_quantized_at_load(rt, small, qtype):
    for name, (path, weights) in small.items():
        cfg = tiny_config(path)
        with loaded(rt, path, C.MOE_DTYPE_DEFAULT) as f:
            assert f.info.weight_dtype == C.MOE_DTYPE_F32  # an f32 checkpoint stays f32 by default
            f_logits, f_bytes = f.logits(TOKENS20), f.info.weight_bytes
        with loaded(rt, path, QTYPES[qtype]) as m:
            assert m.info.weight_dtype == QTYPES[qtype]
            assert m.info.weight_bytes < f_bytes / 1.9
            got = m.logits(TOKENS20)
        want = ref.forward(held(weights, qtype), cfg, TOKENS20)
        err, moved = row_errors(got, want), row_errors(f_logits, got)
        print(f"{name} as {qtype}: 20-token logits vs numpy {err.max():.1e}, vs the f32 load {moved.max():.3f}")
        assert err.max() <= 1e-5
        # Measured against the f32 load: Q8_0 6% of the largest logit; 4-bit blocks of Gaussian weights 90-110%.
        assert moved.min() > 1e-4 and (moved.max() <= 0.1 if qtype == "Q8_0" else moved.max() <= 1.5)


def tiny_gguf_config():
    return {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


MIXED = {"self_attn.q_proj.weight": "Q4_0", "self_attn.k_proj.weight": "Q4_1", "self_attn.v_proj.weight": "Q4_1",
         "self_attn.o_proj.weight": "Q8_0", "mlp.gate_proj.weight": "Q4_1", "mlp.up_proj.weight": "Q4_1",
         "mlp.down_proj.weight": "Q4_0"}


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "mixed"])
def test_gguf_blocks_kept_by_default(rt, tmp_path, kind):
    """A GGUF's blocks are held as stored; Q, K and V (one matrix in the library) stored in different quantized
    types are held as Q8_0, quantized from their values."""
    rng = np.random.default_rng(30)
    hf = dense_weights(rng, layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, vocab=96)
    types = None
    if kind == "mixed":
        types = {f"model.layers.{l}.{k}": t for l in range(2) for k, t in MIXED.items()}
        types.update({"model.embed_tokens.weight": "Q4_0", "lm_head.weight": "Q8_0"})
    path = tmp_path / "m.gguf"
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "t", "1", "2"]
    tokens += [f"t{i}" for i in range(96 - len(tokens))]
    stored = write_llama_gguf(path, hf, heads=4, kv_heads=2, qtype="Q4_1" if kind == "mixed" else kind, types=types,
                              tokens=tokens, merges=["t 1", "t 2"])
    want_weights = dict(stored)
    if kind == "mixed":
        for k in want_weights:
            if k.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
                want_weights[k] = ggml_round(stored[k], "Q8_0")
    ids = [3, 17, 42, 5, 88, 1, 60, 9, 31, 77, 2, 50, 64, 11, 95, 23, 8, 40, 70, 13]
    with loaded(rt, path, C.MOE_DTYPE_DEFAULT) as m:
        assert m.info.weight_dtype == (C.MOE_DTYPE_Q8_0 if kind == "mixed" else QTYPES[kind])
        got, got16 = m.logits(ids), m.logits(ids[:16])
    err = row_errors(got, ref.forward(want_weights, tiny_gguf_config(), ids))
    print(f"GGUF {kind}, default load: 20-token logits vs numpy {err.max():.1e}")
    assert err.max() <= 1e-5
    assert_mostly_exact(row_errors(got16, ref.forward(want_weights, tiny_gguf_config(), ids[:16], linear=int8_linear)),
                        f"GGUF {kind}, 16 tokens vs numpy with int8 activations", share=0.5)
    if kind != "mixed":
        # Naming the stored type keeps the same blocks: the same logits on both paths.
        with loaded(rt, path, QTYPES[kind]) as m:
            np.testing.assert_array_equal(m.logits(ids), got)
            np.testing.assert_array_equal(m.logits(ids[:16]), got16)


def moe_held(weights, qtype, experts_as=None):
    """An upcycled Mixtral's weights as a load with weight_dtype `qtype` holds them: routers in f32, the
    experts in `qtype` blocks too (or rounded by `experts_as`, when their sizes are not whole blocks)."""
    out = {}
    for k, v in weights.items():
        if ".experts." in k and experts_as is not None:
            out[k] = experts_as(v)
        elif ".block_sparse_moe.gate." in k or not blockwise(v):
            out[k] = v
        else:
            out[k] = ggml_round(v, qtype)
    return out


def moe_held_bytes(weights, qtype):
    """Bytes of an MoE's matrices held in `qtype` (the routers in f32 are not counted)."""
    return sum(held_row_bytes(qtype, v.shape[1]) * v.shape[0] if blockwise(v) else 4 * v.size
               for k, v in weights.items() if v.ndim == 2 and ".block_sparse_moe.gate." not in k)


def test_moe_experts_are_held_quantized(rt, small, tmp_path):
    """Experts of an upcycled MoE are held in the requested blocks, as the dense matrices are: more than 16
    tokens give the numpy forward of the rounded weights, 16 or fewer the one whose every quantized product
    (experts included, routers not) takes int8 activations."""
    path, _ = small["h64"]
    out = tmp_path / "mixtral"
    upcycle(path, out, num_experts=4, top_k=2, method="drop", ratio=0.5, seed=3)
    weights, cfg = read_safetensors_dir(out), tiny_config(out)
    with loaded(rt, out, C.MOE_DTYPE_F32) as f:
        f_bytes, f_token = f.info.weight_bytes, f.info.weight_bytes_per_token
    for qtype in ("Q8_0", "Q4_1"):
        want_weights = moe_held(weights, qtype)
        with loaded(rt, out, QTYPES[qtype]) as m:
            assert m.info.weight_dtype == QTYPES[qtype] and m.info.num_experts == 4
            # Experts in blocks too: every matrix but the routers' in the library's padded rows of blocks.
            held_bytes = moe_held_bytes(weights, qtype)
            print(f"Mixtral as {qtype}: held {m.info.weight_bytes} bytes (rows of blocks: {held_bytes}; f32 "
                  f"{f_bytes}), read per token {m.info.weight_bytes_per_token} (f32 {f_token})")
            assert m.info.weight_bytes == held_bytes
            assert m.info.weight_bytes_per_token < (0.6 if qtype == "Q8_0" else 0.35) * f_token
            got, got16 = m.logits(TOKENS20), m.logits(TOKENS20[:16])
        err = row_errors(got, ref.forward(want_weights, cfg, TOKENS20))
        print(f"Mixtral as {qtype}: 20-token logits vs numpy {err.max():.1e}")
        assert err.max() <= 1e-5
        assert_mostly_exact(row_errors(got16, ref.forward(want_weights, cfg, TOKENS20[:16], linear=int8_linear)),
                            f"Mixtral as {qtype}, 16 tokens vs numpy with int8 activations", share=0.5)


def test_moe_experts_not_of_whole_blocks_are_held_in_bf16(rt, tmp_path):
    """Experts whose intermediate size is not a multiple of 32 cannot be held in blocks: they are bf16."""
    dense = tmp_path / "dense"
    write_tiny(dense, hidden=64, ffn=80, seed=23)
    out = tmp_path / "mixtral"
    upcycle(dense, out, num_experts=4, top_k=2, method="drop", ratio=0.5, seed=3)
    weights, cfg = read_safetensors_dir(out), tiny_config(out)
    want_weights = moe_held(weights, "Q8_0", experts_as=bf16_round)
    with loaded(rt, out, C.MOE_DTYPE_Q8_0) as m:
        assert m.info.weight_dtype == C.MOE_DTYPE_Q8_0
        got = m.logits(TOKENS20)
    err = row_errors(got, ref.forward(want_weights, cfg, TOKENS20))
    print(f"Mixtral (F=80) as Q8_0, experts bf16: 20-token logits vs numpy {err.max():.1e}")
    assert err.max() <= 1e-4


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_moe_gguf_blocks_kept_by_default(rt, small, tmp_path, qtype):
    """A MoE GGUF's expert blocks are held as stored: more than 16 tokens give the numpy forward of the file's
    weights (and the file loaded in f32) to float rounding; 16 the one with int8 activations."""
    path, _ = small["h64"]
    moe = tmp_path / "mixtral"
    upcycle(path, moe, num_experts=4, top_k=2, method="drop", ratio=0.5, seed=4)
    g = tmp_path / f"m.{qtype}.gguf"
    export(moe, g, dtype=QTYPES[qtype])
    cfg = tiny_config(moe)
    file_weights = moe_weights_from_gguf(g, cfg)
    with loaded(rt, g, C.MOE_DTYPE_F32) as f:
        want = f.logits(TOKENS20)
    with loaded(rt, g, C.MOE_DTYPE_DEFAULT) as m:
        assert m.info.weight_dtype == QTYPES[qtype]
        assert m.info.weight_bytes == moe_held_bytes(file_weights, qtype)
        got, got16 = m.logits(TOKENS20), m.logits(TOKENS20[:16])
    err = row_errors(got, ref.forward(file_weights, cfg, TOKENS20))
    print(f"Mixtral GGUF {qtype}: 20-token logits vs numpy {err.max():.1e}, vs the f32 load "
          f"{row_errors(got, want).max():.1e}")
    assert err.max() <= 1e-5 and row_errors(got, want).max() <= 1e-5
    assert_mostly_exact(row_errors(got16, ref.forward(file_weights, cfg, TOKENS20[:16], linear=int8_linear)),
                        f"Mixtral GGUF {qtype}, 16 tokens vs numpy with int8 activations", share=0.5)


# --------------------------------------------------------------------------- the int8 path on each kernel path


def cpu_flags():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def kernel_topology():
    env = {k: v for k, v in os.environ.items() if k != "MOEUPCYCLE_KERNELS"}
    p = subprocess.run([str(CLI), "topology", "--json"], capture_output=True, text=True, env=env, check=True)
    return json.loads(p.stdout)["kernels"]


def child_logits(out, smollm2, windows, *small_dirs):
    """Run in a child process (the kernel path is chosen once per process): the int8-path logits of the small
    checkpoints in each quantized type and of SmolLM2's default load, saved to `out` (.npz)."""
    from abi import Runtime
    rt = Runtime(threads=2)
    results = {}
    for d in small_dirs:
        for qtype, dtype in QTYPES.items():
            m = Model(rt, d, weight_dtype=dtype)
            for n in PREFIXES:
                results[f"{Path(d).name}-{qtype}-{n}"] = m.logits(TOKENS20[:n])
            m.close()
    m = Model(rt, smollm2)
    results["smollm2"] = np.stack([m.logits([int(t) for t in w]) for w in np.load(windows)])
    np.savez(out, **results)
    rt.close()


CHILD = ("import sys\n"
         "sys.path.insert(0, {here!r})\n"
         "import conftest  # noqa: F401\n"
         "from test_quantized import child_logits\n"
         "child_logits(*sys.argv[1:])\n")


@pytest.fixture(scope="module")
def small_int8_references(small):
    """Numpy logits of the small checkpoints with int8 activations, and without (the dequantized weights alone)."""
    refs = {}
    for name, (path, weights) in small.items():
        cfg = tiny_config(path)
        for qtype in QTYPES:
            w = held(weights, qtype)
            for n in PREFIXES:
                # The KV cache of quantized layers holds bf16; calls of fewer than 16 tokens read their own
                # positions from it too (longer ones attend over their own keys and values in f32).
                cache = bf16_round if n < 16 else None
                refs[f"{name}-{qtype}-{n}"] = (ref.forward(w, cfg, TOKENS20[:n], linear=int8_linear, cache=cache),
                                               ref.forward(w, cfg, TOKENS20[:n], cache=cache))
    return refs


@pytest.fixture(scope="module")
def path_logits(small, smollm2_path, decode_windows, tmp_path_factory):
    """Logits of child_logits per kernel path, computed on first use."""
    root = tmp_path_factory.mktemp("paths")
    np.save(root / "windows.npy", decode_windows)
    cache = {}

    def get(path):
        if path not in cache:
            env = {k: v for k, v in os.environ.items() if k != "MOEUPCYCLE_KERNELS"}
            if path != "auto":
                env["MOEUPCYCLE_KERNELS"] = path
            out = root / f"{path}.npz"
            p = subprocess.run([sys.executable, "-c", CHILD.format(here=str(HERE)), str(out), str(smollm2_path),
                                str(root / "windows.npy"), *(str(d) for d, _ in small.values())],
                               capture_output=True, text=True, env=env, cwd=HERE)
            assert p.returncode == 0, p.stderr[-4000:]
            cache[path] = dict(np.load(out))
        return cache[path]

    return get


@pytest.mark.parametrize("path", ["auto", "avx2", "portable"])
def test_int8_products_on_each_kernel_path(path, path_logits, small_int8_references, f32_decode_logits):
    """The automatic path (AVX512-VNNI where the CPU has it, else AVX2, else plain C), the avx2 path (vpmaddubsw)
    and the portable one (plain C) compute the same integer sums: each matches the numpy model of the int8 path
    on the small checkpoints, and they match one another."""
    auto = kernel_topology()
    if path != "auto" and path not in auto["available"]:
        # The library needs AVX2 and FMA (x86-64-v3), so both forced paths run wherever it does.
        pytest.fail(f"this CPU (or its OS) cannot run the {path} path (features: {' '.join(auto['cpu_features'])})")
    # Where the runtime reports it, the integer kernels the automatic path takes; else what the CPU implies.
    integer = auto.get("quantized") or ("avx512_vnni" if auto["path"] in ("avx512", "openblas")
                                        and "avx512_vnni" in cpu_flags() else "avx2" if auto["path"] != "portable"
                                        else "portable")
    print(f"kernel path {path} (automatic: {auto['path']}, integer products {integer})")
    got = path_logits(path)
    errors, baseline, unrounded = [], [], []
    for key, (want, dequantized) in small_int8_references.items():
        errors.append(row_errors(got[key], want))
        unrounded.append(row_errors(got[key], dequantized))
        if path != "auto":
            baseline.append(row_errors(got[key], path_logits("auto")[key]))
    # Measured on each path: 137 of 144 rows within 1e-5 (median 3e-7), the rest up to 1.5e-2; the paths
    # against one another: all rows within 6.5e-7.
    assert_mostly_exact(np.concatenate(errors), f"{path}: small checkpoints vs numpy with int8 activations")
    # Not the unrounded product: rounding the activations moves every row (measured: by 1.3e-2 or more).
    assert np.concatenate(unrounded).min() > 1e-4
    if baseline:
        assert_mostly_exact(np.concatenate(baseline), f"{path} vs the automatic path")
    # SmolLM2: rounding flips decorrelate the paths' logits (measured: up to 0.93 (avx2) and 1.32 (portable)
    # apart), so each is held to the f32 load as the automatic path is.
    s = got["smollm2"]
    kl = kl_divergence(f32_decode_logits, s)
    top1 = float(np.mean(s.argmax(-1) == f32_decode_logits.argmax(-1)))
    print(f"{path}: SmolLM2 vs f32: max |diff| {np.abs(s - f32_decode_logits).max():.3f}, KL mean {kl.mean():.4f}, "
          f"top-1 {top1:.0%}")
    assert np.abs(s - f32_decode_logits).max() <= 2.0 and kl.mean() <= 0.01 and top1 >= 0.8


# --------------------------------------------------------------------------- the CLI


def cli(*args):
    p = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("dtype, name", [(None, "q4_1"), ("default", "q4_1"), ("keep", "q4_1"), ("f32", "f32"),
                                         ("q8_0", "q8_0")])
def test_cli_bench_decode_reports_the_held_type(smollm2_path, f32, quant, dtype, name):
    extra = [] if dtype is None else ["--dtype", dtype]
    j = json.loads(cli("bench", "decode", smollm2_path, "--tokens", 4, "--stream-mib", 16, "--json", *extra))
    assert j["weight_dtype"] == name and j["generated_tokens"] == 4
    if name in ("q4_1", "f32"):
        assert j["weight_bytes_per_token"] == {"q4_1": quant, "f32": f32}[name].info.weight_bytes_per_token
    # The integer products quantized weights run on, as the topology reports them; none for plain weights.
    assert j["kernel_quantized"] == (None if name in ("f32", "bf16") else kernel_topology()["quantized"])


def test_cli_generate_and_eval(smollm2_path, hamlet, tmp_path):  # noqa: F811
    text = cli("generate", smollm2_path, "--prompt", "The capital of France is", "--max-new-tokens", 4,
               "--dtype", "default")
    assert text.startswith("The capital of France is Paris"), text
    data = tmp_path / "hamlet.txt"
    data.write_text(hamlet[:20000])
    nll = {}
    for dtype in ("default", "f32", "q4_0"):
        j = json.loads(cli("eval", smollm2_path, "--data", data, "--seq-len", 64, "--max-tokens", 256, "--json",
                           "--dtype", dtype))
        assert j["tokens_scored"] == 252
        nll[dtype] = j["mean_nll"]
    print(f"CLI eval, 64-token windows: mean NLL {nll}")
    # 64-token windows take the dequantizing path: the default load scores as f32 does; Q4_0 worse.
    assert nll["default"] == nll["f32"]
    assert nll["q4_0"] > nll["f32"] + 0.05
