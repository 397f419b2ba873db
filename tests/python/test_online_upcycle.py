"""Online upcycling (moe_model_params.upcycle, `train --upcycle`): a dense model upcycled in memory is
the model that upcycling to disk and loading gives, bit for bit, and trains to the same bytes."""
import ctypes
import json
import subprocess

import numpy as np
import pytest

from abi import Model, Trainer, check, expect, params, upcycle
from models import CLI
from moeupcycle import _capi as C
from test_model import write_tiny

PATTERN = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101]
METHODS = [
    dict(num_experts=4, top_k=2, method="copy"),
    dict(num_experts=4, top_k=2, method="drop", ratio=0.5, seed=3, dtype="bf16"),
    dict(num_experts=4, top_k=1, method="partition", format="qwen2-moe", layers="1", routing="softmax-topk", seed=2),
    dict(num_experts=2, top_k=2, method="noise", noise_std=0.05, shared_expert=1, format="qwen2-moe", seed=9),
    # Calibrated on text (written by the test): co-activation clusters and a k-means router.
    dict(num_experts=4, top_k=2, method="partition", partition_select="cluster", router_init="kmeans",
         calibration_path="@text", calibration_samples=32, seed=5),
]
CALIBRATION_TEXT = "So the one thin seer, in the heat of the sea air, sat and then ate the other thing.\n" * 8


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("online") / "dense"
    write_tiny(path, seed=4)
    return path


def online(rt, path, **fields):
    up = params(C.moe_upcycle_params, **fields)
    return Model(rt, path, weight_dtype=C.MOE_DTYPE_F32, upcycle=ctypes.pointer(up))


@pytest.mark.parametrize("fields", METHODS, ids=[m.get("partition_select", m["method"]) for m in METHODS])
def test_online_equals_upcycled_on_disk(rt, dense, tmp_path, fields):
    if fields.get("calibration_path") == "@text":
        (tmp_path / "calibration.txt").write_text(CALIBRATION_TEXT)
        fields = dict(fields, calibration_path=str(tmp_path / "calibration.txt"))
    upcycle(dense, tmp_path / "moe", **fields)
    disk = Model(rt, tmp_path / "moe", weight_dtype=C.MOE_DTYPE_F32)
    mem = online(rt, dense, **fields)
    assert mem.get_info().num_experts == disk.get_info().num_experts == fields["num_experts"]
    ids = [3, 17, 40, 5, 60, 9, 22, 31]
    np.testing.assert_array_equal(mem.logits(ids), disk.logits(ids))
    # Trained alike, saved alike: the same tensor bytes.
    for m, name in ((disk, "a"), (mem, "b")):
        t = Trainer(m, PATTERN * 20, seq_len=15, batch=2, steps=2, lr=1e-3, eval_fraction=0.0)
        t.step()
        t.step()
        t.save(tmp_path / name)
        t.close()
        m.close()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    a, b = (json.loads((tmp_path / n / "config.json").read_text()) for n in "ab")
    assert a == b
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())
    # Nothing was written beside the dense model.
    assert sorted(p.name for p in dense.parent.iterdir()) == ["dense"]


def test_online_upcycle_errors(rt, dense, tmp_path):
    def status(path, **fields):
        h = ctypes.c_void_p()
        up = params(C.moe_upcycle_params, **fields)
        st = C.lib.moe_model_load(ctypes.byref(h), rt.h, str(path).encode(),
                                  params(C.moe_model_params, upcycle=ctypes.pointer(up)))
        C.lib.moe_model_free(h)
        return st
    expect(status(dense, num_experts=0), C.MOE_ERR_INVALID_ARGUMENT, "num_experts")
    expect(status(dense, num_experts=2, top_k=3), C.MOE_ERR_INVALID_ARGUMENT, "top-k")
    upcycle(dense, tmp_path / "moe", num_experts=2, top_k=1)
    expect(status(tmp_path / "moe", num_experts=2, top_k=1), C.MOE_ERR_UNSUPPORTED, "already an MoE")
    up = params(C.moe_upcycle_params)
    up.struct_size = 8
    h = ctypes.c_void_p()
    expect(C.lib.moe_model_load(ctypes.byref(h), rt.h, str(dense).encode(),
                                params(C.moe_model_params, upcycle=ctypes.pointer(up))),
           C.MOE_ERR_INVALID_ARGUMENT, "struct_size")
    assert not h


def run(*args):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True)


def test_cli_train_upcycle_equals_upcycle_then_train(dense, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("Hello world! The cat sat on the mat. " * 60)
    spec = "--experts 4 --top-k 2 --method drop --ratio 0.5 --seed 7"
    common = ["--data", data, "--steps", "3", "--batch", "2", "--seq-len", "12", "--lr", "1e-3", "--seed", "2"]
    p = run("upcycle", dense, tmp_path / "moe", *spec.split())
    assert p.returncode == 0, p.stderr
    a = run("train", tmp_path / "moe", "--out", tmp_path / "a", *common)
    b = run("train", dense, "--upcycle", spec, "--out", tmp_path / "b", *common)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    la = [json.loads(x)["loss"] for x in (tmp_path / "a.jsonl").read_text().splitlines() if '"loss"' in x]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b.jsonl").read_text().splitlines() if '"loss"' in x]
    assert la == lb and len(la) == 3
    # Resuming the MoE run ignores --upcycle (DIR holds the MoE).
    r = run("train", dense, "--upcycle", spec, "--out", tmp_path / "b", "--resume", *common[:2], "--steps", "4",
            *common[4:])
    assert r.returncode == 0, r.stderr
    bad = run("train", dense, "--upcycle", "--experts 4 --bogus 1", "--out", tmp_path / "c", *common)
    assert bad.returncode == 2 and "--bogus" in bad.stderr and not (tmp_path / "c").exists()
