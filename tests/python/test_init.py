"""Models from scratch (moe_init_model, `moeupcycle init`): the checkpoint transformers reads, the
documented initialization, the logits of the numpy reference, determinism, errors, and training."""
import ctypes
import json
import subprocess

import numpy as np
import pytest

import moeupcycle
import reference as ref
from abi import Model, Trainer, check, expect, params, result
from models import CLI, read_safetensors_dir
from moeupcycle import _capi as C
from test_hf_config import load_checked
from test_model import write_tiny

SHAPE = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96)
ARCHS = {  # name -> (moe_init_params fields, model_type)
    "llama": (dict(num_experts=0), "llama"),
    "mixtral": (dict(num_experts=4, top_k=2, format="mixtral"), "mixtral"),
    "qwen2-moe": (dict(num_experts=4, top_k=2, format="qwen2-moe", shared_expert_size=128,
                       tie_embeddings=0, routing="softmax-topk"), "qwen2_moe"),
}


@pytest.fixture(scope="module")
def vocab_src(tmp_path_factory):
    path = tmp_path_factory.mktemp("init") / "src"
    write_tiny(path, seed=2)
    return path


def init(src, out, **fields):
    r = result(C.moe_init_result)
    check(C.lib.moe_init_model(r, str(src).encode(), str(out).encode(), params(C.moe_init_params, **fields)))
    return r


def init_status(src, out, **fields):
    return C.lib.moe_init_model(None, str(src).encode(), str(out).encode(), params(C.moe_init_params, **fields))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_new_model_is_what_transformers_and_the_reference_read(rt, vocab_src, tmp_path, arch):
    fields, model_type = ARCHS[arch]
    out = tmp_path / arch
    r = init(vocab_src, out, **SHAPE, **fields, init_std=0.05, seed=3)
    raw, config = load_checked(out, model_type)
    src_config = json.loads((vocab_src / "config.json").read_text())
    assert raw["vocab_size"] == src_config["vocab_size"] and raw["initializer_range"] == 0.05
    assert raw["moeupcycle"]["method"] == "init" and raw["moeupcycle"]["seed"] == 3
    assert (out / "tokenizer.json").read_bytes() == (vocab_src / "tokenizer.json").read_bytes()
    w = read_safetensors_dir(out)
    assert r.parameters == sum(a.size for a in w.values()) and r.bytes_written == 4 * r.parameters
    info = moeupcycle.inspect(out)
    assert info.param_count == r.parameters and info.active_param_count == r.active_parameters
    if arch == "llama":
        assert r.active_parameters == r.parameters
    else:
        E, F, H = fields["num_experts"], SHAPE["intermediate_size"], SHAPE["hidden_size"]
        assert r.parameters - r.active_parameters == 2 * (E - 2) * 3 * F * H
    # The documented initialization: N(0, std^2) matrices, unit norms, zero biases.
    for name, a in w.items():
        if name.endswith("norm.weight"):
            assert np.all(a == 1), name
        elif name.endswith(".bias"):
            assert np.all(a == 0), name
        else:
            assert a.ndim == 2 and abs(a.mean()) < 5 * 0.05 / np.sqrt(a.size), name
            if a.size >= 4096:
                assert abs(a.std() / 0.05 - 1) < 0.05, (name, a.std())
    assert ("lm_head.weight" in w) == (arch == "qwen2-moe")
    # The library runs it as the numpy reference does.
    model = Model(rt, out, weight_dtype=C.MOE_DTYPE_F32)
    ids = [3, 17, 40, 5, 60, 9, 22]
    want = ref.forward(w, raw, ids)
    got = model.logits(ids)
    model.close()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_same_seed_same_bytes_and_shared_tensors_across_architectures(vocab_src, tmp_path):
    init(vocab_src, tmp_path / "a", **SHAPE, seed=7)
    init(vocab_src, tmp_path / "b", **SHAPE, seed=7)
    init(vocab_src, tmp_path / "c", **SHAPE, seed=8)
    init(vocab_src, tmp_path / "m", **SHAPE, **ARCHS["mixtral"][0], seed=7)
    a, b = (tmp_path / d / "model.safetensors" for d in "ab")
    assert a.read_bytes() == b.read_bytes()
    wa, wc, wm = (read_safetensors_dir(tmp_path / d) for d in "acm")
    assert not np.array_equal(wa["model.embed_tokens.weight"], wc["model.embed_tokens.weight"])
    # A tensor's values depend on the seed and its name only.
    for name in wa:
        if "mlp." not in name:
            np.testing.assert_array_equal(wa[name], wm[name], err_msg=name)
    gate = wm["model.layers.0.block_sparse_moe.experts.0.w1.weight"]
    assert not np.array_equal(gate, wm["model.layers.0.block_sparse_moe.experts.1.w1.weight"])
    # bf16: the f32 values rounded.
    init(vocab_src, tmp_path / "h", **SHAPE, seed=7, dtype="bf16")
    wh = read_safetensors_dir(tmp_path / "h")
    from models import bf16_round
    np.testing.assert_array_equal(wh["model.layers.1.mlp.up_proj.weight"], bf16_round(wa["model.layers.1.mlp.up_proj.weight"]))


