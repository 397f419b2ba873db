"""Each problem found by a fuzz and fault campaign against the library, replayed from its committed
reproducer (tests/python/regressions/*.json) through the C ABI: the call must fail with the stated
status and a message that says what is wrong, quickly, and leave nothing behind."""
from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from abi import expect, ids_array, params, result
from models import dense_weights, write_hf
from moeupcycle import _capi as C

SEEDS = sorted((Path(__file__).parent / "regressions").glob("*.json"))


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    src = tmp_path_factory.mktemp("regressions") / "dense"
    write_hf(src, dense_weights(np.random.default_rng(0)))
    return src


def status_codes(spec: str):
    return [getattr(C, name) for name in spec.split("|")]


def expect_one_of(status, codes, fragments, not_in=()):
    code = status if status in codes else codes[0]
    msg = expect(status, code, *fragments)
    for f in not_in:
        assert f not in msg, f"{f!r} in {msg!r}"


@pytest.mark.parametrize("seed", SEEDS, ids=[s.stem for s in SEEDS])
def test_regression(seed, dense, tmp_path, monkeypatch):
    case = json.loads(seed.read_text())
    codes = status_codes(case["status"])
    start = time.monotonic()
    if case["call"] == "trainer_create":
        rt = ctypes.c_void_p()
        assert C.lib.moe_runtime_create(ctypes.byref(rt), params(C.moe_runtime_params, threads=1)) == C.MOE_OK
        model = ctypes.c_void_p()
        assert C.lib.moe_model_load(ctypes.byref(model), rt, str(dense).encode(),
                                    params(C.moe_model_params, weight_dtype="f32")) == C.MOE_OK
        trainer = ctypes.c_void_p()
        st = C.lib.moe_trainer_create(ctypes.byref(trainer), model, ids_array([1, 2, 3] * 400), 1200,
                                      params(C.moe_trainer_params, seq_len=16, **case["params"]))
        expect_one_of(st, codes, case["message"])
        assert not trainer
        C.lib.moe_model_free(model)
        C.lib.moe_runtime_free(rt)
    elif case["call"] == "runtime_create":
        p = dict(case["params"])
        synthetic = p.pop("topology_synthetic").encode()
        rp = params(C.moe_runtime_params, **p)
        rp.topology_synthetic = synthetic
        rt = ctypes.c_void_p()
        st = C.lib.moe_runtime_create(ctypes.byref(rt), rp)
        expect_one_of(st, codes, case["message"])
        assert not rt
    elif case["call"] == "upcycle":
        # Outputs named by a placeholder: FILE (a regular file), LINK (a symlink to a directory), DIR (an
        # existing directory), "." (the current directory, here an empty one).
        (tmp_path / "FILE").write_text("not a directory")
        (tmp_path / "target").mkdir()
        (tmp_path / "LINK").symlink_to(tmp_path / "target")
        (tmp_path / "DIR").mkdir()
        (tmp_path / "cwd").mkdir()
        monkeypatch.chdir(tmp_path / "cwd")
        out = case.get("output", "out")
        out_path = out if out == "." else str(tmp_path / out)
        before = {p.name: p.stat().st_size for p in tmp_path.rglob("*")}
        p = dict(case["params"])
        layers = p.pop("layers", None)
        up = params(C.moe_upcycle_params, **p)
        if layers is not None:
            keep = layers.encode()
            up.layers = keep
        st = C.lib.moe_upcycle(result(C.moe_upcycle_result), str(dense).encode(), out_path.encode(), up)
        expect_one_of(st, codes, case["message"], case.get("not_in_message", ()))
        after = {p.name: p.stat().st_size for p in tmp_path.rglob("*")}
        assert after == before, "the failed upcycle left or changed files"
        assert (tmp_path / "FILE").read_text() == "not a directory"
        assert os.path.islink(tmp_path / "LINK")
    else:
        raise AssertionError(f"{seed.name}: unknown call {case['call']!r}")
    assert time.monotonic() - start < case.get("seconds", 30), f"{seed.name} took too long"
