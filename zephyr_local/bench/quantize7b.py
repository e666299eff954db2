"""Case 5 (full mode): quantize a Zephyr-shaped 7B bf16 checkpoint with random weights.

The 14.5 GB checkpoint is made once and cached. `quantize` runs as its own process so
that its peak RSS is its own, not the harness's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult, ratio


def source_checkpoint(cache_dir: Path, progress=lambda msg: None) -> Path:
    """The cached Zephyr-7B-shaped bf16 checkpoint, written on first use."""
    from zephyr_local.testmodel import create_full_size_test_model

    path = cache_dir / "zephyr-7b-shape-bf16"
    if not (path / "config.json").exists():
        progress(f"writing the 7B-shaped checkpoint once ({path}, 14.5 GB)")
        create_full_size_test_model(path, force=path.exists())
    return path


def quantized_path(cache_dir: Path) -> Path:
    return cache_dir / "zephyr-7b-shape-4bit"


def quantize_case(cache_dir: Path, progress=lambda msg: None) -> CaseResult:
    """Time, peak memory and size of a 4-bit quantization of the 7B-shaped checkpoint."""
    result = CaseResult("quantize 7B")
    source = source_checkpoint(cache_dir, progress)
    # Kept for the hardware case (decode of a 7B 4-bit model); replaced every run.
    cmd = [sys.executable, "-m", "zephyr_local.cli", "quantize", str(source), "--bits", "4",
           "--no-eval", "--json", "--force", "--out", str(quantized_path(cache_dir))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    if out.returncode != 0:
        result.skipped = f"quantize failed: {out.stderr.strip().splitlines()[-1:]}"
        return result
    report = json.loads(out.stdout[out.stdout.index("{"):])
    # The formula: 4 bits per quantized weight plus a scale and a bias per 64 weights
    # (4.5 bits in float16, 5 in float32), the rest in the same dtype.
    dtype_bits = 32 if report["dtype"] == "float32" else 16
    bpw = 4 + 2 * dtype_bits / 64
    expected = (report["quantized_parameters"] * bpw
                + (report["parameters"] - report["quantized_parameters"]) * dtype_bits) / 8
    weights = report["overall_bits_per_weight"] * report["parameters"] / 8
    result.details = {**{k: report[k] for k in (
        "source_bytes", "output_bytes", "bits_per_weight", "overall_bits_per_weight",
        "parameters", "seconds", "quantize_peak_rss_gb", "quantize_peak_mlx_gb")},
        "formula_weight_bytes": expected, "weight_bytes": weights}
    half_source_gb = report["source_bytes"] / 2 / 1e9
    result.ratios += [
        ratio("quantize 7B", "peak RSS vs half the source size (goal: below)",
              report["quantize_peak_rss_gb"], half_source_gb, "half of the bf16 checkpoint",
              higher_is_better=False, goal=1.0, unit="GB"),
        ratio("quantize 7B", f"weight bytes vs the {bpw:g} bits/weight formula",
              weights / 1e9, expected / 1e9, "formula", higher_is_better=False, goal=0.999,
              unit="GB"),
    ]
    return result


def run_quantize(ctx: Context) -> CaseResult:
    return quantize_case(ctx.cache_dir())
