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


def swiglu(x, gate, up, down, mm=None):
    mm = mm or (lambda a, m: a @ m.T)
    return mm(silu(mm(x, gate)) * mm(x, up), down)


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def moe_ffn(x, router, experts, top_k, renormalize=True, shared=None, shared_gate=None, mm=None):
    """experts: list of (gate, up, down). Softmax over all experts, top-k (ties to the lower index). `mm(a, W)`
    computes the experts' weight products a @ W.T (the router's and the shared gate's stay plain)."""
    probs = softmax(x @ router.T)  # [T, E]
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        order = np.argsort(-probs[t], kind="stable")[:top_k]
        w = probs[t, order]
        if renormalize:
            w = w / w.sum()
        for e, g in zip(order, w):
            out[t] += g * swiglu(x[t:t + 1], *experts[e], mm=mm)[0]
    if shared is not None:
        s = swiglu(x, *shared, mm=mm)
        gate = 1 / (1 + np.exp(-(x @ shared_gate.T)))  # [T, 1]
        out = out + gate * s
    return out


def forward(weights: dict, config: dict, tokens, capture=None, linear=None, cache=None) -> np.ndarray:
    """Logits [T, vocab] for a sequence of token ids (causal attention, positions 0..T-1). With a list
    `capture`, each dense FFN layer appends (layer, router input [T, H], activations silu(gate) * up [T, F]).
    `linear(x, W)` computes the dense layers' weight products x @ W.T (attention projections, FFN, the MoE
    experts, LM head; default: exactly that; routers stay plain), so that a caller can model how the activations enter them. `cache(a)` models how
    keys and values are stored in a KV cache (after the rotary embedding) before attention reads them."""
    w = {k: v.astype(np.float32) for k, v in weights.items()}
    mm = linear or (lambda a, m: a @ m.T)
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
        q = mm(h, w[p + "self_attn.q_proj.weight"])
        k = mm(h, w[p + "self_attn.k_proj.weight"])
        v = mm(h, w[p + "self_attn.v_proj.weight"])
        if p + "self_attn.q_proj.bias" in w:
            q = q + w[p + "self_attn.q_proj.bias"]
            k = k + w[p + "self_attn.k_proj.bias"]
            v = v + w[p + "self_attn.v_proj.bias"]
        q = q.reshape(T, heads, hd).transpose(1, 0, 2)
        k = k.reshape(T, kvh, hd).transpose(1, 0, 2)
        v = v.reshape(T, kvh, hd).transpose(1, 0, 2)
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        if cache is not None:
            k, v = cache(k), cache(v)
        rep = heads // kvh
        k = np.repeat(k, rep, axis=0)
        v = np.repeat(v, rep, axis=0)
        att = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask)
        o = (att @ v).transpose(1, 0, 2).reshape(T, heads * hd)
        x = x + mm(o, w[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        if mtype == "mixtral":
            b = p + "block_sparse_moe."
            E = config["num_local_experts"]
            experts = [(w[b + f"experts.{e}.w1.weight"], w[b + f"experts.{e}.w3.weight"],
                        w[b + f"experts.{e}.w2.weight"]) for e in range(E)]
            f = moe_ffn(h, w[b + "gate.weight"], experts, config["num_experts_per_tok"], mm=mm)
        elif mtype == "qwen2_moe" and l not in config.get("mlp_only_layers", []):
            b = p + "mlp."
            E = config["num_experts"]
            experts = [(w[b + f"experts.{e}.gate_proj.weight"], w[b + f"experts.{e}.up_proj.weight"],
                        w[b + f"experts.{e}.down_proj.weight"]) for e in range(E)]
            shared = (w[b + "shared_expert.gate_proj.weight"], w[b + "shared_expert.up_proj.weight"],
                      w[b + "shared_expert.down_proj.weight"])
            f = moe_ffn(h, w[b + "gate.weight"], experts, config["num_experts_per_tok"],
                        renormalize=config.get("norm_topk_prob", False), shared=shared,
                        shared_gate=w[b + "shared_expert_gate.weight"], mm=mm)
        else:
            g, u = mm(h, w[p + "mlp.gate_proj.weight"]), mm(h, w[p + "mlp.up_proj.weight"])
            f = mm(silu(g) * u, w[p + "mlp.down_proj.weight"])
            if capture is not None:
                capture.append((l, h, silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)))
        x = x + f
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return mm(x, head)


# --------------------------------------------------------------------------- byte-level BPE tokenizer files


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


TINY_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("Ġ", "s"),
               ("o", "n"), ("Ġt", "h")]
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
                   " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")


def tiny_tokenizer_json(merges=TINY_MERGES, specials=TINY_SPECIALS) -> dict:
    """An HF tokenizer.json: byte b is id b (in GPT-2's alphabet), merged tokens follow from id 256, then
    the special tokens (added_tokens with special: true)."""
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    added = []
    for s in specials:
        added.append({"id": len(vocab), "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True})
        vocab[s] = len(vocab)
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }


def write_tiny_tokenizer(path, *, add_bos=True, chat_template=CHATML_TEMPLATE, bos="<|endoftext|>",
                         eos="<|endoftext|>", merges=TINY_MERGES) -> dict:
    """Writes tokenizer.json and tokenizer_config.json into the HF directory `path`; returns the vocabulary
    (token text in vocabulary form -> id)."""
    import json
    from pathlib import Path
    path = Path(path)
    tok = tiny_tokenizer_json(merges)
    (path / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    cfg = {"add_bos_token": add_bos, "add_eos_token": False, "bos_token": bos, "eos_token": eos,
           "model_max_length": 256, "tokenizer_class": "GPT2Tokenizer"}
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dict(tok["model"]["vocab"])


def window_nll(logits_of, tokens, seq_len, max_tokens=0):
    """Perplexity evaluation as the library defines it, from a logits function: non-overlapping windows of
    seq_len tokens, each a fresh context whose first token is context only; a trailing window of one token
    is dropped. Returns (mean NLL, tokens scored, windows, tokens run)."""
    tokens = list(tokens)
    if max_tokens:
        tokens = tokens[:max_tokens]
    total, scored, windows, run = 0.0, 0, 0, 0
    start = 0
    while start + 1 < len(tokens):
        window = tokens[start:start + seq_len]
        z = np.asarray(logits_of(window), dtype=np.float64)
        m = z.max(axis=-1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0]
        for i in range(len(window) - 1):
            total += lse[i] - z[i, window[i + 1]]
        scored += len(window) - 1
        windows += 1
        run += len(window)
        start += len(window)
    return total / scored, scored, windows, run
