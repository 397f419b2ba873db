"""Data-aware upcycling through the C ABI and the CLI: calibration statistics against a numpy forward
of the dense model, experts built from them (activation, cluster, shared-from-frequent,
least-important drop), data-derived routers (k-means, prompts), and the errors of bad input."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import reference as ref
from abi import LibError, raises, upcycle
from models import CLI, dense_weights, read_safetensors_dir, write_hf
from moeupcycle import _capi as C

VOCAB = 96
FFN = 64
HIDDEN = 32


def config_of(path):
    return json.loads((Path(path) / "config.json").read_text())


@pytest.fixture
def dense(tmp_path):
    src = tmp_path / "dense"
    write_hf(src, dense_weights(np.random.default_rng(0), vocab=VOCAB, ffn=FFN, hidden=HIDDEN))
    return src


def write_ids(path, count, seed=1):
    ids = np.random.default_rng(seed).integers(0, VOCAB, count)
    path.write_text(" ".join(map(str, ids)) + "\n")
    return ids


def read_stats(path):
    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def reference_statistics(src, ids, *, seq_len, samples, quantile):
    """Per layer: mean |a|, mean a^2, firing frequency, threshold, sketch, router inputs (numpy)."""
    w, cfg = read_safetensors_dir(src), config_of(src)
    acts, inputs = {}, {}
    for start in range(0, len(ids), seq_len):
        cap = []
        ref.forward(w, cfg, ids[start:start + seq_len], capture=cap)
        for layer, h, a in cap:
            acts.setdefault(layer, []).append(a)
            inputs.setdefault(layer, []).append(h)
    n = len(ids)
    s = min(samples, n)
    positions = [(2 * j + 1) * n // (2 * s) for j in range(s)]
    out = {}
    for layer in acts:
        first = np.sort(np.abs(acts[layer][0]).ravel())
        threshold = first[min(len(first) - 1, max(0, int(np.ceil(quantile * len(first))) - 1))]
        a, h = np.concatenate(acts[layer]), np.concatenate(inputs[layer])
        out[layer] = dict(abs_mean=np.abs(a).mean(0), square_mean=(a * a).mean(0),
                          fire_frequency=(np.abs(a) > threshold).mean(0), threshold=threshold,
                          sketch=a[positions], router_inputs=h[positions])
    return out


def experts_of(out, layer, count, fmt="mixtral"):
    w = read_safetensors_dir(out)
    if fmt == "mixtral":
        b = f"model.layers.{layer}.block_sparse_moe."
        names = ("w1", "w3", "w2")
    else:
        b = f"model.layers.{layer}.mlp."
        names = ("gate_proj", "up_proj", "down_proj")
    return [tuple(w[b + f"experts.{e}.{n}.weight"] for n in names) for e in range(count)], w


def neuron_indices(dense_gate, expert_gate):
    """Which dense neuron each row of an expert's gate_proj copies."""
    out = []
    for row in expert_gate:
        match = np.where(np.all(dense_gate == row, axis=1))[0]
        assert len(match) == 1
        out.append(int(match[0]))
    return out


# --------------------------------------------------------------------------- statistics


