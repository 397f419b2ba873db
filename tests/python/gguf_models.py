"""Llama GGUF files written with the gguf package (an independent writer), with
llama.cpp's Q/K row permutation applied, for testing the GGUF reader."""
from __future__ import annotations

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import quants

TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1}


def permute(w, heads):
    """HF -> llama.cpp row order of Q/K (what convert_hf_to_gguf does)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path, hf: dict, *, heads, kv_heads, qtype="Q8_0", tokens=None, merges=None,
                     rope_theta=10000.0, version_patch=None, types=None, tokenizer_from=None):
    """hf: HF-named f32 weights. Matrices are stored as `qtype` (or as `types[name]` for the HF names
    `types` lists), norms as F32. `tokenizer_from`: a GGUF file whose tokenizer.* keys the file takes
    verbatim instead of the synthetic vocabulary. Returns the HF-order f32 weights as the file actually
    holds them (after quantization)."""
    emb = hf["model.embed_tokens.weight"]
    vocab, hidden = emb.shape
    layers = sum(1 for k in hf if k.endswith("mlp.gate_proj.weight"))
    ffn = hf["model.layers.0.mlp.gate_proj.weight"].shape[0]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(rope_theta)
    w.add_layer_norm_rms_eps(1e-5)
    if tokenizer_from is not None:
        copy_tokenizer(w, tokenizer_from)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        if tokens is None:
            tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"t{i}" for i in range(vocab - 3)]
        w.add_token_list(tokens)
        w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
        w.add_token_merges(merges or ["t 1", "t 2"])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                 "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                 "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                 "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                 "mlp.down_proj.weight": "ffn_down.weight"}
    held = {}
    for name, value in hf.items():
        if name in names:
            gname = names[name]
        else:
            parts = name.split(".")
            gname = f"blk.{parts[2]}." + per_layer[".".join(parts[3:])]
        data = value.astype(np.float32)
        if name.endswith("q_proj.weight"):
            data = permute(data, heads)
        elif name.endswith("k_proj.weight"):
            data = permute(data, kv_heads)
        t = Q.F32 if data.ndim == 1 else TYPES[(types or {}).get(name, qtype)]
        if t == Q.F32:
            w.add_tensor(gname, data)
            stored = data
        elif t == Q.F16:
            w.add_tensor(gname, data.astype(np.float16))
            stored = data.astype(np.float16).astype(np.float32)
        else:
            q = quants.quantize(data, t)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=t)
            stored = quants.dequantize(q, t).reshape(data.shape).astype(np.float32)
        # Back to HF row order for what the library must produce.
        if name.endswith("q_proj.weight"):
            stored = unpermute(stored, heads)
        elif name.endswith("k_proj.weight"):
            stored = unpermute(stored, kv_heads)
        held[name] = stored
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def copy_tokenizer(w, source):
    """Copies every tokenizer.* key of the GGUF file `source`, with its value types, into the writer `w`."""
    for key, field in gguf.GGUFReader(str(source)).fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, field.contents(), field.types[0], sub)


def unpermute(w, heads):
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _smollm2_hf_name(gguf_name):
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    per = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    if gguf_name in names:
        return names[gguf_name]
    _, l, kind, _ = gguf_name.split(".")
    return f"model.layers.{l}.{per[kind]}.weight"


def smollm2_stored_types(path):
    """The type SmolLM2's file stores each tensor in ("Q4_1", "Q8_0", "F32"), by HF name."""
    return {_smollm2_hf_name(t.name): t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def smollm2_dequantized(path):
    """SmolLM2's weights in HF names and order (Q/K un-permuted), dequantized by
    the gguf package independently of the library, and its reference config."""
    r = gguf.GGUFReader(str(path))
    w = {}
    for t in r.tensors:
        name = _smollm2_hf_name(t.name)
        shape = tuple(int(d) for d in reversed(t.shape))
        a = quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if name.endswith("q_proj.weight"):
            a = unpermute(a, 9)
        elif name.endswith("k_proj.weight"):
            a = unpermute(a, 3)
        w[name] = a
    cfg = {"model_type": "llama", "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
           "num_hidden_layers": 30, "rms_norm_eps": 1e-5, "rope_theta": 100000.0}
    return w, cfg


def moe_weights_from_gguf(path, config):
    """Every tensor of a Mixtral (general.architecture llama) or Qwen2-MoE GGUF file in HF names and order,
    dequantized by the gguf package: stacked experts (ffn_*_exps) split per expert, Q/K of llama un-permuted,
    ffn_gate_inp_shexp as the [1, H] shared-expert gate. `config`: the model's HF config.json."""
    mixtral = config["model_type"] == "mixtral"
    moe = "block_sparse_moe" if mixtral else "mlp"
    experts = ({"ffn_gate": "w1", "ffn_up": "w3", "ffn_down": "w2"} if mixtral else
               {"ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"})
    per = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate_inp": f"{moe}.gate", "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
           "ffn_up_shexp": "mlp.shared_expert.up_proj", "ffn_down_shexp": "mlp.shared_expert.down_proj",
           "ffn_gate_inp_shexp": "mlp.shared_expert_gate"}
    top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    w = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = [int(d) for d in reversed(t.shape)]
        a = quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        stem, kind = t.name.rsplit(".", 1)
        if stem in top:
            w[f"{top[stem]}.{kind}"] = a
            continue
        _, layer, part = stem.split(".")
        p = f"model.layers.{layer}."
        if part.endswith("_exps"):
            for e in range(a.shape[0]):
                w[p + f"{moe}.experts.{e}.{experts[part[:-5]]}.{kind}"] = a[e]
            continue
        if part == "ffn_gate_inp_shexp":
            a = a.reshape(1, -1)
        elif mixtral and part in heads:
            a = unpermute(a, heads[part])
        w[p + f"{per[part]}.{kind}"] = a
    return w