def test_existing_output_is_refused_unless_forced(vocab_src, tmp_path):
    out = tmp_path / "m"
    init(vocab_src, out, **SHAPE, seed=1)
    before = (out / "model.safetensors").read_bytes()
    expect(init_status(vocab_src, out, **SHAPE, seed=2), C.MOE_ERR_EXISTS, "exists")
    assert (out / "model.safetensors").read_bytes() == before
    init(vocab_src, out, **SHAPE, seed=2, force=1)
    assert (out / "model.safetensors").read_bytes() != before
    expect(init_status(vocab_src, vocab_src, **SHAPE, force=1), C.MOE_ERR_INVALID_ARGUMENT, "input|source")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("fields, code, fragment", [
    (dict(num_heads=6, num_kv_heads=4), C.MOE_ERR_INVALID_ARGUMENT, "multiple of KV heads"),
    (dict(hidden_size=0), C.MOE_ERR_INVALID_ARGUMENT, "hidden size"),
    (dict(hidden_size=60, num_heads=8), C.MOE_ERR_INVALID_ARGUMENT, "head dimension"),
    (dict(head_dim=7), C.MOE_ERR_INVALID_ARGUMENT, "even"),
    (dict(num_layers=0), C.MOE_ERR_INVALID_ARGUMENT, "layers"),
    (dict(num_layers=1 << 30), C.MOE_ERR_INVALID_ARGUMENT, "layers"),
    (dict(init_std=float("nan")), C.MOE_ERR_INVALID_ARGUMENT, "init std"),
    (dict(init_std=0.0), C.MOE_ERR_INVALID_ARGUMENT, "init std"),
    (dict(num_experts=4, top_k=5), C.MOE_ERR_INVALID_ARGUMENT, "top-k"),
    (dict(num_experts=5000), C.MOE_ERR_INVALID_ARGUMENT, "experts"),
    (dict(num_experts=4, shared_expert_size=32), C.MOE_ERR_UNSUPPORTED, "shared expert"),
    (dict(num_experts=4, routing="softmax-topk"), C.MOE_ERR_UNSUPPORTED, "renormalizes"),
    (dict(routing="sigmoid-topk"), C.MOE_ERR_UNSUPPORTED, "routing"),
    (dict(dtype="f16"), C.MOE_ERR_UNSUPPORTED, "f32 or bf16"),
    (dict(max_shard_bytes=10), C.MOE_ERR_INVALID_ARGUMENT, "shard"),
    (dict(rope_theta=-1.0), C.MOE_ERR_INVALID_ARGUMENT, "rope theta"),
])
def test_bad_parameters_are_refused_with_a_reason(vocab_src, tmp_path, fields, code, fragment):
    out = tmp_path / "bad"
    expect(init_status(vocab_src, out, **{**SHAPE, **fields}), code, fragment)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_sources_and_pointers(vocab_src, tmp_path):
    expect(C.lib.moe_init_model(None, None, str(tmp_path / "x").encode(), None), C.MOE_ERR_NULL_POINTER,
           "tokenizer_source")
    expect(C.lib.moe_init_model(None, str(vocab_src).encode(), None, None), C.MOE_ERR_NULL_POINTER, "output_path")
    expect(C.lib.moe_init_model(None, str(tmp_path / "none").encode(), str(tmp_path / "x").encode(), None),
           C.MOE_ERR_NOT_FOUND, "none")
    notok = tmp_path / "notok"
    write_tiny(notok, tokenizer=False)
    expect(C.lib.moe_init_model(None, str(notok).encode(), str(tmp_path / "x").encode(), None),
           C.MOE_ERR_NOT_FOUND, "tokenizer")
    bad = result(C.moe_init_result)
    bad.struct_size = 3
    expect(C.lib.moe_init_model(bad, str(vocab_src).encode(), str(tmp_path / "x").encode(), None),
           C.MOE_ERR_INVALID_ARGUMENT, "out")
    assert not (tmp_path / "x").exists()
    # NULL params: every default (a 4-layer Llama of hidden size 256).
    r = result(C.moe_init_result)
    check(C.lib.moe_init_model(ctypes.byref(r), str(vocab_src).encode(), str(tmp_path / "d").encode(), None))
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]) == (256, 4, 704)


