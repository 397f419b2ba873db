"""Writes a tiny dense Llama checkpoint (config.json + model.safetensors, no tokenizer)
for the C ABI tests: python3 tests/c/tiny_model.py DIR."""
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
H, F, V, L, heads, kv = 16, 32, 64, 2, 4, 2
hd = H // heads
w = {"model.embed_tokens.weight": rng.standard_normal((V, H)) * 0.2,
     "model.norm.weight": np.ones(H), "lm_head.weight": rng.standard_normal((V, H)) * 0.2}
for l in range(L):
    p = f"model.layers.{l}."
    w[p + "input_layernorm.weight"] = np.ones(H)
    w[p + "post_attention_layernorm.weight"] = np.ones(H)
    w[p + "self_attn.q_proj.weight"] = rng.standard_normal((heads * hd, H)) * 0.2
    w[p + "self_attn.k_proj.weight"] = rng.standard_normal((kv * hd, H)) * 0.2
    w[p + "self_attn.v_proj.weight"] = rng.standard_normal((kv * hd, H)) * 0.2
    w[p + "self_attn.o_proj.weight"] = rng.standard_normal((H, heads * hd)) * 0.2
    w[p + "mlp.gate_proj.weight"] = rng.standard_normal((F, H)) * 0.2
    w[p + "mlp.up_proj.weight"] = rng.standard_normal((F, H)) * 0.2
    w[p + "mlp.down_proj.weight"] = rng.standard_normal((H, F)) * 0.2
save_file({k: v.astype(np.float32) for k, v in w.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": F,
          "num_hidden_layers": L, "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": V,
          "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
          "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}
(out / "config.json").write_text(json.dumps(config, indent=2))
