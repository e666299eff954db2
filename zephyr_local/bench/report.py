"""Benchmark results as a Markdown table and a PNG chart of the ratios."""

from __future__ import annotations

from pathlib import Path

from zephyr_local.atomic import write_via


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.4f}"


def markdown(record: dict) -> str:
    m = record["machine"]
    mem = m.get("memory_bytes", 0) / 2**30
    lines = [
        f"Benchmark ({record['mode']} mode), {record['date']}: {m.get('device')} "
        f"({m['backend']}, {mem:.0f} GiB, BLAS {m.get('blas')}), mlx {m.get('mlx_version')}, "
        f"mlx-lm {m.get('mlx-lm_version')}; model `{Path(record['model']).name}`.",
        "",
        "| case | metric | zephyr-local | baseline | ratio (>1 favours us) | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in record["cases"]:
        if case["skipped"]:
            lines.append(f"| {case['name']} | skipped: {case['skipped']} | | | | | |")
        for r in case["ratios"]:
            met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
            lines.append(
                f"| {r['case']} | {r['metric']} | {_fmt(r['ours'])} {r['unit']} | "
                f"{_fmt(r['baseline'])} {r['unit']} ({r['baseline_name']}) | {r['ratio']:.3f} | "
                f"{r['goal']} | {met} |"
            )
    for case in record["cases"]:
        if case["name"] == "hardware limit" and case["details"]:
            d = case["details"]
            lines += ["", f"Hardware limit: read bandwidth {d['read_bandwidth_gb_s']:.1f} GB/s, "
                      f"{d['weight_bytes_per_token'] / 1e6:.1f} MB of weights per token, ceiling "
                      f"{d['ceiling_tok_s']:.0f} tok/s; decode reached "
                      f"{d['decode_tok_s']:.0f} tok/s "
                      f"= {100 * d['fraction_of_ceiling']:.1f}% of the ceiling."]
            z = d.get("zephyr_7b_4bit")
            if z:
                lines.append(f"Zephyr-7B-shaped 4-bit: {z['skipped']}" if "skipped" in z else
                             f"Zephyr-7B-shaped 4-bit: decode {z['decode_tok_s']:.1f} tok/s = "
                             f"{100 * z['fraction_of_ceiling']:.1f}% of its "
                             f"{z['ceiling_tok_s']:.1f} tok/s ceiling.")
        if case["name"] == "distributed" and case["details"]:
            lines += ["", _distributed_note(case["details"])]
    return "\n".join(lines) + "\n"


def _distributed_note(d: dict) -> str:
    probe = "; ".join(f"{p['bytes'] / 1e6:.1f} MB in {1e3 * p['seconds']:.1f} ms"
                      for p in d["allreduce_2_local_ranks"])
    model = "; ".join(f"{m['macs']} Macs on {m['link']}: step {m['step_s']:.1f} s, "
                      f"communication {100 * m['communication_share']:.2f}%, "
                      f"speed-up {m['speedup']:.2f}x" for m in d["modelled_7b"])
    return (f"Distributed: LoRA gradient all-reduce on 2 local ranks: {probe}. Zephyr-7B, "
            f"LoRA rank 16 on all 7 targets of 32 layers: "
            f"{d['zephyr_7b_lora16_all_layers_gradient_bytes'] / 1e6:.1f} MB per step; modelled: "
            f"{model}.")


def chart(record: dict, path: Path) -> None:
    """The PNG of `figure(record)`."""
    import matplotlib.pyplot as plt

    fig = figure(record)
    write_via(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def figure(record: dict):
    """A bar per ratio from parity (1) on a log axis, its value printed, goals marked.

    A log axis keeps a 9.5x row and the 0.96-0.99 rows readable side by side, and
    shows 2x faster and 2x slower as bars of the same length.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ratios = [r for c in record["cases"] for r in c["ratios"] if r["ratio"] > 0]
    fig, ax = plt.subplots(figsize=(10, 0.45 * max(len(ratios), 2) + 1.6))
    colors = ["tab:green" if r["met"] else "tab:red" if r["met"] is False else "tab:blue"
              for r in ratios]
    values = [r["ratio"] for r in ratios]
    ax.barh(range(len(ratios)), [v - 1.0 for v in values], left=1.0, color=colors)
    ax.set_xscale("log")
    for i, (r, v) in enumerate(zip(ratios, values)):
        ax.annotate(f"{v:.3g}", (v, i), xytext=(4 if v >= 1 else -4, 0),
                    textcoords="offset points", va="center", ha="left" if v >= 1 else "right",
                    fontsize=7)
        if r["goal"].startswith(">="):
            ax.plot([float(r["goal"][3:])] * 2, [i - 0.42, i + 0.42], color="black", lw=2)
    lo, hi = min(values + [1.0]), max(values + [1.0])
    ax.set_xlim(lo / 1.35, hi * 1.6)  # room for the labels at both ends
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(ratios)), [f"{r['case']}: {r['metric']}" for r in ratios],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio, log scale (> 1 favours zephyr-local)")
    ax.legend(handles=[Patch(color="tab:green", label="goal met"),
                       Patch(color="tab:red", label="goal missed"),
                       Patch(color="tab:blue", label="no goal (a reading)"),
                       Line2D([], [], color="black", lw=2, label="goal"),
                       Line2D([], [], color="grey", ls="--", lw=1, label="parity (1.0)")],
              fontsize=7, loc="lower right")
    ax.set_title(f"zephyr-local benchmark, {record['machine'].get('device')}, {record['date']}",
                 fontsize=9)
    fig.tight_layout()
    return fig
