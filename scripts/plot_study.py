#!/usr/bin/env python3
"""Plots the report of `moeupcycle study` (DIR/report.json) into PNGs in DIR:
loss_vs_tokens.png and loss_vs_flops.png (held-out loss of every run; upcycled and continued
runs start at their dense snapshot's tokens and FLOPs), and fits.png (each fitted law against
its points).

    python3 scripts/plot_study.py DIR
Needs matplotlib (pip install matplotlib); the study itself does not.
"""
import json
import math
import sys
from pathlib import Path


def law_loss(law, d, d1=None):
    if law["form"].startswith("upcycle"):
        data = law["A"] * math.exp(-law["alpha"] * math.log(d1) + (-law["alpha2"] + law["alpha3"] * math.log(d1)) * math.log(d))
    else:
        data = law["A"] * d ** -law["alpha"]
    return law["E"] + data


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(sys.argv[1])
    report = json.loads((out / "report.json").read_text())
    runs = report["runs"]
    tps = report["tokens_per_step"]
    dense_fpt, moe_fpt = report["dense_flops_per_token"], report["moe_flops_per_token"]
    methods = report["methods"]
    colors = {m: c for m, c in zip(methods, ["tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink"])}
    written = []
    for axis in ("tokens", "flops"):
        fig, ax = plt.subplots(figsize=(8, 5))
        dense = runs["dense"]
        ax.plot([p[axis] for p in dense if p["step"]], [p["loss"] for p in dense if p["step"]], "k-", label="dense")
        if "scratch" in runs:
            s = runs["scratch"]
            ax.plot([p[axis] for p in s if p["step"]], [p["loss"] for p in s if p["step"]], "b-", label="MoE from scratch")
        for d1 in report["dense_steps"]:
            start_tokens = d1 * tps
            start = start_tokens if axis == "tokens" else start_tokens * dense_fpt
            for m in methods:
                c = runs[f"up-{m}-d1-{d1}"]
                ax.plot([start + p[axis] for p in c], [p["loss"] for p in c], "-", color=colors[m],
                        label=f"upcycled ({m})" if d1 == report["dense_steps"][0] else None)
            c = runs.get(f"dense-d1-{d1}")
            if c:
                ax.plot([start + p[axis] for p in c], [p["loss"] for p in c], "--", color="gray",
                        label="dense continued" if d1 == report["dense_steps"][0] else None)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens (dense + upcycled)" if axis == "tokens" else "training FLOPs (6N per token, PaLM)")
        ax.set_ylabel("held-out loss (nats)")
        ax.set_title(f"study {report['name']}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"loss_vs_{axis}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    fits = report["fits"]
    fig, axes = plt.subplots(1, 1 + len(methods), figsize=(5 * (1 + len(methods)), 4), squeeze=False)
    ax = axes[0][0]
    for name, run, color in (("dense", "dense", "k"), ("scratch", "scratch", "b")):
        if run not in runs or "law" not in (fits.get(name) or {}):
            continue
        pts = [p for p in runs[run] if p["step"]]
        ax.plot([p["tokens"] for p in pts], [p["loss"] for p in pts], "o", color=color, label=f"{name} (points)")
        xs = [pts[0]["tokens"] * (pts[-1]["tokens"] / pts[0]["tokens"]) ** (i / 50) for i in range(51)]
        ax.plot(xs, [law_loss(fits[name]["law"], x) for x in xs], "-", color=color, label=f"{name} (fit)")
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("held-out loss (nats)")
    ax.legend(fontsize=7)
    for i, m in enumerate(methods):
        ax = axes[0][i + 1]
        fit = fits.get(f"upcycled-{m}") or {}
        for j, d1 in enumerate(report["dense_steps"]):
            pts = [p for p in runs[f"up-{m}-d1-{d1}"] if p["step"]]
            color = plt.cm.viridis(j / max(1, len(report["dense_steps"]) - 1))
            ax.plot([p["tokens"] for p in pts], [p["loss"] for p in pts], "o", color=color, label=f"D1 = {d1 * tps:.3g}")
            if "law" in fit:
                xs = [pts[0]["tokens"] * (pts[-1]["tokens"] / pts[0]["tokens"]) ** (k / 50) for k in range(51)]
                ax.plot(xs, [law_loss(fit["law"], x, d1 * tps) for x in xs], "-", color=color)
        ax.set_xscale("log")
        ax.set_xlabel("D2 tokens")
        ax.set_title(f"upcycled ({m})" + ("" if "law" in fit else ": not fitted"))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "fits.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
