"""Training through the C ABI and the CLI: overfitting, exact resume, checkpoints, errors."""
import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest

from moeupcycle import _capi as C
from models import CLI, upcycle
from test_model import Model, Runtime, check, expect, ids_array, last_error, write_tiny

PATTERN = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101]


def trainer_params(**kw):
    p = C.moe_trainer_params()
    C.lib.moe_trainer_params_init(p)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


class Trainer:
    def __init__(self, model, tokens, **kw):
        self.h = ctypes.c_void_p()
        check(C.lib.moe_trainer_create(ctypes.byref(self.h), model.h, ids_array(tokens), len(tokens),
                                       trainer_params(**kw)))

    def step(self):
        s = C.moe_train_stats()
        s.struct_size = ctypes.sizeof(s)
        check(C.lib.moe_trainer_step(s, self.h))
        return s

    def save(self, path, force=0):
        check(C.lib.moe_trainer_save(self.h, str(path).encode(), force))

    def close(self):
        C.lib.moe_trainer_free(self.h)
        self.h = None


@pytest.fixture(scope="module")
def rt():
    r = Runtime(threads=2)
    yield r
    r.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "llama"
    write_tiny(path, seed=5)
    return path


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("train") / "mixtral"
    upcycle(tiny, out, num_experts=4, top_k=2, method="drop", ratio=0.5, seed=1)
    return out


def f32(rt, path):
    return Model(rt, path, weight_dtype=C.MOE_DTYPE_F32)


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_tiny_model_overfits_a_tiny_batch(rt, tiny, mixtral, which):
    model = f32(rt, tiny if which == "dense" else mixtral)
    t = Trainer(model, PATTERN * 20, seq_len=15, batch=2, steps=60, lr=1e-2, schedule=C.MOE_LR_CONSTANT,
                weight_decay=0.0, eval_fraction=0.0)
    losses = [t.step().loss for _ in range(60)]
    t.close()
    assert losses[0] > 3 and losses[-1] < 0.2, (losses[0], losses[-1])
    assert all(np.isfinite(losses))


def read_bytes(d, name):
    return (Path(d) / name).read_bytes()


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_interrupted_and_resumed_run_is_bit_identical(rt, tiny, mixtral, tmp_path, which):
    src = tiny if which == "dense" else mixtral
    tokens = [int(v) for v in np.random.default_rng(4).integers(0, 256, 600)]
    kw = dict(seq_len=12, batch=3, steps=6, warmup=2, lr=3e-3, min_lr=3e-4, seed=9, eval_fraction=0.1)
    straight = Trainer(f32(rt, src), tokens, **kw)
    for _ in range(6):
        straight.step()
    straight.save(tmp_path / "straight")
    straight.close()

    first = Trainer(f32(rt, src), tokens, **kw)
    for _ in range(3):
        first.step()
    first.save(tmp_path / "half")
    first.close()
    second = Trainer(f32(rt, tmp_path / "half"), tokens, **kw)
    check(C.lib.moe_trainer_resume(second.h, str(tmp_path / "half").encode()))
    step = ctypes.c_uint64()
    check(C.lib.moe_trainer_get_step(step, second.h))
    assert step.value == 3
    for _ in range(3):
        second.step()
    second.save(tmp_path / "half", force=1)   # over the checkpoint it resumed from
    second.close()
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert read_bytes(tmp_path / "straight", name) == read_bytes(tmp_path / "half", name), name
    assert (tmp_path / "half" / "tokenizer.json").exists()


def test_checkpoint_loads_and_held_out_loss_falls(rt, tiny, tmp_path):
    tokens = PATTERN * 40
    model = f32(rt, tiny)
    t = Trainer(model, tokens, seq_len=15, batch=2, steps=30, lr=5e-3, eval_fraction=0.2)
    before = ctypes.c_double()
    check(C.lib.moe_trainer_eval(before, t.h))
    for _ in range(30):
        t.step()
    after = ctypes.c_double()
    check(C.lib.moe_trainer_eval(after, t.h))
    assert after.value < before.value - 0.5, (before.value, after.value)
    t.save(tmp_path / "ckpt")
    expect(C.lib.moe_trainer_save(t.h, str(tmp_path / "ckpt").encode(), 0), C.MOE_ERR_EXISTS, "exists")
    t.close()
    reloaded = Model(rt, tmp_path / "ckpt")
    ids = PATTERN[:10]
    a = np.empty(10 * model.V, np.float32)
    b = np.empty(10 * model.V, np.float32)
    check(C.lib.moe_model_logits(model.h, ids_array(ids), 10, a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), a.size))
    check(C.lib.moe_model_logits(reloaded.h, ids_array(ids), 10, b.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                 b.size))
    assert np.array_equal(a, b)


def test_train_only_routers_leaves_everything_else(rt, mixtral, tmp_path):
    model = f32(rt, mixtral)
    t = Trainer(model, PATTERN * 20, seq_len=15, batch=2, steps=3, train_only=C.MOE_TRAIN_ROUTERS, eval_fraction=0)
    for _ in range(3):
        t.step()
    t.save(tmp_path / "routers")
    t.close()
    from models import read_safetensors_dir
    before, after = read_safetensors_dir(mixtral), read_safetensors_dir(tmp_path / "routers")
    for name, value in before.items():
        same = np.array_equal(value.astype(np.float32), after[name].astype(np.float32))
        assert same != name.endswith("block_sparse_moe.gate.weight"), name


