#!/usr/bin/env python3
"""Training steps of a checkpoint in PyTorch (CPU, fp32), set up like `moeupcycle bench train`.

Same checkpoint, batch, sequence length and threads; AdamW with the trainer's defaults (lr 2e-4,
betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only, global-norm clip 1.0); random token
ids from the same generator as bench train; one warm-up step, then N timed steps. Prints s/step,
tokens/s, the model FLOPs of a step by the same PaLM count as the library (moe_train_stats
model_flops), the achieved GFLOP/s and MFU over the f32 multiply-add peak, which is either given
(--peak-gflops) or measured by the library itself (moe_runtime_measure_peak, before and after the
steps, the larger kept, as bench train does), so that both tools divide by one ceiling.

Checkpoints: an HF directory (Llama, Qwen2, Mixtral, Qwen2-MoE: safetensors + config.json) loads
with AutoModelForCausalLM in float32; a .gguf file loads through transformers' GGUF support (the
`gguf` package dequantizes it, as the library does, to the same f32 values; transformers also wants
`accelerate` installed for GGUF files).

What differs from the library for MoE models, and how this script matches it:
  * transformers routes by looping over the experts that received tokens (index_add_ of each
    expert's output); the library groups tokens per expert and runs blocked GEMMs.
  * the load-balancing loss: output_router_logits is on and the Switch loss is added with the
    trainer's coefficient (--aux-loss-coef, default 0.02 as TrainerOptions.balanceCoef).
    transformers pools the router statistics of all layers into one figure, the library adds
    one term per MoE layer; the router z-loss (coefficient 0.001 in the library) has no
    transformers counterpart and is left out. Neither changes the cost of a step noticeably.
  * the library runs the sequences of a batch one at a time and accumulates their gradients;
    PyTorch runs the batch as one [B, T] tensor.
  * the learning rate is constant here (the library's cosine schedule does not change the
    work of a step).

Not part of the library's build; needs torch, transformers (and gguf and accelerate for .gguf files):
    python3 bench/torch_train.py MODEL --batch 4 --seq-len 256 --steps 3 --threads 2 [--json]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MOEUPCYCLE_LIBRARY", str(ROOT / "dist" / "lib" / "libmoeupcycle.so"))
sys.path.insert(0, str(ROOT / "bindings" / "python"))

import torch  # noqa: E402

ROUTED = re.compile(r"\.experts\.")


def load(path: Path):
    from transformers import AutoModelForCausalLM

    if path.is_file() and path.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    if (path / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    raise SystemExit(f"{path}: neither a .gguf file nor an HF directory with config.json")


def routing(config) -> tuple[int, int]:
    """(routed experts, experts per token) of an MoE config; (0, 0) when dense."""
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0
    top_k = getattr(config, "num_experts_per_tok", None) or 0
    return int(experts), int(top_k)


def multiplied_parameters(model) -> int:
    """Weights one token multiplies: every matrix under the decoder layers (attention, dense FFN,
    router, shared expert and its gate) with the routed experts scaled by top_k / experts, plus the
    LM head (tied or not). The embedding lookup and vectors (norms, biases) multiply nothing."""
    experts, top_k = routing(model.config)
    dense = routed = 0
    for name, p in model.named_parameters():
        if ".layers." not in name or p.dim() < 2:
            continue
        if ROUTED.search(name):
            routed += p.numel()
        else:
            dense += p.numel()
    if routed and not experts:
        raise SystemExit("the model has expert weights but its config names no experts")
    head = model.get_output_embeddings().weight.numel()
    return dense + (routed * top_k // experts if experts else 0) + head


def flops_per_token(model, seq_len: int) -> float:
    """The PaLM count of the library: 6 x multiplied parameters + 12 x layers x heads x head_dim x T."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 6.0 * multiplied_parameters(model) + 12.0 * c.num_hidden_layers * c.num_attention_heads * head_dim * seq_len


