#!/usr/bin/env python3
"""Writes the fuzz seed corpora into fuzz/corpus/<target>/: small valid and
near-valid inputs for each target (a few KB at most). GGUF seeds are written
with the gguf package (independent of the library's reader).

    python3 fuzz/make_seeds.py

Regression inputs (regress-*) are committed by hand next to the seeds and are
left alone here."""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import quants

ROOT = Path(__file__).resolve().parent / "corpus"


def put(target: str, name: str, data: bytes | str) -> None:
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    assert len(data) <= 8192, f"{target}/{name} is {len(data)} bytes"
    (d / name).write_bytes(data)


# -- safetensors ---------------------------------------------------------------

def safetensors(tensors: list[tuple[str, str, list[int], bytes]], metadata=None, pad=True, offsets=None) -> bytes:
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    pos = 0
    data = b""
    for i, (name, dtype, shape, raw) in enumerate(tensors):
        begin, end = offsets[i] if offsets else (pos, pos + len(raw))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        pos += len(raw)
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(*shape):
    n = int(np.prod(shape)) if shape else 1
    return (np.arange(n, dtype=np.float32) / 7 - 1).tobytes()


def seeds_safetensors():
    put("safetensors", "one-f32", safetensors([("w", "F32", [2, 3], f32(2, 3))]))
    put("safetensors", "mixed-metadata", safetensors(
        [("model.embed_tokens.weight", "BF16", [4, 2], bytes(range(16))),
         ("model.norm.weight", "F16", [2], b"\x00\x3c\x00\xbc"),
         ("lm_head.weight", "F32", [2, 2], f32(2, 2))],
        metadata={"format": "pt", "note": "seed"}))
    put("safetensors", "empty-header", safetensors([]))
    put("safetensors", "zero-size-and-scalar", safetensors([("a", "F32", [0, 5], b""), ("s", "F32", [], f32())]))
    put("safetensors", "unsorted-offsets", safetensors(
        [("b", "F32", [2], f32(2)), ("a", "F32", [1], f32(1))], offsets=[(4, 12), (0, 4)]))
    # Near-valid: each breaks one rule.
    put("safetensors", "bad-gap", safetensors([("w", "F32", [2], f32(2))], offsets=[(4, 12)]) + b"\0" * 4)
    put("safetensors", "bad-dtype", safetensors([("w", "I64", [1], b"\0" * 8)]))
    put("safetensors", "bad-length", struct.pack("<Q", 1 << 40) + b"{}")
    # Calibration statistics (two layers, I = 4, H = 2, two sampled tokens).
    meta = {"format": "moeupcycle-calibration", "version": "1", "tokens": "100", "data_hash": "00ff00ff00ff00ff",
            "model_fingerprint": "0123456789abcdef", "fire_quantile": "0.9", "sample_rows": "2"}
    stats = []
    for layer in range(2):
        p = f"layers.{layer}."
        stats += [(p + "abs_mean", "F32", [4], f32(4)), (p + "square_mean", "F32", [4], f32(4)),
                  (p + "fire_frequency", "F32", [4], f32(4)), (p + "threshold", "F32", [1], f32(1)),
                  (p + "sketch", "F32", [2, 4], f32(2, 4)), (p + "router_inputs", "F32", [2, 2], f32(2, 2))]
    put("safetensors", "calibration-statistics", safetensors(stats, metadata=meta))
    put("safetensors", "bad-json", struct.pack("<Q", 12) + b'{"w":{"dtype"')
    put("safetensors", "bad-shape-overflow", safetensors(
        [("w", "F32", [1 << 31, 1 << 31, 1 << 31], b"")], offsets=[(0, 0)]))


# -- GGUF ------------------------------------------------------------------------

