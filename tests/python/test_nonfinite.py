"""NaN and infinity through the C ABI and the CLI: a model whose weights are not finite is named in
MOE_ERR_NUMERIC errors of logits, eval and generate (never a NaN perplexity); a training step whose
loss or gradient is not finite stops with MOE_ERR_NUMERIC before anything changes, or is skipped with
MOE_NONFINITE_SKIP; a save refuses weights that are not finite and writes nothing."""
from __future__ import annotations

import ctypes
import json
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from abi import Model, Trainer, expect, ids_array, params, result
from models import CLI
from moeupcycle import _capi as C
from test_model import write_tiny

BAD = "model.layers.1.mlp.down_proj.weight"
TEXT = "To be, or not to be, that is the question. " * 40


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A tiny dense model with one NaN in BAD."""
    path = tmp_path_factory.mktemp("nonfinite") / "nan"
    write_tiny(path, seed=9)
    w = load_file(str(path / "model.safetensors"))
    w[BAD] = w[BAD].copy()
    w[BAD][3, 5] = np.nan
    save_file(w, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def test_logits_eval_and_generate_name_the_bad_weight(rt, poisoned):
    m = Model(rt, poisoned, weight_dtype="f32")
    ids = ids_array([5, 6, 7, 8])
    out = np.empty((4, m.V), np.float32)
    st = C.lib.moe_model_logits(m.h, ids, 4, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size, None)
    expect(st, C.MOE_ERR_NUMERIC, BAD)
    r = result(C.moe_eval_result)
    st = C.lib.moe_model_eval_tokens(r, m.h, ids_array(list(range(5, 60))), 55, params(C.moe_eval_params, seq_len=16))
    expect(st, C.MOE_ERR_NUMERIC, BAD)
    assert r.perplexity == 0  # nothing written on error
    for temperature in (0.0, 0.8):
        st, _, _, _, _ = m.generate_status("Hello", 64, max_new_tokens=3, temperature=temperature)
        expect(st, C.MOE_ERR_NUMERIC, BAD)
    m.close()


def test_cli_eval_and_generate_say_so(poisoned, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    for args in (["eval", poisoned, "--data", text, "--seq-len", "16"], ["generate", poisoned, "--prompt", "Hi"]):
        r = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 1, r.stdout + r.stderr
        assert BAD in r.stderr and "non-finite" in r.stderr and "nan" not in r.stdout.lower(), r.stdout + r.stderr


def weights_bytes(path):
    return (path / "model.safetensors").read_bytes()


def test_training_step_error_changes_nothing_and_skip_counts_the_step(rt, poisoned, tmp_path):
    m = Model(rt, poisoned, weight_dtype="f32")
    tokens = list(range(3, 90)) * 8
    t = Trainer(m, tokens, seq_len=12, batch=2, steps=4, eval_fraction=0)
    s = result(C.moe_train_stats)
    expect(C.lib.moe_trainer_step(s, t.h), C.MOE_ERR_NUMERIC, "loss|" + BAD)
    assert t.get_step() == 0 and s.step == 0
    # The save refuses the NaN weights and writes nothing.
    expect(C.lib.moe_trainer_save(t.h, str(tmp_path / "ckpt").encode(), 0), C.MOE_ERR_NUMERIC, BAD)
    assert list(tmp_path.iterdir()) == []
    t.close()
    skip = Trainer(m, tokens, seq_len=12, batch=2, steps=4, eval_fraction=0, on_nonfinite="skip")
    s = skip.step()
    assert s.skipped == 1 and s.step == 1 and skip.get_step() == 1 and not np.isfinite(s.loss)
    skip.close()
    m.close()


def test_a_finite_model_trains_the_same_under_both_policies(rt, tmp_path):
    path = tmp_path / "ok"
    write_tiny(path, seed=4)
    tokens = list(range(3, 90)) * 8
    runs = []
    for policy in ("error", "skip"):
        m = Model(rt, path, weight_dtype="f32")
        t = Trainer(m, tokens, seq_len=12, batch=2, steps=3, eval_fraction=0, on_nonfinite=policy)
        losses = [t.step() for _ in range(3)]
        assert all(s.skipped == 0 and np.isfinite(s.loss) for s in losses)
        t.save(tmp_path / policy)
        runs.append(weights_bytes(tmp_path / policy))
        t.close()
        m.close()
    assert runs[0] == runs[1]


def test_cli_train_stops_or_skips(poisoned, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    base = [str(CLI), "train", str(poisoned), "--data", str(text), "--steps", "2", "--batch", "1", "--seq-len", "16",
            "--eval-fraction", "0"]
    r = subprocess.run(base + ["--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert r.returncode == 1 and "non-finite" in r.stderr and not (tmp_path / "a").exists(), r.stdout + r.stderr
    r = subprocess.run(base + ["--out", str(tmp_path / "b"), "--on-nonfinite", "skip"], capture_output=True, text=True)
    # Both steps are skipped and reported; the final save then refuses the NaN weights.
    assert r.stdout.count("skipped") == 2, r.stdout
    assert r.returncode == 1 and BAD in r.stderr and not (tmp_path / "b").exists(), r.stdout + r.stderr
    log = [json.loads(l) for l in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [row["skipped"] for row in log if "loss" in row] == [True, True]