def token_stream(count: int, vocab: int) -> torch.Tensor:
    """The ids bench train draws: a 64-bit LCG from 12345, (state >> 33) % vocab."""
    state, out = 12345, []
    for _ in range(count):
        state = (state * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out.append((state >> 33) % vocab)
    return torch.tensor(out, dtype=torch.long)


def library_peaks(threads: int, seconds: float) -> tuple[float, float | None]:
    """f32 and bf16 peaks (GFLOP/s) from moe_runtime_measure_peak; bf16 None where unsupported."""
    from moeupcycle import _capi as C
    import moeupcycle as mu

    with mu.Runtime(threads=threads) as rt:
        f32 = rt.measure_peak(seconds)
        g = ctypes.c_double()
        st = C.lib.moe_runtime_measure_peak(rt.handle, C.MOE_DTYPE_BF16, seconds, ctypes.byref(g))
        if st == C.MOE_ERR_UNSUPPORTED:
            return f32, None
        if st != C.MOE_OK:
            raise RuntimeError(C.lib.moe_last_error().decode())
        return f32, g.value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="HF directory or .gguf file")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--aux-loss-coef", type=float, default=0.02)
    ap.add_argument("--peak-gflops", type=float, default=0.0,
                    help="f32 peak to divide by (default: measured by the library on --threads workers)")
    ap.add_argument("--peak-seconds", type=float, default=0.3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    for name in ("batch", "seq_len", "steps", "threads"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = load(a.model)
    model.train()
    experts, top_k = routing(model.config)
    moe = experts > 0
    if moe:
        model.config.output_router_logits = True
        model.config.router_aux_loss_coef = a.aux_loss_coef
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    params = decay + no_decay

    vocab = model.config.vocab_size
    stream = token_stream(a.seq_len * a.batch * 4 + 1, vocab)
    windows = len(stream) - a.seq_len - 1

    def step(i: int) -> tuple[float, float]:
        starts = [((i * a.batch + b) * 7919) % windows for b in range(a.batch)]
        seqs = torch.stack([stream[s:s + a.seq_len + 1] for s in starts])
        started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=seqs[:, :-1], output_router_logits=moe) if moe else model(input_ids=seqs[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, vocab), seqs[:, 1:].reshape(-1))
        if moe and out.aux_loss is not None:
            loss = loss + a.aux_loss_coef * out.aux_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return time.perf_counter() - started, float(loss.detach())

    # The library's ceilings before the steps and again after them, the larger of each kept
    # (as bench train does: two vCPUs can share one physical core for a while).
    before = library_peaks(a.threads, a.peak_seconds) if a.peak_gflops <= 0 else None
    step(0)  # warm-up
    times, loss = [], 0.0
    for i in range(a.steps):
        t, loss = step(i + 1)
        times.append(t)
    seconds = sum(times) / len(times)

    if a.peak_gflops > 0:
        peak, peak_bf16, peak_from = a.peak_gflops, None, "given"
    else:
        peak, peak_bf16 = library_peaks(a.threads, a.peak_seconds)
        peak = max(peak, before[0])
        if peak_bf16 is not None and before[1] is not None:
            peak_bf16 = max(peak_bf16, before[1])
        peak_from = "moe_runtime_measure_peak"
    tokens = a.batch * a.seq_len
    flops = flops_per_token(model, a.seq_len) * tokens
    gflops = flops / seconds / 1e9
    result = {
        "model": str(a.model), "architecture": model.config.model_type, "threads": a.threads,
        "batch": a.batch, "seq_len": a.seq_len, "steps": a.steps, "step_s": seconds,
        "step_s_all": times, "tokens_per_second": tokens / seconds, "model_flops_per_step": flops,
        "gflops": gflops, "mfu": gflops / peak, "peak_f32_gflops": peak, "peak_bf16_gflops": peak_bf16,
        "peak_from": peak_from, "loss": loss, "experts": experts, "top_k": top_k,
        "aux_loss_coef": a.aux_loss_coef if moe else 0.0, "torch": torch.__version__,
    }
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"PyTorch {torch.__version__} training step ({model.config.model_type}), batch {a.batch} x {a.seq_len}"
          f" tokens, {a.threads} threads, mean of {a.steps} steps after a warm-up:")
    print(f"  {a.model}  {seconds:.3f} s/step  {tokens / seconds:.1f} tokens/s  {flops / 1e9:.4g} GFLOP/step"
          f"  {gflops:.3g} GFLOP/s  MFU {100 * gflops / peak:.1f}%")
    bf16 = f"{peak_bf16:.1f} GFLOP/s" if peak_bf16 else "n/a"
    print(f"  f32 peak {peak:.1f} GFLOP/s ({peak_from}), bf16 peak {bf16}; step times "
          + ", ".join(f"{t:.3f}" for t in times))
    if moe:
        print(f"  MoE: {experts} experts, top-{top_k}; transformers loops over the experts that received tokens;"
              f" Switch aux loss x {a.aux_loss_coef} pooled over layers (the library: one term per layer, plus"
              " a z-loss transformers lacks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