def test_statistics_match_numpy(dense, tmp_path):
    ids = write_ids(tmp_path / "ids.txt", 600)
    stats = tmp_path / "stats.safetensors"
    r = upcycle(dense, tmp_path / "moe", num_experts=4, top_k=2, method="partition", partition_select="activation",
                calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1, calibration_samples=24,
                fire_quantile=0.8, save_stats_path=str(stats))
    assert r.moe_layers == 2
    tensors, meta = read_stats(stats)
    assert meta["format"] == "moeupcycle-calibration" and int(meta["tokens"]) == 600
    assert int(meta["data_hash"], 16) == fnv1a64(ids.astype("<i4").tobytes())
    # The model's context is 256 positions: the data runs as sequences of 256, 256 and 88 tokens.
    expected = reference_statistics(dense, ids, seq_len=256, samples=24, quantile=0.8)
    for layer, e in expected.items():
        p = f"layers.{layer}."
        np.testing.assert_allclose(tensors[p + "abs_mean"], e["abs_mean"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(tensors[p + "square_mean"], e["square_mean"], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(tensors[p + "threshold"][0], e["threshold"], rtol=1e-4)
        # A value within rounding of the threshold may land on either side.
        assert np.abs(tensors[p + "fire_frequency"] - e["fire_frequency"]).max() <= 3 / 600
        assert 0.15 < tensors[p + "fire_frequency"].mean() < 0.25  # about 1 - 0.8 over all tokens
        np.testing.assert_allclose(tensors[p + "sketch"], e["sketch"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(tensors[p + "router_inputs"], e["router_inputs"], rtol=1e-4, atol=1e-5)
    record = config_of(tmp_path / "moe")["moeupcycle"]
    assert record["calibration_tokens"] == 600 and record["calibration_samples"] == 24
    assert record["calibration_hash"] == meta["data_hash"] and record["importance"] == "l2"


def test_calibration_tokens_limit_and_reuse(dense, tmp_path):
    write_ids(tmp_path / "ids.txt", 600)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    common = dict(num_experts=2, top_k=1, calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1)
    upcycle(dense, tmp_path / "m1", calibration_tokens=100, save_stats_path=str(a), **common)
    assert int(read_stats(a)[1]["tokens"]) == 100
    # Saved statistics reproduce the model built from the data, byte for byte.
    opts = dict(num_experts=4, top_k=2, method="partition", partition_select="cluster", router_init="kmeans")
    upcycle(dense, tmp_path / "x", save_stats_path=str(b), calibration_path=str(tmp_path / "ids.txt"),
            calibration_ids=1, **opts)
    upcycle(dense, tmp_path / "y", stats_path=str(b), **opts)
    assert (tmp_path / "x/model.safetensors").read_bytes() == (tmp_path / "y/model.safetensors").read_bytes()
    assert config_of(tmp_path / "x")["moeupcycle"] == config_of(tmp_path / "y")["moeupcycle"]
    # An existing statistics file is kept unless forced.
    raises(C.MOE_ERR_EXISTS, "exists", upcycle, dense, tmp_path / "m2", save_stats_path=str(a), **common)
    assert not (tmp_path / "m2").exists()
    upcycle(dense, tmp_path / "m3", save_stats_path=str(a), force=1, **common)
    assert int(read_stats(a)[1]["tokens"]) == 600


# --------------------------------------------------------------------------- experts from statistics


@pytest.mark.parametrize("fmt", ["mixtral", "qwen2-moe"])
def test_cluster_with_all_experts_equals_dense(dense, tmp_path, fmt):
    write_ids(tmp_path / "ids.txt", 300)
    out = tmp_path / "moe"
    upcycle(dense, out, num_experts=4, top_k=4, method="partition", partition_select="cluster", router_init="zeros",
            format=fmt, calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1)
    tokens = [3, 17, 42, 5, 88, 1, 60, 23, 9]
    want = ref.forward(read_safetensors_dir(dense), config_of(dense), tokens)
    got = ref.forward(read_safetensors_dir(out), config_of(out), tokens)
    assert np.abs(got - want).max() <= 1e-4
    dw = read_safetensors_dir(dense)
    experts, _ = experts_of(out, 0, 4, "mixtral" if fmt == "mixtral" else "qwen2")
    sets = [neuron_indices(dw["model.layers.0.mlp.gate_proj.weight"], g) for g, _, _ in experts]
    assert sorted(i for s in sets for i in s) == list(range(FFN))
    assert config_of(out)["moeupcycle"]["partition_disjoint"] is True


def test_activation_partition_follows_the_statistic(dense, tmp_path):
    write_ids(tmp_path / "ids.txt", 300)
    stats = tmp_path / "stats.safetensors"
    out = tmp_path / "moe"
    upcycle(dense, out, num_experts=2, top_k=1, method="partition", partition_select="activation", granularity=4,
            partition_disjoint=1, importance="freq", calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1,
            save_stats_path=str(stats))
    tensors, _ = read_stats(stats)
    dw = read_safetensors_dir(dense)
    for layer in range(2):
        freq = tensors[f"layers.{layer}.fire_frequency"]
        ranked = sorted(range(FFN), key=lambda i: (-freq[i], i))
        experts, _ = experts_of(out, layer, 2)
        got = [sorted(neuron_indices(dw[f"model.layers.{layer}.mlp.gate_proj.weight"], g)) for g, _, _ in experts]
        assert got == [sorted(ranked[0:32:2]), sorted(ranked[1:32:2])]
    assert config_of(out)["moeupcycle"]["importance"] == "freq"


def test_shared_expert_from_frequent_neurons(dense, tmp_path):
    write_ids(tmp_path / "ids.txt", 300)
    stats = tmp_path / "stats.safetensors"
    out = tmp_path / "moe"
    upcycle(dense, out, num_experts=4, top_k=4, method="partition", partition_select="cluster", router_init="zeros",
            format="qwen2-moe", shared_from_frequent=16, calibration_path=str(tmp_path / "ids.txt"),
            calibration_ids=1, save_stats_path=str(stats))
    cfg = config_of(out)
    assert cfg["shared_expert_intermediate_size"] == 16 and cfg["moe_intermediate_size"] == 12
    assert cfg["moeupcycle"]["shared_from_frequent"] == 16
    tensors, _ = read_stats(stats)
    dw, mw = read_safetensors_dir(dense), read_safetensors_dir(out)
    freq, mag = tensors["layers.1.fire_frequency"], tensors["layers.1.abs_mean"]
    top = sorted(sorted(range(FFN), key=lambda i: (-freq[i], -mag[i], i))[:16])
    b = "model.layers.1.mlp."
    np.testing.assert_array_equal(mw[b + "shared_expert.gate_proj.weight"], dw["model.layers.1.mlp.gate_proj.weight"][top])
    np.testing.assert_array_equal(mw[b + "shared_expert.down_proj.weight"],
                                  2 * dw["model.layers.1.mlp.down_proj.weight"][:, top])
    experts, _ = experts_of(out, 1, 4, "qwen2")
    routed = [i for g, _, _ in experts for i in neuron_indices(dw["model.layers.1.mlp.gate_proj.weight"], g)]
    assert sorted(routed + top) == list(range(FFN))
    # Shared frequent neurons + clusters of the rest, every expert at equal weight: the dense model.
    tokens = [3, 17, 42, 5, 88, 1, 60, 23, 9]
    want = ref.forward(dw, config_of(dense), tokens)
    assert np.abs(ref.forward(mw, cfg, tokens) - want).max() <= 1e-4


def test_least_important_drop(dense, tmp_path):
    write_ids(tmp_path / "ids.txt", 300)
    stats = tmp_path / "stats.safetensors"
    out = tmp_path / "moe"
    upcycle(dense, out, num_experts=3, top_k=2, method="drop", ratio=0.25, drop_select="least-important",
            importance="l1", calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1,
            save_stats_path=str(stats))
    tensors, _ = read_stats(stats)
    dw = read_safetensors_dir(dense)
    lowest = sorted(np.argsort(tensors["layers.0.abs_mean"], kind="stable")[:16].tolist())
    experts, _ = experts_of(out, 0, 3)
    for gate, up, down in experts:
        changed = np.where(np.any(gate != dw["model.layers.0.mlp.gate_proj.weight"], axis=1))[0].tolist()
        assert changed == lowest
    record = config_of(out)["moeupcycle"]
    assert record["drop_select"] == "least-important" and record["importance"] == "l1"


def test_calibrated_scale_is_recorded_and_differs_from_the_formula(dense, tmp_path):
    write_ids(tmp_path / "ids.txt", 300)
    common = dict(num_experts=4, top_k=2, method="partition", granularity=4, seed=3)
    upcycle(dense, tmp_path / "formula", **common)
    upcycle(dense, tmp_path / "fitted", calibrated_scale=1, calibration_path=str(tmp_path / "ids.txt"),
            calibration_ids=1, **common)
    a, _ = experts_of(tmp_path / "formula", 0, 4)
    b, _ = experts_of(tmp_path / "fitted", 0, 4)
    for (ga, ua, da), (gb, ub, db) in zip(a, b):
        np.testing.assert_array_equal(ga, gb)  # the same neurons
        assert not np.array_equal(da, db)
    assert config_of(tmp_path / "fitted")["moeupcycle"]["partition_scale"] == "calibrated"
    assert config_of(tmp_path / "formula")["moeupcycle"]["partition_scale"] == "formula"


# --------------------------------------------------------------------------- routers from data


@pytest.mark.parametrize("spread", [1.0, 3.0])
def test_kmeans_router_rows_are_centered_and_scaled(dense, tmp_path, spread):
    write_ids(tmp_path / "ids.txt", 400)
    stats = tmp_path / "stats.safetensors"
    out = tmp_path / "moe"
    r = upcycle(dense, out, num_experts=4, top_k=2, router_init="kmeans", router_spread=spread,
                calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1, save_stats_path=str(stats))
    tensors, _ = read_stats(stats)
    mw = read_safetensors_dir(out)
    for layer in range(2):
        router = mw[f"model.layers.{layer}.block_sparse_moe.gate.weight"]
        assert np.abs(router.sum(0)).max() <= 1e-5
        z = tensors[f"layers.{layer}.router_inputs"].astype(np.float64) @ router.T.astype(np.float64)
        assert abs(np.sqrt(z.var(axis=1).mean()) - spread) <= 1e-3 * spread
    assert -1 <= r.router_max_similarity < 0.99  # centered rows: the mean pairwise cosine is -1/(E-1)
    record = config_of(out)["moeupcycle"]
    assert record["router_init"] == "kmeans" and record["router_spread"] == spread


@pytest.fixture
def tokenized(tmp_path):
    """A dense model with the tiny byte-level tokenizer (prompts and text need one)."""
    src = tmp_path / "tok"
    write_hf(src, dense_weights(np.random.default_rng(2), vocab=300, ffn=FFN, hidden=HIDDEN))
    ref.write_tiny_tokenizer(src)
    return src


def encode(src, text):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(src / "tokenizer.json")).encode(text, add_special_tokens=False).ids


PROMPTS = ["the sea and the heat of the sea air", "one thin seer sat on the other thing",
           "they then thought the thin thing through"]


@pytest.mark.parametrize("negative", [False, True])
def test_prompt_router_is_the_mean_hidden_state(tokenized, tmp_path, negative):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    negatives = ["a b c d", "the the the", "sat sat on"]
    (tmp_path / "neg.txt").write_text("\n".join(negatives))
    out = tmp_path / "moe"
    fields = dict(num_experts=3, top_k=1, router_init="prompts", router_prompts_path=str(prompts))
    if negative:
        fields["router_negative_prompts_path"] = str(tmp_path / "neg.txt")
    upcycle(tokenized, out, **fields)
    w, cfg = read_safetensors_dir(tokenized), config_of(tokenized)

    def means(lines):
        per_layer = {0: [], 1: []}
        samples = {0: [], 1: []}
        for line in lines:
            cap = []
            ref.forward(w, cfg, encode(tokenized, line), capture=cap)
            for layer, h, _ in cap:
                per_layer[layer].append(h.mean(0))
                samples[layer].append(h)
        return per_layer, samples

    pos, samples = means(PROMPTS)
    neg, _ = means(negatives) if negative else (None, None)
    mw = read_safetensors_dir(out)
    for layer in range(2):
        rows = np.array(pos[layer]) - (np.array(neg[layer]) if negative else 0)
        rows = rows - rows.mean(0)
        x = np.concatenate(samples[layer])
        z = x @ rows.T
        rows = rows / np.sqrt(z.var(axis=1).mean())
        got = mw[f"model.layers.{layer}.block_sparse_moe.gate.weight"]
        np.testing.assert_allclose(got, rows, rtol=1e-3, atol=1e-4)
    assert config_of(out)["moeupcycle"]["router_negative_prompts"] is negative


def test_text_calibration_and_cli(tokenized, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("So the one thin seer, in the heat of the sea air, sat and then ate the other thing.\n" * 12)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    out = tmp_path / "cli"
    p = subprocess.run([str(CLI), "upcycle", str(tokenized), str(out), "--experts", "2", "--top-k", "1",
                        "--method", "partition", "--partition-select", "activation", "--importance", "l1",
                        "--calibration", str(text), "--calibration-tokens", "500", "--router-prompts", str(prompts),
                        "--save-stats", str(tmp_path / "s.safetensors")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    record = config_of(out)["moeupcycle"]
    assert record["router_init"] == "prompts" and record["partition_select"] == "activation"
    ids = encode(tokenized, text.read_text())
    assert record["calibration_tokens"] == min(500, len(ids)) == int(read_stats(tmp_path / "s.safetensors")[1]["tokens"])
    # The same through the C ABI gives the same bytes.
    upcycle(tokenized, tmp_path / "abi", num_experts=2, top_k=1, method="partition", partition_select="activation",
            importance="l1", calibration_path=str(text), calibration_tokens=500, router_init="prompts",
            router_prompts_path=str(prompts))
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "abi/model.safetensors").read_bytes()
    p = subprocess.run([str(CLI), "help"], capture_output=True, text=True)
    for flag in ("--calibration", "--save-stats", "--partition-select", "--router-prompts", "--shared-from-frequent",
                 "--drop-select", "--calibrated-scale"):
        assert flag in p.stdout + p.stderr


# --------------------------------------------------------------------------- bad input


def test_bad_calibration_input(dense, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("1 2 3 4 5")
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 x 3")
    big = tmp_path / "big.txt"
    big.write_text("1 2 500 3")
    write_ids(tmp_path / "ids.txt", 300)
    use = dict(num_experts=4, top_k=2, method="partition", partition_select="activation", calibration_ids=1)
    raises(C.MOE_ERR_INVALID_ARGUMENT, "is empty", upcycle, dense, tmp_path / "o", calibration_path=str(empty), **use)
    raises(C.MOE_ERR_INVALID_ARGUMENT, "gives 5 tokens; at least 64", upcycle, dense, tmp_path / "o",
           calibration_path=str(short), **use)
    raises(C.MOE_ERR_FORMAT, "not part of a token id", upcycle, dense, tmp_path / "o", calibration_path=str(bad), **use)
    raises(C.MOE_ERR_INVALID_ARGUMENT, "outside the vocabulary", upcycle, dense, tmp_path / "o",
           calibration_path=str(big), **use)
    raises(C.MOE_ERR_NOT_FOUND, "not a readable file", upcycle, dense, tmp_path / "o",
           calibration_path=str(tmp_path / "missing.txt"), **use)
    raises(C.MOE_ERR_INVALID_ARGUMENT, "needs calibration statistics", upcycle, dense, tmp_path / "o",
           num_experts=4, top_k=2, method="partition", partition_select="cluster")
    raises(C.MOE_ERR_INVALID_ARGUMENT, "nothing uses them", upcycle, dense, tmp_path / "o",
           calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1)
    raises(C.MOE_ERR_INVALID_ARGUMENT, "granularity must equal the number of experts", upcycle, dense, tmp_path / "o",
           num_experts=4, top_k=2, method="partition", partition_select="cluster", granularity=8,
           calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1)
    raises(C.MOE_ERR_INVALID_ARGUMENT, "does not divide", upcycle, dense, tmp_path / "o", num_experts=4, top_k=2,
           method="partition", partition_select="cluster", format="qwen2-moe", shared_from_frequent=6,
           calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1)
    raises(C.MOE_ERR_UNSUPPORTED, "qwen2-moe", upcycle, dense, tmp_path / "o", num_experts=4, top_k=2,
           method="partition", shared_from_frequent=16, calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1)
    raises(C.MOE_ERR_INVALID_ARGUMENT, "drop and noise", upcycle, dense, tmp_path / "o", num_experts=4, top_k=2,
           drop_select="least-important", calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1)
    raises(C.MOE_ERR_INVALID_ARGUMENT, "fire quantile", upcycle, dense, tmp_path / "o", fire_quantile=1.5,
           calibration_path=str(tmp_path / "ids.txt"), **use)
    raises(C.MOE_ERR_INVALID_ARGUMENT, "not both", upcycle, dense, tmp_path / "o", stats_path=str(empty),
           calibration_path=str(tmp_path / "ids.txt"), **use)
    assert not (tmp_path / "o").exists()


def test_statistics_of_another_model_are_refused(dense, tmp_path):
    write_ids(tmp_path / "ids.txt", 300)
    stats = tmp_path / "stats.safetensors"
    upcycle(dense, tmp_path / "m", num_experts=2, top_k=1, calibration_path=str(tmp_path / "ids.txt"),
            calibration_ids=1, save_stats_path=str(stats))
    other = tmp_path / "other"
    write_hf(other, dense_weights(np.random.default_rng(9), vocab=VOCAB, ffn=FFN, hidden=HIDDEN))
    use = dict(num_experts=4, top_k=2, method="partition", partition_select="activation", stats_path=str(stats))
    raises(C.MOE_ERR_INVALID_ARGUMENT, "another model", upcycle, other, tmp_path / "o", **use)
    wider = tmp_path / "wider"
    write_hf(wider, dense_weights(np.random.default_rng(0), vocab=VOCAB, ffn=2 * FFN, hidden=HIDDEN))
    raises(C.MOE_ERR_SHAPE, "FFN size", upcycle, wider, tmp_path / "o", **use)
    not_stats = tmp_path / "dense" / "model.safetensors"
    raises(C.MOE_ERR_FORMAT, "not a calibration statistics file", upcycle, dense, tmp_path / "o",
           num_experts=4, top_k=2, method="partition", partition_select="activation", stats_path=str(not_stats))
    assert not (tmp_path / "o").exists()


def test_bad_router_prompts(tokenized, tmp_path):
    two = tmp_path / "two.txt"
    two.write_text("the sea\nthe heat\n")
    raises(C.MOE_ERR_INVALID_ARGUMENT, "has 2 non-empty lines; it needs one line per expert (3)", upcycle, tokenized,
           tmp_path / "o", num_experts=3, top_k=1, router_init="prompts", router_prompts_path=str(two))
    raises(C.MOE_ERR_INVALID_ARGUMENT, "needs a prompts file", upcycle, tokenized, tmp_path / "o", num_experts=3,
           top_k=1, router_init="prompts")
    raises(C.MOE_ERR_INVALID_ARGUMENT, "router-init prompts only", upcycle, tokenized, tmp_path / "o",
           num_experts=2, top_k=1, router_prompts_path=str(two))
    raises(C.MOE_ERR_INVALID_ARGUMENT, "router spread", upcycle, tokenized, tmp_path / "o", num_experts=2, top_k=1,
           router_init="prompts", router_prompts_path=str(two), router_spread=0)
    assert not (tmp_path / "o").exists()


def test_high_level_binding_takes_paths(dense, tmp_path):
    import moeupcycle as mu
    write_ids(tmp_path / "ids.txt", 200)
    r = mu.upcycle(dense, tmp_path / "moe", num_experts=4, top_k=2, method="partition",
                   partition_select="cluster", router_init="kmeans", calibration_path=tmp_path / "ids.txt",
                   calibration_ids=1, save_stats_path=tmp_path / "stats.safetensors")
    assert r.moe_layers == 2 and (tmp_path / "stats.safetensors").exists()
    assert mu.names("importance") == ["l1", "l2", "freq"]
    assert mu.names("drop_select") == ["random", "least-important"]
    with pytest.raises(mu.MoeError) as e:
        mu.upcycle(dense, tmp_path / "other", num_experts=4, top_k=2, method="partition", partition_select="cluster")
    assert e.value.code == C.MOE_ERR_INVALID_ARGUMENT and "calibration" in str(e.value)


def test_calibrate_alone_equals_the_statistics_upcycle_saves(dense, tmp_path):
    import moeupcycle as mu
    write_ids(tmp_path / "ids.txt", 300)
    fields = dict(calibration_path=str(tmp_path / "ids.txt"), calibration_ids=1, calibration_samples=16,
                  fire_quantile=0.7)
    upcycle(dense, tmp_path / "moe", num_experts=2, top_k=1, save_stats_path=str(tmp_path / "a.safetensors"),
            **fields)
    mu.calibrate(dense, tmp_path / "b.safetensors", **fields)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with pytest.raises(mu.MoeError) as e:
        mu.calibrate(dense, tmp_path / "b.safetensors", **fields)
    assert e.value.code == C.MOE_ERR_EXISTS
    mu.calibrate(dense, tmp_path / "b.safetensors", force=1, **dict(fields, calibration_samples=8))
    assert int(read_stats(tmp_path / "b.safetensors")[1]["sample_rows"]) == 8
    with pytest.raises(mu.MoeError) as e:
        mu.calibrate(dense, tmp_path / "c.safetensors")
    assert e.value.code == C.MOE_ERR_INVALID_ARGUMENT and "calibration_path is NULL" in e.value.message
    with pytest.raises(mu.MoeError) as e:
        mu.calibrate(tmp_path / "moe", tmp_path / "c.safetensors", **fields)
    assert e.value.code == C.MOE_ERR_UNSUPPORTED and "dense model" in e.value.message
    assert not (tmp_path / "c.safetensors").exists()
    # The command line: calibrate, then upcycle from the statistics.
    p = subprocess.run([str(CLI), "calibrate", str(dense), "--data", str(tmp_path / "ids.txt"), "--ids", "--samples",
                        "16", "--fire-quantile", "0.7", "--out", str(tmp_path / "cli.safetensors")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "cli.safetensors").read_bytes() == (tmp_path / "a.safetensors").read_bytes()
    p = subprocess.run([str(CLI), "upcycle", str(dense), str(tmp_path / "cluster"), "--experts", "4", "--method",
                        "partition", "--partition-select", "cluster", "--stats", str(tmp_path / "cli.safetensors")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([str(CLI), "calibrate", str(dense), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert p.returncode == 2 and "--data" in p.stderr
