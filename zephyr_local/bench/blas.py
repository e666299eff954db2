"""Case 7 (Linux CPU): prefill and decode with the system OpenBLAS against the bundled BLAS.

The BLAS is chosen when the process starts (backend.preload_blas), so each side runs
in its own subprocess, alternating.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult, median, ratio

PROBE = """
import json, sys
import zephyr_local
from zephyr_local import backend
from zephyr_local.engine import Engine
from zephyr_local.bench.common import filler_ids
from zephyr_local.bench.generation import reply_stats
engine = Engine.load(sys.argv[1])
ids = filler_ids(engine.tokenizer, int(sys.argv[2]))
reply_stats(engine, ids, 4)
out = reply_stats(engine, ids, int(sys.argv[3]))
engine.close()
from zephyr_local.bench.dpo import dpo_step_benchmark
dpo = dpo_step_benchmark(sys.argv[1], batch_size=1, max_length=128, steps=2)["ours"]
out["dpo_step_s"] = dpo["best_step_s"]
out["blas"] = backend.blas()[0]
print(json.dumps(out))
"""


def _probe(model: str, n: int, max_tokens: int, blas: str) -> dict:
    env = {**os.environ, "ZEPHYR_LOCAL_BLAS": blas}
    out = subprocess.run([sys.executable, "-c", PROBE, model, str(n), str(max_tokens)],
                         capture_output=True, text=True, env=env, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"BLAS probe failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def blas_case(model: str, *, prompt_length: int, max_tokens: int, repeats: int) -> CaseResult:
    """Prompt and generation tok/s, and a DPO step (cases 1 and 4), with OpenBLAS
    (default) vs ZEPHYR_LOCAL_BLAS=off."""
    result = CaseResult("linux-cpu-blas")
    if sys.platform != "linux":
        result.skipped = "not Linux"
        return result
    runs = {"openblas": [], "reference": []}
    for i in range(repeats):
        order = [("openblas", ""), ("reference", "off")]
        for name, setting in order if i % 2 == 0 else order[::-1]:
            runs[name].append(_probe(model, prompt_length, max_tokens, setting))
    if runs["openblas"][0]["blas"] != "openblas":
        result.skipped = "no system OpenBLAS (apt-get install libopenblas0-pthread)"
        return result
    metrics = ("prompt_tps", "generation_tps", "dpo_step_s")
    med = {k: {m: median(r[m] for r in v) for m in metrics} for k, v in runs.items()}
    result.details = {"prompt_length": prompt_length, **med}
    for metric in ("prompt_tps", "generation_tps"):
        result.ratios.append(ratio(
            "linux-cpu-blas", f"{metric.replace('_tps', '')} tok/s, {prompt_length}-token prompt",
            med["openblas"][metric], med["reference"][metric], "bundled reference BLAS",
            higher_is_better=True, goal=None, unit="tok/s"))
    result.ratios.append(ratio(
        "linux-cpu-blas", f"DPO step (1 pair x 128 tokens), {Path(model).name}",
        med["openblas"]["dpo_step_s"], med["reference"]["dpo_step_s"], "bundled reference BLAS",
        higher_is_better=False, goal=None, unit="s"))
    return result


def run_blas(ctx: Context) -> CaseResult:
    return blas_case(ctx.model, prompt_length=512, max_tokens=ctx.settings["max_tokens"],
                     repeats=ctx.settings["blas_repeats"])
