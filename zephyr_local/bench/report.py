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
                      f"{d['ceiling_tok_s']:.0f} tok/s; decode reached {d['decode_tok_s']:.0f} tok/s "
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
    """A horizontal bar per ratio, with the parity line at 1 and each goal marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r for c in record["cases"] for r in c["ratios"]]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(ratios), 2) + 1.2))
    labels = [f"{r['case']}: {r['metric']}" for r in ratios]
    colors = ["tab:green" if r["met"] else "tab:red" if r["met"] is False else "tab:blue"
              for r in ratios]
    ax.barh(range(len(ratios)), [r["ratio"] for r in ratios], color=colors)
    for i, r in enumerate(ratios):
        if r["goal"].startswith(">="):
            ax.plot([float(r["goal"][3:])] * 2, [i - 0.4, i + 0.4], color="black", lw=2)
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(ratios)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (> 1 favours zephyr-local; black marks = goal)")
    ax.set_title(f"zephyr-local benchmark, {record['machine'].get('device')}, {record['date']}",
                 fontsize=9)
    fig.tight_layout()
    write_via(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
