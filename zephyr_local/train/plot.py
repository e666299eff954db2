"""metrics.png: the training curves (train in blue, eval in red), drawn with matplotlib."""

from __future__ import annotations

import math
from pathlib import Path

from zephyr_local.atomic import write_via

DPO_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm",
            "learning_rate")
SFT_KEYS = ("loss", "grad_norm", "learning_rate", "tokens_per_second")


def plot_metrics(records: list[dict], path: Path) -> None:
    """Draw metrics.jsonl records into a grid of panels, one per metric; write a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    keys = DPO_KEYS if any("rewards/margins" in r for r in train) else SFT_KEYS
    keys = [k for k in keys if any(k in r or f"eval_{k}" in r for r in records)]
    cols = 2
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, color, label in ((key, "tab:blue", "train"), (f"eval_{key}", "tab:red", "eval")):
            rs = [r for r in records if name in r]
            if rs:
                ax.plot([r["step"] for r in rs], [float(r[name]) for r in rs], color=color,
                        marker="o" if label == "eval" else None, ms=3, label=label)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(ax.lines) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    write_via(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