def tokenizer_kv(w: gguf.GGUFWriter, pre="smollm"):
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "Ġ", "ab", "Ġa", "1", "2", "<x>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * 8 + [4])
    w.add_token_merges(["a b", "Ġ a"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def write_gguf(name: str, arch: str, build) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        w = gguf.GGUFWriter(str(path), arch)
        build(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        put("gguf", name, path.read_bytes())


def add(w, name, shape, qtype=Q.F32):
    """A tensor of HF shape `shape` stored as `qtype` (GGUF reverses the dims)."""
    data = (np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) % 11 - 5) / 8
    if qtype == Q.F32:
        w.add_tensor(name, data)
    elif qtype == Q.F16:
        w.add_tensor(name, data.astype(np.float16))
    else:
        q = quants.quantize(data, qtype)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)


def dense(w, arch, *, layers, hidden, heads, kv, ffn, vocab, types, biases=False, tied=True):
    w.add_block_count(layers)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    hd = hidden // heads
    add(w, "token_embd.weight", [vocab, hidden], types.get("embd", Q.F32))
    add(w, "output_norm.weight", [hidden])
    if not tied:
        add(w, "output.weight", [vocab, hidden], types.get("embd", Q.F32))
    for l in range(layers):
        p = f"blk.{l}."
        add(w, p + "attn_norm.weight", [hidden])
        add(w, p + "ffn_norm.weight", [hidden])
        add(w, p + "attn_q.weight", [heads * hd, hidden], types.get("q", Q.F32))
        add(w, p + "attn_k.weight", [kv * hd, hidden], types.get("k", Q.F32))
        add(w, p + "attn_v.weight", [kv * hd, hidden], types.get("v", Q.F32))
        add(w, p + "attn_output.weight", [hidden, heads * hd], types.get("o", Q.F32))
        if biases:
            add(w, p + "attn_q.bias", [heads * hd])
            add(w, p + "attn_k.bias", [kv * hd])
            add(w, p + "attn_v.bias", [kv * hd])
        add(w, p + "ffn_gate.weight", [ffn, hidden], types.get("gate", Q.F32))
        add(w, p + "ffn_up.weight", [ffn, hidden], types.get("up", Q.F32))
        add(w, p + "ffn_down.weight", [hidden, ffn], types.get("down", Q.F32))


def seeds_gguf():
    def llama_f32(w):
        dense(w, "llama", layers=1, hidden=8, heads=2, kv=1, ffn=12, vocab=12, types={})
        tokenizer_kv(w)
    write_gguf("llama-f32-tokenizer", "llama", llama_f32)

    def qwen2(w):
        dense(w, "qwen2", layers=2, hidden=4, heads=2, kv=2, ffn=6, vocab=12, types={"embd": Q.F16},
              biases=True, tied=False)
        tokenizer_kv(w, pre="default")
    write_gguf("qwen2-biases-untied", "qwen2", qwen2)

    def llama_quant(w):
        dense(w, "llama", layers=1, hidden=32, heads=4, kv=1, ffn=32, vocab=4,
              types={"embd": Q.F16, "q": Q.Q8_0, "k": Q.Q4_0, "v": Q.Q4_1, "o": Q.Q4_0,
                     "gate": Q.Q4_1, "up": Q.Q4_0, "down": Q.BF16})
    write_gguf("llama-quantized", "llama", llama_quant)

    def tokenizer_only(w):
        tokenizer_kv(w)
        w.add_uint32("general.alignment", 64)
        w.add_array("general.tags", [["x", "y"], ["z"]])
        w.add_float64("llama.rope.freq_base", 5e5)
        add(w, "rope_freqs", [4])
    write_gguf("tokenizer-metadata-only", "llama", tokenizer_only)

    def empty(w):
        pass
    write_gguf("empty", "llama", empty)

    # Near-valid: the first model cut inside its tensor data, and one with an
    # MoE expert count (refused as input).
    data = (ROOT / "gguf" / "llama-f32-tokenizer").read_bytes()
    put("gguf", "truncated-data", data[: len(data) - 40])
    put("gguf", "truncated-header", data[:300])

    def moe(w):
        dense(w, "llama", layers=1, hidden=4, heads=1, kv=1, ffn=4, vocab=2, types={})
        w.add_expert_count(4)
    write_gguf("moe-refused", "llama", moe)


# -- config.json -----------------------------------------------------------------

def seeds_config():
    base = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
    put("config", "llama.json", json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                            **base, "rope_scaling": None, "attention_bias": False}, indent=2))
    put("config", "mistral-no-model-type.json", json.dumps({"architectures": ["MistralForCausalLM"], **base,
                                                            "sliding_window": 4096, "head_dim": 16}))
    put("config", "qwen2.json", json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **base,
                                            "eos_token_id": [2, 3], "use_sliding_window": False,
                                            "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}))
    put("config", "mixtral.json", json.dumps({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                                              **base, "num_local_experts": 8, "num_experts_per_tok": 2,
                                              "router_aux_loss_coef": 0.02, "output_router_logits": False}))
    put("config", "qwen2_moe.json", json.dumps({"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
                                                **base, "num_experts": 4, "num_experts_per_tok": 2,
                                                "moe_intermediate_size": 32, "shared_expert_intermediate_size": 128,
                                                "decoder_sparse_step": 2, "mlp_only_layers": [0],
                                                "norm_topk_prob": True, "qkv_bias": True}))
    put("config", "json-syntax.json", '{"a": [1, -2.5e-3, 1E+2, true, false, null, NaN, -Infinity],'
                                      ' "s": "esc \\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\ud83d\\ude00 \\udc00",'
                                      ' "o": {"": {}}, "e": []}')
    # Near-valid.
    put("config", "bad-unsupported-act.json", json.dumps({"model_type": "llama", **base, "hidden_act": "gelu"}))
    put("config", "bad-zero-heads.json", json.dumps({"model_type": "llama", **{**base, "num_attention_heads": 0}}))
    put("config", "bad-trailing.json", json.dumps({"model_type": "llama", **base}) + " x")


# -- tokenizer.json --------------------------------------------------------------

def byte_symbols():
    """GPT-2's bytes_to_unicode, in byte order."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def tokenizer_json(*, merges, pre=None, added=(), extra_model=None, post=None, all_bytes=True, pairs=False):
    symbols = byte_symbols() if all_bytes else [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"]
    vocab = {s: i for i, s in enumerate(symbols)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
             "vocab": vocab, "merges": [[a, b] if pairs else f"{a} {b}" for a, b in merges]}
    model.update(extra_model or {})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    t = {"version": "1.0", "truncation": None, "padding": None,
         "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": l, "rstrip": r,
                           "normalized": False, "special": s} for i, c, s, l, r in added],
         "normalizer": None, "pre_tokenizer": pre or byte_level, "post_processor": post,
         "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
         "model": model}
    return json.dumps(t, ensure_ascii=False, separators=(",", ":"))


MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "in"), ("'", "s"), ("1", "2"),
          ("Ã", "©"), ("c", "a"), ("f", "Ã©"), ("ca", "fÃ©"), ("Ġ", "Ġ")]


def seeds_tokenizer():
    put("tokenizer", "bytes-merges", tokenizer_json(merges=MERGES))
    put("tokenizer", "added-special", tokenizer_json(
        merges=MERGES[:6], added=[(300, "<|im_start|>", True, False, False), (301, "<|im_end|>", True, False, False),
                                  (302, "<x>", False, False, False), (303, "<x><y>", False, False, False)],
        post={"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                                       {"Sequence": {"id": "A", "type_id": 0}}],
              "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [300], "tokens": ["<|im_start|>"]}}}))
    put("tokenizer", "digits-sequence-pairs", tokenizer_json(
        merges=MERGES[:4], pairs=True,
        pre={"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                   {"type": "ByteLevel", "add_prefix_space": True,
                                                    "use_regex": True}]},
        extra_model={"ignore_merges": True}))
    put("tokenizer", "strip-unknown-partial-bytes", tokenizer_json(
        merges=[("Ġ", "a"), ("b", "c")], all_bytes=False,
        added=[(0, "a", False, False, False), (40, "<s>", True, True, True), (41, "</s>", True, False, True)],
        extra_model={"unk_token": "</s>", "fuse_unk": True},
        post={"type": "Sequence", "processors": [{"type": "ByteLevel"}, {"type": "TemplateProcessing",
              "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}], "special_tokens": {}}]}))
    put("tokenizer", "no-regex", tokenizer_json(
        merges=MERGES[:3], pre={"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}))
    # Near-valid.
    put("tokenizer", "bad-merge-unknown", tokenizer_json(merges=[("x", "y")], all_bytes=False,
                                                         extra_model={"vocab": {"x": 0}}))
    put("tokenizer", "bad-wordpiece", json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}))


# -- upcycle options ---------------------------------------------------------------

METHODS = {"copy": 0, "drop": 1, "noise": 2, "granular": 3, "partition": 4}


SPECIAL_COUNTS = [0, 1, -1, 255, 256, 1023, 1024, 1025, 4096, 1 << 16, 2**31 - 1, 1 << 40, 2**63 - 1, -2**63, -1024, 12]


def count(n: int) -> int:
    """The byte decoding to count n (FuzzReader.int in fuzz/upcycle.swift)."""
    return n + 16 if -16 <= n < 224 else 240 + SPECIAL_COUNTS.index(n)


def options(model=0, experts=8, top_k=2, method="copy", ratio=64, noise=3, granularity=0, scaling=0, select=0,
            flags=4, router_init=0, router_std=3, routing=0, fmt=0, dtype=0, seed=0, shard=30, aux=3, layers=None):
    """Matches decodeOptions in fuzz/upcycle.swift."""
    b = struct.pack("<BBBBBBBBBBBBBBBQBB", model, count(experts), count(top_k), METHODS[method], ratio, noise,
                    count(granularity), scaling, select, flags, router_init, router_std, routing, fmt, dtype, seed,
                    shard, aux)
    if layers is None:
        return b + b"\0"
    return b + b"\1" + layers.encode()


def seeds_upcycle():
    put("upcycle", "copy-mixtral", options())
    put("upcycle", "drop-qwen2moe-every2", options(model=1, method="drop", fmt=1, layers="every:2", dtype=2))
    put("upcycle", "noise-shared-indices", options(method="noise", experts=4, top_k=1, flags=1 | 4, dtype=3, seed=7))
    put("upcycle", "granular-cuberoot", options(method="granular", experts=4, granularity=2, scaling=1, routing=2))
    put("upcycle", "partition-disjoint-importance", options(method="partition", experts=4, granularity=4, select=2,
                                                            flags=2 | 4, router_init=1))
    put("upcycle", "partition-uniform-list", options(model=0, method="partition", experts=6, top_k=3, select=1,
                                                     fmt=1, layers=" 0, 2", routing=1, router_init=2))
    put("upcycle", "qwen2moe-range", options(model=0, fmt=1, layers="1-3", flags=8, experts=16, top_k=4, shard=10))
    put("upcycle", "max-experts-granular", options(method="granular", experts=1024, top_k=1024, granularity=4))
    # Near-valid: each breaks one rule.
    put("upcycle", "bad-experts", options(experts=1025, top_k=2**63 - 1))
    put("upcycle", "bad-topk", options(experts=2, top_k=3))
    put("upcycle", "bad-mixtral-subset", options(layers="0,2"))
    put("upcycle", "bad-layer-range", options(fmt=1, layers="3-1,9"))
    put("upcycle", "bad-ratio", options(method="drop", ratio=250))
    put("upcycle", "bad-qwen2moe-head-dim", options(model=2, fmt=1))


if __name__ == "__main__":
    seeds_safetensors()
    seeds_gguf()
    seeds_config()
    seeds_tokenizer()
    seeds_upcycle()
    for d in sorted(ROOT.iterdir()):
        files = sorted(d.iterdir())
        print(f"{d.name}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")
