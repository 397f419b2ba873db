#!/usr/bin/env python3
"""The library's MoE layer side by side with PyTorch on CPU, same weights, same threads.

PyTorch runs the layer the way HF transformers' Mixtral sparse MoE block does
(router, softmax, top-k, renormalize, a loop over experts with index_add_).
Both are checked to give the same output, then timed alternately in one process.

Not part of the test suite (PyTorch is a large install):
    pip install torch --index-url https://download.pytorch.org/whl/cpu
    python3 bench/torch_moe.py --threads 2 --tokens 2048,1,4,16 [--compute bf16] [--json]

--compute bf16 runs the library's expert products in bf16 (f32 sums; AMX tiles or
vdpbf16ps where the CPU has them); PyTorch stays fp32, the baseline users compare with.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MOEUPCYCLE_LIBRARY", str(ROOT / "dist" / "lib" / "libmoeupcycle.so"))
sys.path.insert(0, str(ROOT / "bindings" / "python"))
from moeupcycle import _capi as C  # noqa: E402

F32P = ctypes.POINTER(ctypes.c_float)


def check(status: int) -> None:
    if status != C.MOE_OK:
        raise RuntimeError(C.lib.moe_last_error().decode())


def ptr(a: np.ndarray):
    return a.ctypes.data_as(F32P)


class LibraryLayer:
    """The library's layer through the C ABI, with weights copied in."""

    def __init__(self, weights: dict, threads: int, top_k: int, compute: int = C.MOE_DTYPE_F32):
        params = C.moe_runtime_params()
        check(C.lib.moe_runtime_params_init(ctypes.byref(params), ctypes.sizeof(params)))
        params.threads = threads
        self.runtime = ctypes.c_void_p()
        check(C.lib.moe_runtime_create(ctypes.byref(self.runtime), ctypes.byref(params)))
        E, F, H = weights["gate"].shape
        config = C.moe_layer_config()
        check(C.lib.moe_layer_config_init(ctypes.byref(config), ctypes.sizeof(config)))
        config.hidden_size, config.moe_intermediate_size, config.num_experts, config.top_k = H, F, E, top_k
        config.compute = compute
        config.aux_loss_coef = 0.0
        config.z_loss_coef = 0.0
        self.layer = ctypes.c_void_p()
        check(C.lib.moe_layer_create(ctypes.byref(self.layer), self.runtime, ctypes.byref(config)))
        for kind, name in [(C.MOE_WEIGHT_ROUTER, "router"), (C.MOE_WEIGHT_GATE, "gate"),
                           (C.MOE_WEIGHT_UP, "up"), (C.MOE_WEIGHT_DOWN, "down")]:
            w = np.ascontiguousarray(weights[name], dtype=np.float32)
            check(C.lib.moe_layer_set_weight(self.layer, kind, C.MOE_ALL_EXPERTS, ptr(w), w.size))

    def forward(self, x: np.ndarray, out: np.ndarray, save: bool = False) -> None:
        flags = C.MOE_FORWARD_SAVE if save else 0
        check(C.lib.moe_layer_forward(self.layer, ptr(x), x.shape[0], ptr(out), flags))

    def backward(self, grad_out: np.ndarray, grad_x: np.ndarray) -> None:
        check(C.lib.moe_layer_backward(self.layer, ptr(grad_out), ptr(grad_x)))

    def close(self) -> None:
        C.lib.moe_layer_free(self.layer)
        C.lib.moe_runtime_free(self.runtime)


