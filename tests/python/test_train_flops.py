"""Model FLOPs of training (moe_train_stats.model_flops, bench train's MFU, bench/torch_train.py) against a
count made here from the checkpoints' tensor shapes and config.json by the PaLM convention:
6 x (weights a token multiplies) + 12 x layers x heads x head_dim x seq_len, per trained token."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from abi import Model, Trainer, upcycle
from moeupcycle import _capi as C
from test_model import qwen2_moe  # noqa: F401 (fixture: Qwen2-MoE with a shared expert, layer 0 dense)
from test_model import write_tiny
from test_train import run

ROOT = Path(__file__).resolve().parents[2]
TOKENS = [(i * 7 + 3) % 251 for i in range(600)]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("flops") / "llama"
    write_tiny(path, seed=2, heads=4, kv_heads=2)
    return path


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    path = tmp_path_factory.mktemp("flops") / "tied"
    write_tiny(path, seed=3, tied=True, layers=3)
    return path


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory, dense):
    out = tmp_path_factory.mktemp("flops") / "mixtral"
    upcycle(dense, out, num_experts=4, top_k=2, method="drop", ratio=0.5, seed=1)
    return out


@pytest.fixture(scope="module")
def granular(tmp_path_factory, dense):
    """8 experts of a quarter of the FFN each, top-3: the expert width differs from the dense FFN."""
    out = tmp_path_factory.mktemp("flops") / "granular"
    upcycle(dense, out, num_experts=8, top_k=3, method="granular", granularity=4, seed=2)
    return out


def shapes(path: Path) -> dict:
    """Every tensor's shape, from the safetensors headers."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        for name, e in json.loads(raw[8:8 + n]).items():
            if name != "__metadata__":
                out[name] = e["shape"]
    return out


def expected_flops_per_token(path: Path, seq_len: int) -> int:
    """6 x (every matrix under the decoder layers, routed experts scaled by top_k / experts, plus the LM head
    or the tied embedding) + the attention products over the full seq_len x seq_len square."""
    cfg = json.loads((path / "config.json").read_text())
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    top_k = cfg.get("num_experts_per_tok", 0)
    dense = routed = 0
    for name, shape in shapes(path).items():
        if name.startswith("model.layers.") and len(shape) >= 2:
            if ".experts." in name:
                routed += math.prod(shape)
            else:
                dense += math.prod(shape)
    head = shapes(path).get("lm_head.weight") or shapes(path)["model.embed_tokens.weight"]
    assert (routed == 0) == (experts == 0) and routed * top_k % max(experts, 1) == 0
    n = dense + (routed * top_k // experts if experts else 0) + math.prod(head)
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 6 * n + 12 * cfg["num_hidden_layers"] * heads * head_dim * seq_len


MODELS = ["dense", "tied", "mixtral", "granular", "qwen2_moe"]


@pytest.mark.parametrize("which", MODELS)
def test_model_flops_of_a_step_through_the_abi(rt, request, which):
    path = request.getfixturevalue(which)
    model = Model(rt, path, weight_dtype=C.MOE_DTYPE_F32)
    for seq_len, batch, only in [(15, 3, C.MOE_TRAIN_ALL), (8, 1, C.MOE_TRAIN_ROUTERS)]:
        if only == C.MOE_TRAIN_ROUTERS and which in ("dense", "tied"):
            only = C.MOE_TRAIN_ALL
        t = Trainer(model, TOKENS, seq_len=seq_len, batch=batch, steps=2, eval_fraction=0.0, train_only=only)
        s = t.step()
        t.close()
        expected = expected_flops_per_token(path, seq_len) * seq_len * batch
        assert s.tokens == seq_len * batch and s.model_flops == expected, (which, seq_len, s.model_flops, expected)


def test_model_flops_by_hand_for_the_tiny_llama(dense):
    """The count itself, written out for one shape: H 32, 4 query and 2 KV heads of 8, FFN 64, 2 layers,
    vocabulary 300, untied head, T 16."""
    attention_weights = 32 * 32 + 2 * (16 * 32) + 32 * 32
    ffn = 3 * 32 * 64
    n = 2 * (attention_weights + ffn) + 300 * 32
    assert expected_flops_per_token(dense, 16) == 6 * n + 12 * 2 * 4 * 8 * 16 == 6 * 28032 + 12288


def test_bench_train_reports_model_flops_and_mfu(dense, qwen2_moe):  # noqa: F811
    p = run("bench", "train", dense, qwen2_moe, "--batch", 2, "--seq-len", 12, "--steps", 1, "--json")
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    tokens = 2 * 12
    assert j["dense_model_flops_per_step"] == expected_flops_per_token(dense, 12) * tokens
    assert j["moe_model_flops_per_step"] == expected_flops_per_token(qwen2_moe, 12) * tokens
    peak = j["peak_f32_gflops"]
    assert peak > 0 and (j["peak_bf16_gflops"] is None or j["peak_bf16_gflops"] > 0)
    for m in ("dense", "moe"):
        flops, step, gflops, mfu = (j[f"{m}_model_flops_per_step"], j[f"{m}_step_s"], j[f"{m}_gflops"], j[f"{m}_mfu"])
        assert 0 < mfu < 1.5 and gflops > 0
        # Printed to 6 digits, against a peak printed to 0.01 GFLOP/s.
        assert mfu == pytest.approx(gflops / peak, rel=1e-5, abs=1e-6 + 0.006 * mfu / peak)
        # Step times are printed to 0.1 ms.
        assert abs(flops / (gflops * 1e9) - step) <= 5e-5 + 1e-5 * step
    text = run("bench", "train", dense, qwen2_moe, "--batch", 2, "--seq-len", 12, "--steps", 1).stdout
    assert text.count("GFLOP/step") == 2 and text.count("MFU") >= 2 and "bf16 peak" in text, text
    per_step = expected_flops_per_token(dense, 12) * tokens / 1e9
    assert f"{per_step:.4g} GFLOP/step" in text, text


def torch_train(path, *args):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "torch_train.py"), str(path), *map(str, args)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


