"""The moeupcycle host binary."""
import json
import subprocess

import numpy as np
import pytest

from models import CLI, dense_weights, read_safetensors_dir, write_hf


def run(*args, check=True):
    p = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def dense(tmp_path):
    src = tmp_path / "dense"
    write_hf(src, dense_weights(np.random.default_rng(0)))
    return src


def test_version_and_help():
    assert run("version").stdout == "moeupcycle 0.8.0 (header 0.8.0)\n"
    assert "upcycle IN OUT" in run("help").stdout
    p = run("frobnicate", check=False)
    assert p.returncode == 2 and "unknown command" in p.stderr


def test_info_text_and_json(dense):
    out = run("info", dense).stdout
    assert "llama" in out and "hidden         32" in out
    j = json.loads(run("info", dense, "--json").stdout)
    assert j["architecture"] == "llama" and j["num_layers"] == 2 and j["num_experts"] == 0
    assert j["param_count"] == j["active_param_count"]


def test_upcycle_then_info(dense, tmp_path):
    out = tmp_path / "moe"
    p = run("upcycle", dense, out, "--experts", 4, "--top-k", 2, "--method", "drop", "--ratio", 0.5,
            "--seed", 3, "--dtype", "bf16")
    assert "upcycled" in p.stdout and "peak RSS" in p.stdout and "2 MoE layers" in p.stdout
    j = json.loads(run("info", out, "--json").stdout)
    assert j["architecture"] == "mixtral" and j["num_experts"] == 4 and j["top_k"] == 2
    assert j["dtype"] == "BF16"
    assert j["active_param_count"] < j["param_count"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["moeupcycle"]["method"] == "drop" and cfg["moeupcycle"]["seed"] == 3


def test_upcycle_qwen2_moe_layers(dense, tmp_path):
    out = tmp_path / "q"
    run("upcycle", dense, out, "--format", "qwen2-moe", "--layers", "every:2", "--experts", 4, "--top-k", 1,
        "--method", "partition", "--partition-select", "importance", "--granularity", 4)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mlp_only_layers"] == [0] and cfg["moe_intermediate_size"] == 16
    assert set(read_safetensors_dir(out)) >= {"model.layers.1.mlp.experts.3.down_proj.weight"}


@pytest.mark.parametrize("args,fragment,code", [
    (["--experts", "0"], "experts must be in 1..1024", 1),
    (["--top-k", "9"], "top-k must be in 1..8", 1),
    (["--method", "magic"], "invalid value for option", 2),
    (["--ratio"], "option needs a value", 2),
    (["--granularity", "-1"], "invalid value for option", 2),
    (["--method", "drop", "--ratio", "2"], "ratio must be in (0, 1]", 1),
    (["--bogus"], "unknown option", 2),
])
def test_upcycle_bad_arguments(dense, tmp_path, args, fragment, code):
    p = run("upcycle", dense, tmp_path / "o", *args, check=False)
    assert p.returncode == code and fragment in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()


def test_existing_output_and_missing_input(dense, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    p = run("upcycle", dense, out, check=False)
    assert p.returncode == 1 and "already exists" in p.stderr and "output exists" in p.stderr
    run("upcycle", dense, out, "--force")
    p = run("info", tmp_path / "missing", check=False)
    assert p.returncode == 1 and "does not exist" in p.stderr


def test_truncated_file_via_cli(dense):
    f = dense / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    p = run("info", dense, check=False)
    assert p.returncode == 1 and "malformed file" in p.stderr


def test_bench_upcycle_reports_ratio(dense, tmp_path):
    j = json.loads(run("bench", "upcycle", dense, "--experts", 4, "--work", tmp_path, "--json").stdout)
    assert j["bytes_written"] > 0 and j["upcycle_seconds"] > 0 and j["copy_seconds"] > 0
    assert j["upcycle_over_copy"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]