class TorchLayer(torch.nn.Module):
    """HF Mixtral-style sparse MoE block (loop over experts)."""

    def __init__(self, weights: dict, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.router = torch.nn.Parameter(torch.from_numpy(weights["router"].copy()))
        self.gate = torch.nn.Parameter(torch.from_numpy(weights["gate"].copy()))
        self.up = torch.nn.Parameter(torch.from_numpy(weights["up"].copy()))
        self.down = torch.nn.Parameter(torch.from_numpy(weights["down"].copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        E = self.gate.shape[0]
        logits = x @ self.router.T
        probs = torch.softmax(logits, dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        mask = torch.nn.functional.one_hot(chosen, num_classes=E).permute(2, 1, 0)
        for e in range(E):
            slot, token = torch.where(mask[e])
            if token.numel() == 0:
                continue
            rows = x[token]
            h = torch.nn.functional.silu(rows @ self.gate[e].T) * (rows @ self.up[e].T)
            out.index_add_(0, token, (h @ self.down[e].T) * weights[token, slot, None])
        return out


def timed(fn, iters: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best": min(times), "median": statistics.median(times)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="2048,1,4,16")
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--compute", choices=["f32", "bf16"], default="f32", help="the library's expert products")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    H, F, E = args.hidden, args.ffn, args.experts
    weights = {
        "router": (rng.standard_normal((E, H)) * 0.02).astype(np.float32),
        "gate": (rng.standard_normal((E, F, H)) * 0.02).astype(np.float32),
        "up": (rng.standard_normal((E, F, H)) * 0.02).astype(np.float32),
        "down": (rng.standard_normal((E, H, F)) * 0.02).astype(np.float32),
    }
    compute = C.MOE_DTYPE_BF16 if args.compute == "bf16" else C.MOE_DTYPE_F32
    ours = LibraryLayer(weights, args.threads, args.top_k, compute)
    theirs = TorchLayer(weights, args.top_k)
    results = []
    for T in [int(t) for t in args.tokens.split(",")]:
        x = rng.standard_normal((T, H)).astype(np.float32)
        grad = (rng.standard_normal((T, H)) * 1e-3).astype(np.float32)
        out = np.empty_like(x)
        grad_x = np.empty_like(x)
        xt = torch.from_numpy(x)
        gt = torch.from_numpy(grad)

        ours.forward(x, out)
        with torch.no_grad():
            reference = theirs(xt).numpy()
        max_diff = float(np.abs(out - reference).max())

        def torch_forward():
            with torch.no_grad():
                theirs(xt)

        def torch_forward_backward():
            xg = xt.clone().requires_grad_(True)
            theirs.zero_grad(set_to_none=True)
            (theirs(xg) * gt).sum().backward()

        def ours_forward_backward():
            ours.forward(x, out, save=True)
            ours.backward(grad, grad_x)

        row = {"tokens": T, "threads": args.threads, "compute": args.compute, "max_abs_diff": max_diff,
               "torch_forward_s": timed(torch_forward, args.iters),
               "ours_forward_s": timed(lambda: ours.forward(x, out), args.iters),
               "torch_forward_backward_s": timed(torch_forward_backward, args.iters),
               "ours_forward_backward_s": timed(ours_forward_backward, args.iters)}
        row["speedup_forward"] = row["torch_forward_s"]["best"] / row["ours_forward_s"]["best"]
        row["speedup_forward_backward"] = (row["torch_forward_backward_s"]["best"]
                                           / row["ours_forward_backward_s"]["best"])
        results.append(row)
        if not args.json:
            print(f"T={T:5d} threads={args.threads} {args.compute}: forward torch {row['torch_forward_s']['best'] * 1e3:8.3f} ms"
                  f" ours {row['ours_forward_s']['best'] * 1e3:8.3f} ms ({row['speedup_forward']:.2f}x);"
                  f" fwd+bwd torch {row['torch_forward_backward_s']['best'] * 1e3:8.3f} ms"
                  f" ours {row['ours_forward_backward_s']['best'] * 1e3:8.3f} ms"
                  f" ({row['speedup_forward_backward']:.2f}x); max |diff| {max_diff:.2e}")
    ours.close()
    if args.json:
        print(json.dumps({"torch": torch.__version__, "hidden": H, "ffn": F, "experts": E,
                          "top_k": args.top_k, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
