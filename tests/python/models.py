"""Small dense checkpoints written by independent tools (the safetensors package), and
readers of what the library writes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

CLI = Path(os.environ["MOEUPCYCLE_LIBRARY"]).resolve().parents[1] / "bin" / "moeupcycle"


def bf16_round(a: np.ndarray) -> np.ndarray:
    """Rounds f32 to the nearest bf16 value (kept in f32)."""
    bits = a.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return rounded.view(np.float32)


def to_bf16_bytes(a: np.ndarray) -> np.ndarray:
    bits = bf16_round(a).view(np.uint32)
    return (bits >> 16).astype(np.uint16)


def dense_weights(rng, *, layers=2, hidden=32, ffn=64, heads=4, kv_heads=2, vocab=96, tied=False,
                  qkv_bias=False, scale=0.2):
    hd = hidden // heads
    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)) * scale,
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(hidden)}
    if not tied:
        w["lm_head.weight"] = rng.standard_normal((vocab, hidden)) * scale
    for l in range(layers):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(hidden)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(hidden)
        w[p + "self_attn.q_proj.weight"] = rng.standard_normal((heads * hd, hidden)) * scale
        w[p + "self_attn.k_proj.weight"] = rng.standard_normal((kv_heads * hd, hidden)) * scale
        w[p + "self_attn.v_proj.weight"] = rng.standard_normal((kv_heads * hd, hidden)) * scale
        w[p + "self_attn.o_proj.weight"] = rng.standard_normal((hidden, heads * hd)) * scale
        if qkv_bias:
            w[p + "self_attn.q_proj.bias"] = rng.standard_normal(heads * hd) * scale
            w[p + "self_attn.k_proj.bias"] = rng.standard_normal(kv_heads * hd) * scale
            w[p + "self_attn.v_proj.bias"] = rng.standard_normal(kv_heads * hd) * scale
        w[p + "mlp.gate_proj.weight"] = rng.standard_normal((ffn, hidden)) * scale
        w[p + "mlp.up_proj.weight"] = rng.standard_normal((ffn, hidden)) * scale
        w[p + "mlp.down_proj.weight"] = rng.standard_normal((hidden, ffn)) * scale
    return {k: v.astype(np.float32) for k, v in w.items()}


def write_hf(path: Path, weights: dict, *, arch="llama", dtype="F32", heads=4, kv_heads=2, tied=False,
             shards=1, extra_files=True, rope_theta=10000.0):
    """Writes an HF directory; returns the weights as the library will read them (f32)."""
    path.mkdir(parents=True, exist_ok=True)
    emb = weights["model.embed_tokens.weight"]
    vocab, hidden = emb.shape
    ffn = weights["model.layers.0.mlp.gate_proj.weight"].shape[0]
    layers = sum(1 for k in weights if k.endswith("mlp.gate_proj.weight"))
    model_type = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}[arch]
    archs = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    config = {"architectures": [archs], "model_type": model_type, "hidden_size": hidden,
              "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 256,
              "rms_norm_eps": 1e-5, "rope_theta": rope_theta, "tie_word_embeddings": tied,
              "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    stored = {}
    arrays = {}
    for k, v in weights.items():
        if dtype == "F32":
            arrays[k] = v.astype(np.float32)
            stored[k] = v.astype(np.float32)
        elif dtype == "F16":
            arrays[k] = v.astype(np.float16)
            stored[k] = v.astype(np.float16).astype(np.float32)
        elif dtype == "BF16":
            arrays[k] = to_bf16_bytes(v)
            stored[k] = bf16_round(v)
    names = list(arrays)
    if dtype == "BF16":
        # numpy has no bfloat16: write the header by hand with dtype BF16.
        chunks = [names[i::shards] for i in range(shards)]
        _write_raw_safetensors(path, chunks, arrays, "BF16")
    elif shards == 1:
        save_file(arrays, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        chunks = [names[i::shards] for i in range(shards)]
        weight_map = {}
        for i, chunk in enumerate(chunks):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: arrays[k] for k in chunk}, str(path / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in chunk})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if extra_files:
        (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
        (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return stored


def _write_raw_safetensors(path: Path, chunks, arrays, dtype_name):
    weight_map = {}
    for i, chunk in enumerate(chunks):
        fname = "model.safetensors" if len(chunks) == 1 else f"model-{i + 1:05d}-of-{len(chunks):05d}.safetensors"
        header, blobs, off = {}, [], 0
        for k in chunk:
            b = arrays[k].tobytes()
            header[k] = {"dtype": dtype_name, "shape": list(arrays[k].shape), "data_offsets": [off, off + len(b)]}
            blobs.append(b)
            off += len(b)
        h = json.dumps(header).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        with open(path / fname, "wb") as f:
            f.write(len(h).to_bytes(8, "little"))
            f.write(h)
            for b in blobs:
                f.write(b)
        weight_map.update({k: fname for k in chunk})
    if len(chunks) > 1:
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def read_safetensors_dir(path: Path) -> dict:
    """Reads every tensor of an HF directory as f32 numpy arrays (bf16 decoded by hand)."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        base = 8 + n
        for name, e in header.items():
            if name == "__metadata__":
                continue
            b, end = e["data_offsets"]
            buf = raw[base + b:base + end]
            if e["dtype"] == "F32":
                a = np.frombuffer(buf, dtype=np.float32)
            elif e["dtype"] == "F16":
                a = np.frombuffer(buf, dtype=np.float16).astype(np.float32)
            elif e["dtype"] == "BF16":
                a = (np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                raise ValueError(e["dtype"])
            out[name] = a.reshape(e["shape"]).copy()
    return out
