"""GGUF export (moe_export, `moeupcycle export`): the gguf package reads every file with the keys and
tensor types llama.cpp expects, tensor data sits at aligned offsets, the library's loader gives the
source's logits back (dense, Mixtral, Qwen2-MoE with a shared expert), quantized types stay within
their blocks' error, and llama.cpp (llama-cpp-python) runs the files with the library's logits."""
import ctypes
import json
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

import reference as ref
from abi import Model, check, params, raises, result, upcycle
from models import CLI, dense_weights, read_safetensors_dir, write_hf
from moeupcycle import _capi as C

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 300
TOKENS = [84, 257, 258, 97, 116, 261, 58, 32, 259, 299, 0, 255, 128, 17]


def export(src, out, **fields):
    r = result(C.moe_export_result)
    check(C.lib.moe_export(r, str(src).encode(), str(out).encode(), params(C.moe_export_params, **fields)))
    return r


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny dense Llama with the byte-level tokenizer, and MoEs upcycled from it."""
    base = tmp_path_factory.mktemp("export")
    dense = base / "dense"
    write_hf(dense, dense_weights(np.random.default_rng(3), vocab=VOCAB, hidden=64, ffn=96, heads=4, kv_heads=2))
    ref.write_tiny_tokenizer(dense)
    upcycle(dense, base / "mixtral", num_experts=4, top_k=2, method="drop", ratio=0.3, router_std=0.5, seed=1)
    upcycle(dense, base / "qwen2moe", num_experts=4, top_k=2, method="noise", noise_std=0.05, ratio=0.5,
            router_std=0.5, format="qwen2-moe", routing="softmax-topk", seed=2)
    return base


def logits(rt, path):
    m = Model(rt, path, weight_dtype=C.MOE_DTYPE_F32)
    try:
        return m.logits(TOKENS)
    finally:
        m.close()


@pytest.mark.parametrize("which, arch", [("dense", "llama"), ("mixtral", "llama"), ("qwen2moe", "qwen2moe")])
def test_round_trip_and_what_the_gguf_package_reads(rt, models, tmp_path, which, arch):
    src = models / which
    out = tmp_path / f"{which}.gguf"
    r = export(src, out)
    assert r.tensors_written > 0 and r.bytes_written == out.stat().st_size and r.fallback_tensors == 0
    np.testing.assert_allclose(logits(rt, out), logits(rt, src), rtol=0, atol=1e-4)

    g = gguf.GGUFReader(str(out))
    field = lambda k: g.fields[k].contents()
    assert field("general.architecture") == arch and field("general.alignment") == 32
    assert field(f"{arch}.embedding_length") == 64 and field(f"{arch}.block_count") == 2
    assert field(f"{arch}.attention.head_count") == 4 and field(f"{arch}.attention.head_count_kv") == 2
    assert field(f"{arch}.vocab_size") == VOCAB and field("general.file_type") == 0
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == VOCAB and field("tokenizer.ggml.model") == "gpt2"
    tok = json.loads((models / "dense" / "tokenizer.json").read_text())
    for text, i in tok["model"]["vocab"].items():
        assert tokens[i] == text
    assert tokens[-1] == f"[PAD{VOCAB - 1}]" and types[-1] == 5
    assert field("tokenizer.ggml.merges")[:1] == [" ".join(m) if isinstance(m, list) else m
                                                   for m in tok["model"]["merges"][:1]]
    names = {t.name: t for t in g.tensors}
    assert names["token_embd.weight"].shape.tolist() == [64, VOCAB]
    # Every tensor's data is 32-byte aligned, in order, without overlap, inside the file.
    starts = sorted((int(t.data_offset), int(t.n_bytes)) for t in g.tensors)
    assert all(s % 32 == 0 for s, _ in starts)
    assert all(a + n <= b for (a, n), (b, _) in zip(starts, starts[1:]))
    assert starts[-1][0] + starts[-1][1] <= out.stat().st_size
    if which != "dense":
        assert field(f"{arch}.expert_count") == 4 and field(f"{arch}.expert_used_count") == 2
        assert names["blk.0.ffn_gate_exps.weight"].shape.tolist() == [64, 96 if arch == "llama" else 96, 4]
        assert names["blk.1.ffn_down_exps.weight"].shape.tolist() == [96, 64, 4]
        assert names["blk.0.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        # Expert 2's up projection is the stack's third slice.
        w = read_safetensors_dir(src)
        hf = ("model.layers.1.block_sparse_moe.experts.2.w3.weight" if arch == "llama"
              else "model.layers.1.mlp.experts.2.up_proj.weight")
        np.testing.assert_array_equal(np.asarray(names["blk.1.ffn_up_exps.weight"].data)[2], w[hf])
    if arch == "qwen2moe":
        assert field("qwen2moe.expert_shared_feed_forward_length") == 96
        assert names["blk.0.ffn_gate_inp_shexp.weight"].shape.tolist() == [64]
        assert "output.weight" in names  # llama.cpp's qwen2moe needs it even when tied
    else:
        # Q rows in llama.cpp's order: stored row h*d + 2b + a holds HF row h*d + a*d/2 + b.
        w = read_safetensors_dir(src)
        q = w["model.layers.0.self_attn.q_proj.weight"]
        d = 16
        stored = np.asarray(names["blk.0.attn_q.weight"].data)
        for h in range(4):
            for b in range(d // 2):
                for a in range(2):
                    np.testing.assert_array_equal(stored[h * d + 2 * b + a], q[h * d + a * d // 2 + b])


@pytest.mark.parametrize("dtype, tol", [("q8_0", 0.02), ("q4_0", 0.25), ("q4_1", 0.2), ("f16", 2e-3), ("bf16", 1e-2)])
def test_types_stay_within_their_rounding(rt, models, tmp_path, dtype, tol):
    out = tmp_path / f"m.{dtype}.gguf"
    export(models / "mixtral", out, dtype=dtype)
    g = gguf.GGUFReader(str(out))
    kinds = {t.name: t.tensor_type.name for t in g.tensors}
    assert kinds["blk.0.ffn_up_exps.weight"] == dtype.upper() and kinds["blk.0.attn_norm.weight"] == "F32"
    # Every weight of the file against the source's, relative to the tensor's scale.
    src = read_safetensors_dir(models / "mixtral")
    from gguf import quants
    for t in g.tensors:
        if t.name != "blk.1.ffn_down_exps.weight":
            continue
        got = quants.dequantize(t.data, t.tensor_type).reshape(4, 64, 96)
        want = np.stack([src[f"model.layers.1.block_sparse_moe.experts.{e}.w2.weight"] for e in range(4)])
        assert np.abs(got - want).max() <= tol * np.abs(want).max()
    a, b = logits(rt, out), logits(rt, models / "mixtral")
    assert np.abs(a - b).max() <= 20 * tol * np.abs(b).max()


@pytest.mark.parametrize("fields", [dict(num_experts=4, top_k=2, method="drop", ratio=0.3, router_std=0.5, seed=1),
                                    dict(num_experts=2, top_k=1, method="noise", format="qwen2-moe",
                                         routing="softmax-topk", router_std=0.5, seed=4)])
def test_upcycle_straight_to_gguf(rt, models, tmp_path, fields):
    """An upcycle whose output ends in .gguf is the upcycle to safetensors, exported."""
    r = upcycle(models / "dense", tmp_path / "moe.gguf", **fields)
    assert r.shards == 1 and r.moe_layers == 2 and r.bytes_written == (tmp_path / "moe.gguf").stat().st_size
    upcycle(models / "dense", tmp_path / "moe", **fields)
    export(tmp_path / "moe", tmp_path / "exported.gguf")
    a, b = gguf.GGUFReader(str(tmp_path / "moe.gguf")), gguf.GGUFReader(str(tmp_path / "exported.gguf"))
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        np.testing.assert_array_equal(np.asarray(x.data), np.asarray(y.data))
    np.testing.assert_array_equal(logits(rt, tmp_path / "moe.gguf"), logits(rt, tmp_path / "moe"))
    raises(C.MOE_ERR_EXISTS, "exists", upcycle, models / "dense", tmp_path / "moe.gguf", **fields)
    p = subprocess.run([str(CLI), "upcycle", str(models / "dense"), str(tmp_path / "cli.gguf"), "--experts", "2",
                        "--top-k", "1", "--layers", "1", "--format", "qwen2-moe", "--routing", "softmax-topk"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "layer 0" in p.stderr and not (tmp_path / "cli.gguf").exists()


def test_refusals_leave_nothing_behind(models, tmp_path):
    out = tmp_path / "x.gguf"
    raises(C.MOE_ERR_INVALID_ARGUMENT, "params->dtype", export, models / "dense", out, dtype=-1)
    renorm = tmp_path / "renorm"
    upcycle(models / "dense", renorm, num_experts=2, top_k=1, format="qwen2-moe")
    raises(C.MOE_ERR_UNSUPPORTED, "renormaliz", export, renorm, out)
    subset = tmp_path / "subset"
    upcycle(models / "dense", subset, num_experts=2, top_k=1, format="qwen2-moe", routing="softmax-topk", layers="1")
    raises(C.MOE_ERR_UNSUPPORTED, "layer 0", export, subset, out)
    raises(C.MOE_ERR_NOT_FOUND, "does not exist", export, tmp_path / "missing", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["renorm", "subset"]
    out.write_bytes(b"keep")
    raises(C.MOE_ERR_EXISTS, "exists", export, models / "dense", out)
    assert out.read_bytes() == b"keep"
    export(models / "dense", out, force=1)
    assert out.read_bytes()[:4] == b"GGUF"


def test_cli_export(models, tmp_path):
    out = tmp_path / "cli.gguf"
    p = subprocess.run([str(CLI), "export", str(models / "qwen2moe"), str(out), "--type", "q8_0"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "q8_0" in p.stdout and out.exists()
    p = subprocess.run([str(CLI), "export", str(models / "qwen2moe"), str(out)], capture_output=True, text=True)
    assert p.returncode != 0 and "exists" in p.stderr
    p = subprocess.run([str(CLI), "info", str(out), "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["num_experts"] == 4 and info["architecture"] == "qwen2_moe"


# --------------------------------------------------------------------------- llama.cpp runs what we write


@pytest.fixture(scope="module")
def smollm2():
    p = subprocess.run([str(ROOT / "scripts" / "fetch-materials.sh")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return Path(p.stdout.strip())


# llama.cpp rounds the activations to the weights' type for its dot products (8-bit blocks for
# Q8_0, f16 for F16), so the tolerance follows the type.
@pytest.mark.parametrize("variant, tol", [("dense-q8_0", 2.5), ("mixtral-q8_0", 2.5), ("qwen2moe-f16", 0.3),
                                          ("mixtral-f32", 0.05)])
def test_llama_cpp_runs_the_export(rt, smollm2, tmp_path, variant, tol):
    from llama_cpp import Llama
    kind, dtype = variant.split("-")
    src = smollm2
    if kind == "mixtral":
        src = tmp_path / "moe"
        upcycle(smollm2, src, num_experts=2, top_k=1, method="noise", noise_std=0.002, ratio=1.0, router_std=0.5)
    elif kind == "qwen2moe":
        src = tmp_path / "moe"
        upcycle(smollm2, src, num_experts=2, top_k=1, method="noise", noise_std=0.002, ratio=1.0, router_std=0.5,
                format="qwen2-moe", routing="softmax-topk")
    out = tmp_path / "smol.gguf"
    export(src, out, dtype=dtype)
    m = Model(rt, out)
    ids = m.tokenize("The capital of France is Paris, and the capital of Italy is")
    ours = m.logits(ids)
    m.close()
    llm = Llama(model_path=str(out), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    llm.eval(ids)
    theirs = np.array(llm.scores[:len(ids)])
    # The same weights in both.
    assert np.isfinite(theirs).all()
    print(variant, "max |logit difference|", np.abs(ours - theirs).max())
    assert np.abs(ours - theirs).max() <= tol, np.abs(ours - theirs).max()
    agree = (ours.argmax(-1) == theirs.argmax(-1)).mean()
    assert agree == 1.0 if dtype == "f32" else agree >= 0.9, agree


@pytest.mark.parametrize("which, config_class", [("mixtral", "MixtralConfig"), ("qwen2moe", "Qwen2MoeConfig")])
def test_moe_gguf_trains_into_an_hf_checkpoint(rt, models, tmp_path, which, config_class):
    from transformers import AutoConfig
    g = tmp_path / f"{which}.gguf"
    export(models / which, g)
    text = tmp_path / "text.txt"
    text.write_text("So the one thin seer, in the heat of the sea air, sat and then ate the other thing.\n" * 10)
    out = tmp_path / "trained"
    p = subprocess.run([str(CLI), "train", str(g), "--data", str(text), "--out", str(out), "--steps", "2",
                        "--batch", "1", "--seq-len", "16"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    config = AutoConfig.from_pretrained(str(out))
    assert type(config).__name__ == config_class
    # The routing the GGUF was loaded with is the one the checkpoint records.
    assert json.loads((out / "config.json").read_text()).get("norm_topk_prob", True) is (which == "mixtral")
    assert np.isfinite(logits(rt, out)).all()


def test_reads_a_mixtral_gguf_written_by_the_gguf_package(rt, tmp_path):
    """A Mixtral GGUF as llama.cpp's converter writes it (the gguf package's writer, not ours): the
    loader's logits equal a numpy forward of the same weights."""
    from gguf_models import permute
    rng = np.random.default_rng(5)
    L, H, F, E, heads, kv, vocab = 2, 32, 64, 4, 4, 2, 96
    hf = dense_weights(rng, layers=L, hidden=H, ffn=F, heads=heads, kv_heads=kv, vocab=vocab)
    experts = {}
    for l in range(L):
        for k in ("gate_proj", "up_proj", "down_proj"):
            del hf[f"model.layers.{l}.mlp.{k}.weight"]
        b = f"model.layers.{l}.block_sparse_moe."
        hf[b + "gate.weight"] = (rng.standard_normal((E, H)) * 0.5).astype(np.float32)
        for e in range(E):
            for n, shape in (("w1", (F, H)), ("w3", (F, H)), ("w2", (H, F))):
                hf[b + f"experts.{e}.{n}.weight"] = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        experts[l] = b
    w = gguf.GGUFWriter(str(tmp_path / "mixtral.gguf"), "llama")
    w.add_block_count(L)
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_feed_forward_length(F)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(E)
    w.add_expert_used_count(2)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab"] + [f"tok{i}" for i in range(vocab - 3)])
    w.add_token_merges(["a b"])
    w.add_tensor("token_embd.weight", hf["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", hf["model.norm.weight"])
    w.add_tensor("output.weight", hf["lm_head.weight"])
    for l in range(L):
        p, b = f"model.layers.{l}.", experts[l]
        w.add_tensor(f"blk.{l}.attn_norm.weight", hf[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{l}.ffn_norm.weight", hf[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{l}.attn_q.weight", permute(hf[p + "self_attn.q_proj.weight"], heads))
        w.add_tensor(f"blk.{l}.attn_k.weight", permute(hf[p + "self_attn.k_proj.weight"], kv))
        w.add_tensor(f"blk.{l}.attn_v.weight", hf[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{l}.attn_output.weight", hf[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{l}.ffn_gate_inp.weight", hf[b + "gate.weight"])
        for gname, n in (("ffn_gate_exps", "w1"), ("ffn_up_exps", "w3"), ("ffn_down_exps", "w2")):
            w.add_tensor(f"blk.{l}.{gname}.weight", np.stack([hf[b + f"experts.{e}.{n}.weight"] for e in range(E)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    config = {"model_type": "mixtral", "hidden_size": H, "num_attention_heads": heads, "num_key_value_heads": kv,
              "num_hidden_layers": L, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "num_local_experts": E,
              "num_experts_per_tok": 2}
    want = ref.forward(hf, config, [3, 17, 42, 5, 88, 1, 60])
    m = Model(rt, tmp_path / "mixtral.gguf", weight_dtype=C.MOE_DTYPE_F32)
    got = m.logits([3, 17, 42, 5, 88, 1, 60])
    m.close()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
