"""Upcycling through the C ABI on small generated checkpoints."""
import hashlib
import json

import numpy as np
import pytest

from abi import LibError, inspect, upcycle
from models import dense_weights, read_safetensors_dir, write_hf
from reference import forward
from moeupcycle import _capi as C

TOKENS = [3, 17, 42, 5, 88, 1, 60, 23, 9]


def dense_config(path):
    return json.loads((path / "config.json").read_text())


@pytest.fixture
def dense(tmp_path):
    rng = np.random.default_rng(0)
    w = dense_weights(rng)
    src = tmp_path / "dense"
    stored = write_hf(src, w)
    return src, stored


def logits_of(path):
    return forward(read_safetensors_dir(path), dense_config(path), TOKENS)


def test_copy_preserves_function_mixtral(dense, tmp_path):
    src, stored = dense
    out = tmp_path / "moe"
    r = upcycle(src, out, num_experts=4, top_k=2, method="copy", seed=1)
    assert r.moe_layers == 2 and r.shards == 1
    cfg = dense_config(out)
    assert cfg["architectures"] == ["MixtralForCausalLM"]
    assert cfg["num_local_experts"] == 4 and cfg["num_experts_per_tok"] == 2
    moe = read_safetensors_dir(out)
    assert moe["model.layers.1.block_sparse_moe.gate.weight"].shape == (4, 32)
    for e in range(4):
        np.testing.assert_array_equal(moe[f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight"],
                                      stored["model.layers.0.mlp.gate_proj.weight"])
        np.testing.assert_array_equal(moe[f"model.layers.0.block_sparse_moe.experts.{e}.w2.weight"],
                                      stored["model.layers.0.mlp.down_proj.weight"])
        np.testing.assert_array_equal(moe[f"model.layers.0.block_sparse_moe.experts.{e}.w3.weight"],
                                      stored["model.layers.0.mlp.up_proj.weight"])
    dense_logits = forward(stored, dense_config(src), TOKENS)
    moe_logits = forward(moe, cfg, TOKENS)
    assert np.max(np.abs(dense_logits - moe_logits)) <= 1e-4
    # The router is not trivial: experts are actually chosen differently per token.
    router = moe["model.layers.0.block_sparse_moe.gate.weight"]
    assert 0.01 < router.std() < 0.03


@pytest.mark.parametrize("fmt", ["mixtral", "qwen2-moe"])
def test_aux_loss_coef_is_recorded_in_the_config(dense, tmp_path, fmt):
    src, _ = dense
    upcycle(src, tmp_path / "default", format=fmt)
    assert dense_config(tmp_path / "default")["router_aux_loss_coef"] == pytest.approx(0.02)
    upcycle(src, tmp_path / "set", format=fmt, aux_loss_coef=0.125)
    assert dense_config(tmp_path / "set")["router_aux_loss_coef"] == 0.125


def test_qwen2_moe_shared_expert_preserves_function(dense, tmp_path):
    src, stored = dense
    out = tmp_path / "qmoe"
    upcycle(src, out, num_experts=4, top_k=2, format="qwen2-moe", layers="1")
    cfg = dense_config(out)
    assert cfg["architectures"] == ["Qwen2MoeForCausalLM"]
    assert cfg["mlp_only_layers"] == [0]
    assert cfg["norm_topk_prob"] is True
    moe = read_safetensors_dir(out)
    assert "model.layers.0.mlp.gate_proj.weight" in moe
    assert "model.layers.1.mlp.shared_expert.gate_proj.weight" in moe
    np.testing.assert_array_equal(moe["model.layers.1.self_attn.q_proj.bias"], 0)
    np.testing.assert_array_equal(moe["model.layers.1.mlp.shared_expert_gate.weight"], 0)
    dense_logits = forward(stored, dense_config(src), TOKENS)
    assert np.max(np.abs(dense_logits - forward(moe, cfg, TOKENS))) <= 1e-4


@pytest.mark.parametrize("granularity,experts,top_k", [(2, 4, 2), (4, 8, 4), (2, 8, 4)])
def test_granular_preserves_function(dense, tmp_path, granularity, experts, top_k):
    src, stored = dense
    out = tmp_path / "gran"
    upcycle(src, out, num_experts=experts, top_k=top_k, method="granular", granularity=granularity)
    cfg = dense_config(out)
    assert cfg["intermediate_size"] == 64 // granularity
    moe = read_safetensors_dir(out)
    router = moe["model.layers.0.block_sparse_moe.gate.weight"]
    for g in range(experts // granularity):
        for r in range(granularity):
            np.testing.assert_array_equal(router[g * granularity + r], router[g * granularity])
    dense_logits = forward(stored, dense_config(src), TOKENS)
    assert np.max(np.abs(dense_logits - forward(moe, cfg, TOKENS))) <= 1e-4


def test_drop_statistics(tmp_path):
    rng = np.random.default_rng(1)
    w = dense_weights(rng, layers=1, hidden=64, ffn=256)
    src = tmp_path / "dense"
    stored = write_hf(src, w)
    out = tmp_path / "drop"
    upcycle(src, out, num_experts=4, top_k=2, method="drop", ratio=0.25, seed=7)
    moe = read_safetensors_dir(out)
    b = "model.layers.0.block_sparse_moe.experts."
    sets = []
    for name, axis, dense_name in [("w1", 0, "gate_proj"), ("w3", 0, "up_proj"), ("w2", 1, "down_proj")]:
        d = stored[f"model.layers.0.mlp.{dense_name}.weight"]
        for e in range(4):
            x = moe[f"{b}{e}.{name}.weight"]
            changed = np.any(x != d, axis=1 - axis)
            idx = np.flatnonzero(changed)
            # Exactly r * I neurons re-drawn; every other value bit-identical.
            assert len(idx) == 64, (name, e, len(idx))
            keep = ~changed
            if axis == 0:
                np.testing.assert_array_equal(x[keep], d[keep])
                new, old = x[idx], d[idx]
            else:
                np.testing.assert_array_equal(x[:, keep], d[:, keep])
                new, old = x[:, idx], d[:, idx]
            # Re-drawn values follow the slice's mean and std.
            assert abs(new.mean() - old.mean()) < 0.15 * old.std()
            assert abs(new.std() / old.std() - 1) < 0.1
            sets.append(tuple(idx))
    # Experts (and projections) draw different index sets.
    assert len(set(sets)) == len(sets)


def test_drop_shared_indices(tmp_path, dense):
    src, stored = dense
    out = tmp_path / "drop"
    upcycle(src, out, num_experts=2, top_k=1, method="drop", ratio=0.5, shared_indices=1)
    moe = read_safetensors_dir(out)
    b = "model.layers.0.block_sparse_moe.experts.0."
    g = np.flatnonzero(np.any(moe[b + "w1.weight"] != stored["model.layers.0.mlp.gate_proj.weight"], axis=1))
    u = np.flatnonzero(np.any(moe[b + "w3.weight"] != stored["model.layers.0.mlp.up_proj.weight"], axis=1))
    d = np.flatnonzero(np.any(moe[b + "w2.weight"] != stored["model.layers.0.mlp.down_proj.weight"], axis=0))
    assert len(g) == 32 and list(g) == list(u) == list(d)


def test_same_seed_byte_identical_other_seed_differs(dense, tmp_path):
    src, _ = dense
    digests = []
    for i, seed in enumerate([5, 5, 6]):
        out = tmp_path / f"o{i}"
        upcycle(src, out, num_experts=4, top_k=2, method="drop", seed=seed)
        digests.append(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


def test_thread_count_does_not_change_output(dense, tmp_path):
    src, _ = dense
    a, b = tmp_path / "a", tmp_path / "b"
    upcycle(src, a, method="drop", threads=1, seed=3)
    upcycle(src, b, method="drop", threads=2, seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_noise_adds_small_perturbation(dense, tmp_path):
    src, stored = dense
    out = tmp_path / "noise"
    upcycle(src, out, num_experts=2, top_k=1, method="noise", ratio=0.5, noise_std=0.01)
    moe = read_safetensors_dir(out)
    diff = moe["model.layers.0.block_sparse_moe.experts.1.w1.weight"] - stored["model.layers.0.mlp.gate_proj.weight"]
    rows = np.any(diff != 0, axis=1)
    assert rows.sum() == 32
    assert abs(diff[rows].std() - 0.01) < 0.002


@pytest.mark.parametrize("select", ["random", "uniform", "importance"])
def test_partition_disjoint_covers_every_neuron(dense, tmp_path, select):
    src, stored = dense
    out = tmp_path / "part"
    upcycle(src, out, num_experts=4, top_k=2, method="partition", partition_select=select, partition_disjoint=1)
    moe = read_safetensors_dir(out)
    gate = stored["model.layers.0.mlp.gate_proj.weight"]
    seen = []
    for e in range(4):
        x = moe[f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight"]
        assert x.shape == (16, 32)
        for row in x:
            matches = np.flatnonzero(np.all(gate == row, axis=1))
            assert len(matches) == 1
            seen.append(matches[0])
        # down_proj scaled by I / (k * I/G) = 64 / (2 * 16) = 2
        d = moe[f"model.layers.0.block_sparse_moe.experts.{e}.w2.weight"]
        idx = seen[-16:]
        np.testing.assert_allclose(d, stored["model.layers.0.mlp.down_proj.weight"][:, idx] * 2, rtol=1e-6)
    assert sorted(seen) == list(range(64))


def test_importance_partition_prefers_large_neurons(tmp_path):
    rng = np.random.default_rng(3)
    w = dense_weights(rng, layers=1, ffn=64)
    w["model.layers.0.mlp.gate_proj.weight"][:8] *= 50  # eight very important neurons
    src = tmp_path / "dense"
    write_hf(src, w)
    out = tmp_path / "imp"
    upcycle(src, out, num_experts=2, top_k=1, method="partition", partition_select="importance", granularity=4)
    moe = read_safetensors_dir(out)
    for e in range(2):
        x = moe[f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight"]
        big = np.sum(np.abs(x).max(axis=1) > 1.5)
        assert big >= 6, big


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("out_dtype", ["keep", "default", "f32", "bf16", "f16"])
def test_dtypes(tmp_path, dtype, out_dtype):
    rng = np.random.default_rng(2)
    w = dense_weights(rng, layers=1)
    src = tmp_path / "dense"
    stored = write_hf(src, w, dtype=dtype)
    out = tmp_path / "moe"
    upcycle(src, out, num_experts=2, top_k=1, dtype=out_dtype)
    header_len = int.from_bytes((out / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((out / "model.safetensors").read_bytes()[8:8 + header_len])
    expected = {"keep": dtype, "default": dtype, "f32": "F32", "bf16": "BF16", "f16": "F16"}[out_dtype]
    assert {e["dtype"] for k, e in header.items() if k != "__metadata__"} == {expected}
    assert header["__metadata__"] == {"format": "pt"}
    moe = read_safetensors_dir(out)
    want = stored["model.layers.0.mlp.up_proj.weight"]
    got = moe["model.layers.0.block_sparse_moe.experts.1.w3.weight"]
    if out_dtype == "bf16" and dtype != "BF16":
        from models import bf16_round
        want = bf16_round(want)
    if out_dtype == "f16" and dtype != "F16":
        want = want.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_sharded_input_and_output(tmp_path):
    rng = np.random.default_rng(4)
    w = dense_weights(rng, layers=3, tied=True)
    src = tmp_path / "dense"
    stored = write_hf(src, w, shards=3, tied=True)
    out = tmp_path / "moe"
    r = upcycle(src, out, num_experts=4, top_k=2, max_shard_bytes=64 * 1024)
    assert r.shards > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) == r.shards
    moe = read_safetensors_dir(out)
    assert set(index["weight_map"]) == set(moe)
    assert index["metadata"]["total_size"] == sum(v.size * 4 for v in moe.values())
    assert "lm_head.weight" not in moe
    cfg = dense_config(out)
    assert cfg["tie_word_embeddings"] is True
    np.testing.assert_allclose(forward(stored, dense_config(src), TOKENS), forward(moe, cfg, TOKENS), atol=1e-4)


def test_qwen2_source_with_biases(tmp_path):
    rng = np.random.default_rng(5)
    w = dense_weights(rng, layers=2, qkv_bias=True)
    src = tmp_path / "qwen2"
    stored = write_hf(src, w, arch="qwen2")
    with pytest.raises(LibError) as e:
        upcycle(src, tmp_path / "mx", format="mixtral")
    assert e.value.code == C.MOE_ERR_UNSUPPORTED and "bias" in e.value.message
    out = tmp_path / "q"
    upcycle(src, out, format="qwen2-moe", num_experts=4, top_k=2)
    moe = read_safetensors_dir(out)
    np.testing.assert_array_equal(moe["model.layers.0.self_attn.q_proj.bias"], stored["model.layers.0.self_attn.q_proj.bias"])
    cfg = dense_config(out)
    np.testing.assert_allclose(forward(stored, dense_config(src), TOKENS), forward(moe, cfg, TOKENS), atol=1e-4)


def test_side_files_copied_and_input_untouched(dense, tmp_path):
    src, _ = dense
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = tmp_path / "moe"
    upcycle(src, out)
    assert (out / "tokenizer_config.json").read_bytes() == before["tokenizer_config.json"]
    assert (out / "generation_config.json").read_bytes() == before["generation_config.json"]
    after = {p.name: p.read_bytes() for p in src.iterdir()}
    assert before == after
    # No temporary directory left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "moe"]


def test_inspect_dense_and_moe(dense, tmp_path):
    src, stored = dense
    info = inspect(src)
    assert info.architecture == b"llama" and info.container == b"safetensors"
    assert info.num_layers == 2 and info.hidden_size == 32 and info.intermediate_size == 64
    total = sum(v.size for v in stored.values())
    assert info.param_count == total == info.active_param_count
    assert info.num_experts == 0
    out = tmp_path / "moe"
    upcycle(src, out, num_experts=8, top_k=2)
    m = inspect(out)
    assert m.architecture == b"mixtral" and m.num_experts == 8 and m.top_k == 2 and m.num_moe_layers == 2
    expert = 3 * 32 * 64
    assert m.param_count == total + 2 * (7 * expert + 8 * 32)
    assert m.active_param_count == total + 2 * (1 * expert + 8 * 32)


def test_progress_callback_and_cancel(dense, tmp_path):
    src, _ = dense
    calls = []

    @C.moe_progress_fn
    def progress(done, total, stage, user):
        calls.append((done, total, stage))
        return 0

    upcycle(src, tmp_path / "a", progress=progress)
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] and calls[0][2] == b"upcycle"
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))

    @C.moe_progress_fn
    def cancel(done, total, stage, user):
        return 1 if done > 0 else 0

    with pytest.raises(LibError) as e:
        upcycle(src, tmp_path / "b", progress=cancel)
    assert e.value.code == C.MOE_ERR_CANCELLED
    assert not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "dense"]


def _router_similarity(w, layers, experts, every=1):
    best, where = -2.0, -1
    for l in range(layers):
        r = w[f"model.layers.{l}.block_sparse_moe.gate.weight"][::every]
        n = np.linalg.norm(r, axis=1)
        for a in range(len(r)):
            for b in range(a + 1, len(r)):
                s = (1.0 if n[a] == n[b] else 0.0) if n[a] == 0 or n[b] == 0 else float(r[a] @ r[b] / (n[a] * n[b]))
                if s > best:
                    best, where = s, l
    return best, where


@pytest.mark.parametrize("router_init, granularity, near", [("normal", 0, False), ("zeros", 0, True),
                                                             ("uniform", 2, False)])
def test_router_similarity_is_reported_and_warned(dense, tmp_path, router_init, granularity, near):
    import subprocess
    from models import CLI
    dense = dense[0]
    method = "granular" if granularity else "copy"
    out = tmp_path / "moe"
    r = upcycle(dense, out, num_experts=4, top_k=2, method=method, granularity=granularity, router_init=router_init)
    w = read_safetensors_dir(out)
    # Granular experts of one virtual expert share their router row by design: only one row per group counts.
    want, layer = _router_similarity(w, 2, 4, every=max(granularity, 1))
    assert r.router_max_similarity == pytest.approx(want, abs=1e-6) and r.router_similar_layer == layer
    assert (r.router_max_similarity >= 0.99) == near
    p = subprocess.run([str(CLI), "upcycle", dense, tmp_path / "cli", "--experts", "4", "--top-k", "2",
                        "--method", method, "--granularity", str(granularity), "--router-init", router_init],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert ("cannot tell them apart" in p.stderr) == near
