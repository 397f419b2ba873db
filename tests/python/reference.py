"""An independent numpy forward pass of Llama-family decoders, dense and MoE
(HF Mixtral and Qwen2-MoE layouts), used to check function preservation."""
from __future__ import annotations

import numpy as np


def rms_norm(x, w, eps):
    var = np.mean(x.astype(np.float32) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(var + eps)) * w


def rope(x, positions, theta):
    # x: [heads, T, hd]; HF rotate_half convention.
    hd = x.shape[-1]
    inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.outer(positions, inv)  # [T, hd/2]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], -1).astype(np.float32)
    sin = np.concatenate([np.sin(ang), np.sin(ang)], -1).astype(np.float32)
    half = hd // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def silu(x):
    return x / (1 + np.exp(-x))


def swiglu(x, gate, up, down):
    return (silu(x @ gate.T) * (x @ up.T)) @ down.T


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def moe_ffn(x, router, experts, top_k, renormalize=True, shared=None, shared_gate=None):
    """experts: list of (gate, up, down). Softmax over all experts, top-k (ties to the lower index)."""
    probs = softmax(x @ router.T)  # [T, E]
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        order = np.argsort(-probs[t], kind="stable")[:top_k]
        w = probs[t, order]
        if renormalize:
            w = w / w.sum()
        for e, g in zip(order, w):
            out[t] += g * swiglu(x[t:t + 1], *experts[e])[0]
    if shared is not None:
        s = swiglu(x, *shared)
        gate = 1 / (1 + np.exp(-(x @ shared_gate.T)))  # [T, 1]
        out = out + gate * s
    return out


def forward(weights: dict, config: dict, tokens) -> np.ndarray:
    """Logits [T, vocab] for a sequence of token ids (causal attention, positions 0..T-1)."""
    w = {k: v.astype(np.float32) for k, v in weights.items()}
    H = config["hidden_size"]
    heads = config["num_attention_heads"]
    kvh = config.get("num_key_value_heads", heads)
    hd = config.get("head_dim") or H // heads
    eps = config.get("rms_norm_eps", 1e-6)
    theta = config.get("rope_theta", 10000.0)
    L = config["num_hidden_layers"]
    mtype = config.get("model_type", "llama")
    tokens = np.asarray(tokens)
    T = len(tokens)
    x = w["model.embed_tokens.weight"][tokens]
    pos = np.arange(T)
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    for l in range(L):
        p = f"model.layers.{l}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = h @ w[p + "self_attn.q_proj.weight"].T
        k = h @ w[p + "self_attn.k_proj.weight"].T
        v = h @ w[p + "self_attn.v_proj.weight"].T
        if p + "self_attn.q_proj.bias" in w:
            q = q + w[p + "self_attn.q_proj.bias"]
            k = k + w[p + "self_attn.k_proj.bias"]
            v = v + w[p + "self_attn.v_proj.bias"]
        q = q.reshape(T, heads, hd).transpose(1, 0, 2)
        k = k.reshape(T, kvh, hd).transpose(1, 0, 2)
        v = v.reshape(T, kvh, hd).transpose(1, 0, 2)
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        rep = heads // kvh
        k = np.repeat(k, rep, axis=0)
        v = np.repeat(v, rep, axis=0)
        att = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask)
        o = (att @ v).transpose(1, 0, 2).reshape(T, heads * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        if mtype == "mixtral":
            b = p + "block_sparse_moe."
            E = config["num_local_experts"]
            experts = [(w[b + f"experts.{e}.w1.weight"], w[b + f"experts.{e}.w3.weight"],
                        w[b + f"experts.{e}.w2.weight"]) for e in range(E)]
            f = moe_ffn(h, w[b + "gate.weight"], experts, config["num_experts_per_tok"])
        elif mtype == "qwen2_moe" and l not in config.get("mlp_only_layers", []):
            b = p + "mlp."
            E = config["num_experts"]
            experts = [(w[b + f"experts.{e}.gate_proj.weight"], w[b + f"experts.{e}.up_proj.weight"],
                        w[b + f"experts.{e}.down_proj.weight"]) for e in range(E)]
            shared = (w[b + "shared_expert.gate_proj.weight"], w[b + "shared_expert.up_proj.weight"],
                      w[b + "shared_expert.down_proj.weight"])
            f = moe_ffn(h, w[b + "gate.weight"], experts, config["num_experts_per_tok"],
                        renormalize=config.get("norm_topk_prob", False), shared=shared,
                        shared_gate=w[b + "shared_expert_gate.weight"])
        else:
            f = swiglu(h, w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"], w[p + "mlp.down_proj.weight"])
        x = x + f
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T
