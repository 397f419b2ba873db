"""moeupcycle topology and moeupcycle bench moe: the runtime and the MoE layer from the shell."""
import json
import subprocess

import pytest

from models import CLI

SYNTHETIC = "pack:2 [numa] core:2 pu:1"


def run(*args, check=True):
    p = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_topology_text():
    out = run("topology").stdout
    assert "NUMA nodes" in out and "worker 0" in out and "OpenBLAS" in out
    assert "thread pinning effective" in out and "memory binding effective" in out


def test_topology_json_synthetic_with_layer():
    j = json.loads(run("topology", "--json", "--synthetic", SYNTHETIC, "--hidden", 32, "--ffn", 64,
                       "--experts", 4, "--top-k", 2).stdout)
    assert len(j["nodes"]) == 2
    assert [n["cores"] for n in j["nodes"]] == [[0, 1], [2, 3]]
    assert j["cores"] == 4 and j["pus"] == 4
    assert len(j["workers"]) == 4
    assert [w["node"] for w in j["workers"]] == [0, 0, 1, 1]
    assert not any(w["pinned"] for w in j["workers"])
    b = j["binding"]
    assert b["is_this_system"] is False
    assert b["thread_pinning_effective"] is False and b["memory_binding_effective"] is False
    assert j["openblas"]["threads"] == 1 and j["openblas"]["core"]
    assert j["layer"] == {"hidden_size": 32, "moe_intermediate_size": 64, "num_experts": 4, "top_k": 2,
                          "shared_expert_intermediate_size": 0, "compute": "f32"}
    plan = j["placement"]
    assert plan["policy"] == j["default_placement"] == "row-slice"
    cover = {e: [] for e in range(4)}
    for shard in plan["shards"]:
        for s in shard["slices"]:
            cover[s["expert"]].append((s["ffn_begin"], s["ffn_end"]))
    for e, ranges in cover.items():
        assert sorted(ranges) == [(0, 32), (32, 64)], (e, ranges)
    assert sorted(s["node"] for s in plan["shards"]) == [0, 1]


@pytest.mark.parametrize("placement", ["expert", "interleave", "none"])
def test_topology_json_placements(placement):
    j = json.loads(run("topology", "--json", "--synthetic", SYNTHETIC, "--hidden", 16, "--ffn", 48,
                       "--experts", 5, "--top-k", 2, "--shared-ffn", 8, "--placement", placement).stdout)
    plan = j["placement"]
    assert plan["policy"] == placement and plan["splits_experts"] is False
    seen = {}
    for shard in plan["shards"]:
        for s in shard["slices"]:
            assert s["expert"] not in seen, f"expert {s['expert']} placed twice"
            seen[s["expert"]] = (s["ffn_begin"], s["ffn_end"])
    assert seen == {**{e: (0, 48) for e in range(5)}, 5: (0, 8)}


def test_topology_threads_option():
    j = json.loads(run("topology", "--json", "--synthetic", SYNTHETIC, "--threads", 2).stdout)
    assert len(j["workers"]) == 2 and "placement" not in j


@pytest.mark.parametrize("args,fragment", [
    (["--bogus"], "unknown option: --bogus"),
    (["--hidden", "32"], "a layer shape needs"),
    (["--placement", "sideways"], "invalid value for option"),
    (["--threads"], "option needs a value"),
])
def test_topology_bad_usage(args, fragment):
    p = run("topology", *args, check=False)
    assert p.returncode == 2 and fragment in p.stderr, (p.returncode, p.stderr)


def test_topology_bad_synthetic():
    p = run("topology", "--synthetic", "garbage", check=False)
    assert p.returncode == 1 and "synthetic" in p.stderr


def test_bench_moe_json():
    p = run("bench", "moe", "--tokens", 64, "--hidden", 64, "--ffn", 128, "--experts", 4, "--top-k", 2,
            "--iters", 2, "--stream-mib", 16, "--backward", "--json")
    j = json.loads(p.stdout)
    assert (j["tokens"], j["hidden"], j["ffn"], j["experts"], j["top_k"]) == (64, 64, 128, 4, 2)
    assert j["forward_s"]["best"] > 0 and j["forward_s"]["median"] >= j["forward_s"]["best"]
    assert j["forward_backward_s"]["best"] > 0
    assert j["gemm_bound_forward_s"]["best"] > 0 and j["efficiency_forward"] > 0
    assert j["gemm_bound_forward_backward_s"]["best"] > 0 and j["efficiency_forward_backward"] > 0
    assert j["stream_gbps"] > 0 and j["weight_read_gbps"] > 0
    assert len(j["tokens_per_expert"]) == 4 and sum(j["tokens_per_expert"]) == 128
    assert j["dropped"] == 0 and j["active_experts"] == sum(1 for n in j["tokens_per_expert"] if n)
    assert j["dtype"] == "f32" and j["iters"] == 2
    # The measured ceiling beside the figures: the layer cannot beat it.
    assert j["peak_f32_gflops"] > 0 and j["kernel_path"] in ("avx512", "avx2", "portable", "openblas")
    assert 0 < j["forward_peak_fraction"] < 1.5 and 0 < j["forward_backward_peak_fraction"] < 1.5


def test_bench_moe_quantized_experts():
    """`--dtype q4_1` benchmarks experts held as GGML blocks: the bytes a forward reads are the blocks'."""
    p = run("bench", "moe", "--tokens", 1, "--hidden", 64, "--ffn", 128, "--experts", 4, "--top-k", 2,
            "--iters", 2, "--stream-mib", 16, "--layers", 2, "--dtype", "q4_1", "--json")
    j = json.loads(p.stdout)
    assert j["dtype"] == "q4_1" and j["forward_s"]["best"] > 0 and j["active_experts"] == 2
    assert j["active_weight_bytes"] == 2 * 3 * 64 * 128 * 20 / 32
    p = run("bench", "moe", "--dtype", "q8_0", "--backward", check=False)
    assert p.returncode == 2 and "--backward needs --dtype f32 or bf16" in p.stderr


def test_bench_moe_bad_option():
    p = run("bench", "moe", "--bogus", check=False)
    assert p.returncode == 2 and "unknown option: --bogus" in p.stderr
    p = run("bench", "moe", "--tokens", "0", check=False)
    assert p.returncode == 2 and "--tokens" in p.stderr
    p = run("bench", "moe", "--routing", "random", check=False)
    assert p.returncode == 2 and "invalid value for option" in p.stderr
