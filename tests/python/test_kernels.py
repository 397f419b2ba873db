"""The matrix-product kernel paths: which one runs and why, forcing one with
MOEUPCYCLE_KERNELS, refusing what the CPU cannot run, and the same answers on
every path this CPU runs (the layer's reference tests and a model evaluation,
re-run in a child process per path, since the choice is made once per process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import CLI
from moeupcycle import _capi as C
from test_model import EVAL_TEXT, write_tiny

HERE = Path(__file__).resolve().parent
PATHS = ["avx512", "avx2", "portable", "openblas"]


def run(*args, env=None, check=True):
    e = dict(os.environ)
    e.pop("MOEUPCYCLE_KERNELS", None)
    e.update(env or {})
    p = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, env=e)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def topology(env=None):
    return json.loads(run("topology", "--json", env=env).stdout)["kernels"]


AUTO = topology()


def test_the_automatic_choice_is_reported():
    k = AUTO
    assert k["path"] in ("avx512", "avx2", "portable") and not k["forced"]
    assert k["path"] in k["available"] and "portable" in k["available"] and "openblas" in k["available"]
    assert "sse2" in k["cpu_features"]
    # The widest path the CPU runs, and the reason says why.
    expect = "avx512" if "avx512f" in k["cpu_features"] else "avx2" if {"avx2", "fma"} <= set(k["cpu_features"]) else "portable"
    assert k["path"] == expect and k["reason"]
    assert k["vector_floats"] == {"avx512": 16, "avx2": 8, "portable": 4}[k["path"]]
    text = run("topology").stdout
    assert f"kernels: {k['path']} ({k['reason']})" in text
    # Quantized weights: the widest integer dot product of the path.
    vnni = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "f16c"} <= set(k["cpu_features"])
    assert k["quantized"] == ("avx512_vnni" if k["path"] == "avx512" and vnni else "avx2") and k["quantized_reason"]
    assert f"quantized weights {k['quantized']}" in text


@pytest.mark.parametrize("path,quantized", [("avx2", "avx2"), ("portable", "portable")])
def test_quantized_products_follow_a_forced_path(path, quantized):
    if path not in AUTO["available"]:
        pytest.fail(f"this CPU cannot run the {path} path")
    k = topology({"MOEUPCYCLE_KERNELS": path})
    assert k["quantized"] == quantized and k["quantized_reason"]


@pytest.mark.parametrize("path", PATHS)
def test_forcing_a_path(path):
    env = {"MOEUPCYCLE_KERNELS": path}
    if path in AUTO["available"]:
        k = topology(env)
        assert k["path"] == path and k["forced"] and "MOEUPCYCLE_KERNELS" in k["reason"]
    else:
        # Never run an instruction the CPU lacks: the runtime refuses to start.
        p = run("topology", env=env, check=False)
        assert p.returncode != 0
        assert f"MOEUPCYCLE_KERNELS={path}: this CPU (or its OS) does not support" in p.stderr


def test_an_unknown_path_is_refused_through_the_c_api():
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from moeupcycle import _capi as C\n"
        "import ctypes\n"
        "h = ctypes.c_void_p()\n"
        "p = C.moe_runtime_params(); C.lib.moe_runtime_params_init(ctypes.byref(p), ctypes.sizeof(p))\n"
        "s = C.lib.moe_runtime_create(ctypes.byref(h), ctypes.byref(p))\n"
        "print(s, C.lib.moe_last_error().decode())\n"
    ) % str(HERE.parents[1] / "bindings" / "python")
    env = dict(os.environ, MOEUPCYCLE_KERNELS="sse9")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    status, message = out.split(" ", 1)
    assert int(status) == C.MOE_ERR_INVALID_ARGUMENT, out
    assert "MOEUPCYCLE_KERNELS='sse9' is not a kernel path" in message and "portable" in message


OTHER_PATHS = [p for p in PATHS if p in AUTO["available"] and p != AUTO["path"]]


@pytest.mark.parametrize("path", OTHER_PATHS)
def test_layer_reference_tests_on_another_path(path):
    # The default path runs the whole suite; every other path this CPU runs gets
    # the layer's forward, backward and odd-shape reference tests.
    env = dict(os.environ, MOEUPCYCLE_KERNELS=path)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        str(HERE / "test_layer.py"), "-k",
                        "forward_matches_reference or backward_matches_reference or odd_shapes or bf16_storage"
                        " or shared_expert or deterministic"],
                       capture_output=True, text=True, env=env, cwd=HERE)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert " passed" in p.stdout and "skipped" not in p.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("kernels")
    path = root / "llama"
    write_tiny(path)
    data = root / "text.txt"
    data.write_text(EVAL_TEXT * 4)
    return path, data


def test_evaluation_agrees_on_every_path(tiny):
    path, data = tiny
    results = {}
    for k in AUTO["available"]:
        j = json.loads(run("eval", path, "--data", data, "--seq-len", 64, "--json",
                           env={"MOEUPCYCLE_KERNELS": k}).stdout)
        assert j["tokens_scored"] > 100
        results[k] = j["mean_nll"]
    base = results[AUTO["path"]]
    for k, nll in results.items():
        assert abs(nll - base) <= 1e-5 * max(1.0, abs(base)), results


def test_the_decode_row_walk_is_reported_and_can_be_forced():
    # Intel CPUs read four rows side by side with prefetch hints; the others
    # read one row after another.
    want = "hinted" if "Intel" in AUTO["cpu_brand"] else "sequential"
    assert AUTO["decode_rows"] == want and AUTO["decode_rows_reason"]
    assert f"decode rows {want}" in run("topology").stdout
    for walk in ("sequential", "hinted"):
        k = topology({"MOEUPCYCLE_DECODE_ROWS": walk})
        assert k["decode_rows"] == walk and "MOEUPCYCLE_DECODE_ROWS" in k["decode_rows_reason"]
    p = run("topology", env={"MOEUPCYCLE_DECODE_ROWS": "zigzag"}, check=False)
    assert p.returncode != 0 and "MOEUPCYCLE_DECODE_ROWS='zigzag' is not a row walk" in p.stderr


def test_decoding_agrees_on_both_row_walks(tiny):
    # Calls of 8 tokens (eval) and of one token (generate) take the decode
    # products; the walks differ only in the order of each row's sum.
    path, data = tiny
    nll, text = {}, {}
    for walk in ("sequential", "hinted"):
        env = {"MOEUPCYCLE_DECODE_ROWS": walk}
        j = json.loads(run("eval", path, "--data", data, "--seq-len", 8, "--json", env=env).stdout)
        assert j["tokens_scored"] > 100
        nll[walk] = j["mean_nll"]
        g = json.loads(run("generate", path, "--prompt", "The sea", "--max-new-tokens", 12, "--json", env=env).stdout)
        text[walk] = g["text"]
    assert abs(nll["sequential"] - nll["hinted"]) <= 1e-5 * max(1.0, abs(nll["hinted"])), nll
    assert text["sequential"] == text["hinted"], text