def run(*args):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True)


def test_cli_init_then_training_lowers_the_held_out_loss(vocab_src, tmp_path):
    out = tmp_path / "moe"
    p = run("init", "--vocab-from", vocab_src, out, "--arch", "qwen2-moe", "--hidden", "64", "--layers", "2",
            "--heads", "4", "--kv-heads", "2", "--ffn", "64", "--experts", "4", "--top-k", "2", "--seed", "5")
    assert p.returncode == 0, p.stderr
    assert "initialized" in p.stdout and "qwen2-moe" in p.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_experts"] == 4 and cfg["shared_expert_intermediate_size"] == 64 and cfg["tie_word_embeddings"]
    again = run("init", "--vocab-from", vocab_src, out)
    assert again.returncode == 1 and "exists" in again.stderr
    assert run("init", out).returncode == 2
    assert run("init", "--vocab-from", vocab_src, tmp_path / "x", "--arch", "gpt2").returncode == 2
    assert run("init", "--vocab-from", vocab_src, tmp_path / "x", "--experts", "4").returncode == 2
    assert not (tmp_path / "x").exists()
    data = tmp_path / "data.txt"
    data.write_text("Hello world! The cat sat on the mat. " * 80)
    t = run("train", out, "--data", data, "--out", tmp_path / "trained", "--steps", "30", "--batch", "4",
            "--seq-len", "16", "--lr", "3e-3", "--warmup", "2", "--eval-every", "15", "--seed", "1")
    assert t.returncode == 0, t.stderr
    log = [json.loads(line) for line in (tmp_path / "trained.jsonl").read_text().splitlines()]
    held = [e["eval_loss"] for e in log if "eval_loss" in e]
    assert len(held) >= 2 and held[-1] < held[0] - 1.0, held
    # A fresh model predicts about uniformly: the first loss is near log(vocab).
    first = next(e["loss"] for e in log if "loss" in e)
    assert abs(first - np.log(cfg["vocab_size"])) < 0.5, first


def test_python_binding_init_model(vocab_src, tmp_path):
    r = moeupcycle.init_model(vocab_src, tmp_path / "m", hidden_size=32, num_layers=1, num_heads=2,
                              num_experts=2, top_k=1, format="mixtral", seed=4)
    assert r.parameters == moeupcycle.inspect(tmp_path / "m").param_count
    with pytest.raises(TypeError):
        moeupcycle.init_model(vocab_src, tmp_path / "n", hidden=32)