def test_trainer_errors(rt, tiny, tmp_path):
    model = f32(rt, tiny)
    h = ctypes.c_void_p()
    expect(C.lib.moe_trainer_create(None, model.h, ids_array([1, 2]), 2, None), C.MOE_ERR_NULL_POINTER, "out")
    expect(C.lib.moe_trainer_create(ctypes.byref(h), None, ids_array([1, 2]), 2, None), C.MOE_ERR_NULL_POINTER, "model")
    expect(C.lib.moe_trainer_create(ctypes.byref(h), model.h, ids_array([1] * 20), 20, trainer_params(seq_len=64)),
           C.MOE_ERR_INVALID_ARGUMENT, "seq_len")
    expect(C.lib.moe_trainer_create(ctypes.byref(h), model.h, ids_array([1, 999]), 2, None),
           C.MOE_ERR_INVALID_ARGUMENT, "999")
    expect(C.lib.moe_trainer_create(ctypes.byref(h), model.h, ids_array([1] * 600), 600, trainer_params(lr=-1.0)),
           C.MOE_ERR_INVALID_ARGUMENT, "lr")
    bad = trainer_params()
    bad.struct_size = 8
    expect(C.lib.moe_trainer_create(ctypes.byref(h), model.h, ids_array([1] * 600), 600, bad),
           C.MOE_ERR_INVALID_ARGUMENT, "struct_size")
    bf16 = Model(rt, tiny, weight_dtype=C.MOE_DTYPE_BF16)
    expect(C.lib.moe_trainer_create(ctypes.byref(h), bf16.h, ids_array([1] * 600), 600, None),
           C.MOE_ERR_UNSUPPORTED, "f32")
    # Resuming with other settings is refused.
    t = Trainer(model, [1] * 600, seq_len=8, seed=1)
    t.step()
    t.save(tmp_path / "ck")
    t.close()
    other = Trainer(f32(rt, tmp_path / "ck"), [1] * 600, seq_len=8, seed=2)
    expect(C.lib.moe_trainer_resume(other.h, str(tmp_path / "ck").encode()), C.MOE_ERR_INVALID_ARGUMENT, "seed")
    expect(C.lib.moe_trainer_resume(other.h, str(tmp_path / "nowhere").encode()), C.MOE_ERR_NOT_FOUND, "nowhere")
    other.close()
    expect(C.lib.moe_trainer_step(None, None), C.MOE_ERR_NULL_POINTER, "trainer")
    assert last_error()


def run(*args):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True)


def test_cli_train_resume_and_eval(tiny, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("Hello world! The cat sat on the mat. " * 60)
    common = ["--data", data, "--batch", "2", "--seq-len", "12", "--constant-lr", "--lr", "3e-3", "--seed", "4"]
    straight = run("train", tiny, "--out", tmp_path / "a", "--steps", "4", *common)
    assert straight.returncode == 0, straight.stderr
    assert "held-out loss" in straight.stdout and "step     4/4" in straight.stdout
    log = (tmp_path / "a.jsonl").read_text().splitlines()
    assert len([l for l in log if '"loss"' in l]) == 4
    half = run("train", tiny, "--out", tmp_path / "b", "--steps", "2", *common)
    assert half.returncode == 0, half.stderr
    resumed = run("train", tiny, "--out", tmp_path / "b", "--steps", "4", "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr
    assert "step     3/4" in resumed.stdout and "step     1/4" not in resumed.stdout
    assert read_bytes(tmp_path / "a", "model.safetensors") == read_bytes(tmp_path / "b", "model.safetensors")
    again = run("train", tiny, "--out", tmp_path / "a", "--steps", "1", *common)
    assert again.returncode == 1 and "exists" in again.stderr
    ev = run("eval", tmp_path / "a", "--data", data, "--seq-len", "16")
    assert ev.returncode == 0 and "perplexity" in ev.stdout
    assert run("train", tiny, "--out", tmp_path / "c", "--steps", "x", *common).returncode == 2
    missing = run("train", tiny, "--out", tmp_path / "none", "--resume", "--steps", "2", *common)
    assert missing.returncode == 1 and "checkpoint" in missing.stderr


def test_cli_train_reads_a_directory_of_texts(tiny, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "b.txt").write_text("The cat sat on the mat. " * 30)
    (texts / "a.txt").write_text("Hello world! " * 30)
    r = run("train", tiny, "--data", texts, "--out", tmp_path / "d", "--steps", "2", "--batch", "1",
            "--seq-len", "16", "--eval-fraction", "0")
    assert r.returncode == 0, r.stderr
    assert "step     2/2" in r.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("train", tiny, "--data", empty, "--out", tmp_path / "e", "--steps", "1", "--seq-len", "16")
    assert r.returncode == 1 and "tokens" in r.stderr
