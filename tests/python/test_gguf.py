"""GGUF input: metadata, dequantization, Q/K un-permutation, tokenizer export."""
import json

import numpy as np
import pytest

from gguf_models import permute, unpermute, write_llama_gguf
from abi import LibError, inspect, upcycle
from models import dense_weights, read_safetensors_dir
from reference import forward
from moeupcycle import _capi as C

TOKENS = [3, 17, 42, 5, 88, 1, 60]


def test_permutation_helpers_are_inverse():
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    np.testing.assert_array_equal(unpermute(permute(x, 2), 2), x)
    assert not np.array_equal(permute(x, 2), x)


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
def test_gguf_upcycle_copy_matches_dequantized_weights(tmp_path, qtype):
    rng = np.random.default_rng(10)
    hf = dense_weights(rng, layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, vocab=96)
    path = tmp_path / "m.gguf"
    held = write_llama_gguf(path, hf, heads=4, kv_heads=2, qtype=qtype)
    info = inspect(path)
    assert info.architecture == b"llama" and info.container == b"gguf"
    assert info.num_layers == 2 and info.hidden_size == 64 and info.intermediate_size == 128
    assert info.num_heads == 4 and info.num_kv_heads == 2 and info.vocab_size == 96
    assert info.dtype == qtype.encode()
    out = tmp_path / "moe"
    upcycle(path, out, num_experts=4, top_k=2, dtype="f32")
    moe = read_safetensors_dir(out)
    # Q and K come back in HF order, exactly the dequantized values.
    for name in ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                 "model.layers.0.self_attn.o_proj.weight", "model.embed_tokens.weight", "lm_head.weight"]:
        np.testing.assert_array_equal(moe[name], held[name], err_msg=name)
    np.testing.assert_array_equal(moe["model.layers.1.block_sparse_moe.experts.3.w2.weight"],
                                  held["model.layers.1.mlp.down_proj.weight"])
    cfg = json.loads((out / "config.json").read_text())
    dense_cfg = dict(cfg, model_type="llama")
    ref = forward(held, dense_cfg, TOKENS)
    got = forward(moe, cfg, TOKENS)
    assert np.max(np.abs(ref - got)) <= 1e-4
    # Quantization error is bounded: the file really holds the weights we wrote.
    tol = {"F32": 0, "F16": 1e-3, "Q8_0": 0.01, "Q4_0": 0.12, "Q4_1": 0.08}[qtype]
    assert np.max(np.abs(held["model.layers.0.mlp.gate_proj.weight"] - hf["model.layers.0.mlp.gate_proj.weight"])) <= tol + 1e-7


def test_gguf_tokenizer_export(tmp_path):
    rng = np.random.default_rng(11)
    hf = dense_weights(rng, layers=1, hidden=32, ffn=64, vocab=64, tied=True)
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, hf, heads=4, kv_heads=2, qtype="Q8_0")
    out = tmp_path / "moe"
    upcycle(path, out, num_experts=2, top_k=1)
    tok = json.loads((out / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE"
    assert tok["model"]["vocab"]["t0"] == 3 and len(tok["model"]["vocab"]) == 64
    assert tok["model"]["merges"] == ["t 1", "t 2"]
    assert [t["content"] for t in tok["added_tokens"]] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok["pre_tokenizer"]["pretokenizers"][0]["type"] == "Digits"
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["bos_token"] == "<|im_start|>" and tc["eos_token"] == "<|im_end|>"
    assert "chat_template" in tc
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 1 and gen["eos_token_id"] == 2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True


def test_truncated_gguf_is_a_format_error(tmp_path):
    rng = np.random.default_rng(12)
    hf = dense_weights(rng, layers=1, hidden=32, ffn=64, vocab=64)
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, hf, heads=4, kv_heads=2)
    data = path.read_bytes()
    for cut in [3, 20, len(data) // 3, len(data) - 100]:
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(LibError) as e:
            inspect(bad)
        assert e.value.code == C.MOE_ERR_FORMAT, (cut, e.value.message)
    garbage = tmp_path / "bad.gguf"
    garbage.write_bytes(b"GGML" + data[4:])
    with pytest.raises(LibError) as e:
        inspect(garbage)
    assert e.value.code == C.MOE_ERR_FORMAT and "magic" in e.value.message
