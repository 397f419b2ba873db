#!/usr/bin/env python3
"""Plots the loss curve of a `moeupcycle train` JSON-lines log into a PNG.

    python3 scripts/plot_loss.py RUN.jsonl RUN.png
Needs matplotlib (pip install matplotlib); training itself does not.
"""
import json
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    train, held = [], []
    with open(sys.argv[1]) as f:
        for line in f:
            row = json.loads(line)
            if row.get("loss") is not None:  # a skipped step's non-finite loss is null
                train.append((row["step"], row["loss"]))
            if "eval_loss" in row:
                held.append((row["step"], row["eval_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss", linewidth=1)
    if held:
        ax.plot(*zip(*held), "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