@pytest.mark.parametrize("which", ["dense", "mixtral", "qwen2_moe"])
def test_torch_train_counts_the_same_flops(request, which):
    """bench/torch_train.py trains one step in PyTorch and counts the model FLOPs on the torch module's
    parameters: the same figure as the library's for the same checkpoint and shape."""
    path = request.getfixturevalue(which)
    j = json.loads(torch_train(path, "--batch", 2, "--seq-len", 10, "--steps", 1, "--threads", 1,
                               "--peak-seconds", 0.05, "--json").stdout)
    assert (j["batch"], j["seq_len"], j["steps"], j["threads"]) == (2, 10, 1, 1)
    assert j["model_flops_per_step"] == expected_flops_per_token(path, 10) * 20
    assert j["step_s"] > 0 and j["tokens_per_second"] * j["step_s"] == pytest.approx(20)
    assert j["gflops"] == pytest.approx(j["model_flops_per_step"] / j["step_s"] / 1e9)
    assert j["peak_from"] == "moe_runtime_measure_peak" and j["peak_f32_gflops"] > 0
    assert j["mfu"] == pytest.approx(j["gflops"] / j["peak_f32_gflops"]) and j["mfu"] > 0
    # An untrained tiny model's loss is near ln(vocabulary) (300 ids).
    assert np.isfinite(j["loss"]) and 3 < j["loss"] < 9
    cfg = json.loads((path / "config.json").read_text())
    assert j["experts"] == (cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    assert j["aux_loss_coef"] == (0.02 if j["experts"] else 0.0)


def test_torch_train_given_peak_and_text(dense):
    text = torch_train(dense, "--batch", 1, "--seq-len", 8, "--steps", 2, "--threads", 1,
                       "--peak-gflops", 123.5).stdout
    assert "f32 peak 123.5 GFLOP/s (given)" in text and "tokens/s" in text and "MFU" in text, text
    per_step = expected_flops_per_token(dense, 8) * 8 / 1e9
    assert f"{per_step:.4g} GFLOP/step" in text, text
