"""Data-parallel training: 1 vs 2 local ranks, the LoRA all-reduce, and a model of N Macs.

Local: `zephyr-local dpo` on a weight-dominated random model, alone and under
`mlx.launch -n 2 --backend ring`; tokens/s is the whole job's (metrics.jsonl). Both
runs share this machine's cores, so on a small CPU the 2-rank figure is the cost of
the distributed path (split batches, the all-reduce, two processes competing for the
same cores), not a speed-up: that needs a second machine.

All-reduce: a probe under `mlx.launch -n 2` times the gradient sum the trainer does
(Dist.sum_gradients) on LoRA-shaped gradients: the bench model's and Zephyr-7B's.

Model of N Macs: per step, compute = tokens / (N x tokens/s of one Mac), and a ring
all-reduce of the LoRA gradients moves 2(N-1)/N of their bytes over each link, with
2(N-1) latency hops. The link speeds and one Mac's LoRA tokens/s are assumptions,
stated in the record.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult, median, ratio
from zephyr_local.train.config import DEFAULT_TARGETS

ZEPHYR_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
             "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}
# Effective TCP throughput (bytes/s) and one-way latency (s) per link, assumed: the
# Thunderbolt Bridge reaches about 12 Gb/s of its 40 in TCP tests; 10 GbE about 9.4.
LINKS = {"Thunderbolt 4": (12e9 / 8, 50e-6), "10 GbE": (9.4e9 / 8, 100e-6)}
# One Mac (M1 Max class), LoRA on a 7B 4-bit model: 150-250 tok/s; the middle is used.
MAC_7B_TOKENS_PER_S = 200.0
# The handbook's DPO batch: 16 pairs; UltraFeedback averages ~800 tokens per pair
# (chosen + rejected, prompt included: 49M tokens / 61,135 pairs).
STEP_TOKENS_7B = 16 * 800


def lora_shapes(dims: dict, rank: int, targets=DEFAULT_TARGETS) -> list[tuple[int, int]]:
    """(in, out) of every LoRA matrix pair's base layer, for all layers and targets."""
    h, inter = dims["hidden_size"], dims["intermediate_size"]
    q = dims["num_attention_heads"] * dims["head_dim"]
    kv = dims["num_key_value_heads"] * dims["head_dim"]
    io = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
          "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    return [io[t] for _ in range(dims["num_hidden_layers"]) for t in targets]


def lora_gradient_bytes(dims: dict, rank: int, targets=DEFAULT_TARGETS) -> int:
    """float32 bytes of the LoRA gradients of one step: A [in, r] and B [r, out] per layer."""
    return 4 * rank * sum(i + o for i, o in lora_shapes(dims, rank, targets))


def ring_allreduce_s(n: int, nbytes: int, bandwidth: float, latency: float) -> float:
    """Reduce-scatter then all-gather: 2(n-1) hops, each moving nbytes / n per link."""
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency


def step_model(n: int, link: str, *, nbytes: int, step_tokens: int = STEP_TOKENS_7B,
               tokens_per_s: float = MAC_7B_TOKENS_PER_S) -> dict:
    """Step time, communication share and speed-up over one Mac for n Macs on `link`."""
    compute = step_tokens / (n * tokens_per_s)
    comm = ring_allreduce_s(n, nbytes, *LINKS[link])
    one = step_tokens / tokens_per_s
    return {"macs": n, "link": link, "step_s": compute + comm, "compute_s": compute,
            "allreduce_s": comm, "communication_share": comm / (compute + comm),
            "speedup": one / (compute + comm)}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(ranks: int, args: list[str], env: dict) -> None:
    cmd = [sys.executable, "-m", "zephyr_local.cli", *args]
    # The ranks share this machine's cores: give each its part rather than oversubscribe.
    env = {**env, "OPENBLAS_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
    if ranks > 1:
        launcher = str(Path(sys.executable).parent / "mlx.launch")
        cmd = [launcher, "-n", str(ranks), "--backend", "ring", "--starting-port",
               str(_port()), "--", *cmd]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env,
                         timeout=1200)
    if "Error" in out.stderr or out.returncode != 0:
        raise RuntimeError(f"{ranks}-rank run failed: {out.stderr.strip()[-300:]}")


def training_tps(model: Path, ranks: int, steps: int, batch: int, max_length: int) -> float:
    """Median whole-job tokens/s of a DPO run on `ranks` local ranks (first step left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ZEPHYR_LOCAL_HOME": tmp}
        _launch(ranks, ["dpo", "-m", str(model), "--data", "example:prefs", "--out",
                        f"{tmp}/out", "--iters", str(steps + 1), "--batch-size", str(batch),
                        "--max-length", str(max_length), "--max-prompt-length",
                        str(max_length // 2), "--lora-rank", "16", "--save-every", "1000"],
                env)
        rows = [json.loads(x) for x in Path(f"{tmp}/out/metrics.jsonl").read_text().splitlines()]
    return median([r["tokens_per_second"] for r in rows if "tokens_per_second" in r][1:])


def allreduce_probe(dims_list: list[dict], rank: int, repeats: int) -> list[dict]:
    """Time Dist.sum_gradients on 2 local ranks for each model shape (rank 0's report)."""
    env = {**os.environ}
    launcher = str(Path(sys.executable).parent / "mlx.launch")
    cmd = [launcher, "-n", "2", "--backend", "ring", "--starting-port", str(_port()), "--",
           sys.executable, "-m", "zephyr_local.bench.distributed", json.dumps(dims_list),
           str(rank), str(repeats)]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env,
                         timeout=1200)
    lines = [x for x in out.stdout.splitlines() if x.startswith("[")]
    if not lines:
        raise RuntimeError(f"all-reduce probe failed: {out.stderr.strip()[-300:]}")
    return json.loads(lines[0])


def _probe_main(dims_list: list[dict], rank: int, repeats: int) -> None:
    import mlx.core as mx

    from zephyr_local.train.distributed import init

    dist = init()
    report = []
    for dims in dims_list:
        grads = {f"g{i}": [mx.ones((i_, rank)), mx.ones((rank, o_))]
                 for i, (i_, o_) in enumerate(lora_shapes(dims, rank))}
        mx.eval(grads)
        dist.sum_gradients(grads, "warm-up")
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dist.sum_gradients(grads, "the probe")
            times.append(time.perf_counter() - t0)
        nbytes = lora_gradient_bytes(dims, rank)
        report.append({"dims": dims, "bytes": nbytes, "seconds": statistics.median(times),
                       "gb_per_s": nbytes / statistics.median(times) / 1e9})
    if dist.is_main:
        print(json.dumps(report), flush=True)
    dist.close()


def distributed_case(model_dims: dict, *, steps: int, batch: int, max_length: int,
                     repeats: int) -> CaseResult:
    """The local 1-vs-2-rank figures, the all-reduce probe and the N-Mac model at 7B."""
    from zephyr_local.testmodel import create_test_model

    result = CaseResult("distributed")
    if not (Path(sys.executable).parent / "mlx.launch").exists():
        result.skipped = "mlx.launch is not installed"
        return result
    with tempfile.TemporaryDirectory() as tmp:
        model = create_test_model(Path(tmp) / "m", **model_dims)
        tps = {n: training_tps(model, n, steps, batch, max_length) for n in (1, 2)}
    probe = allreduce_probe([model_dims, ZEPHYR_7B], 16, repeats)
    nbytes = lora_gradient_bytes(ZEPHYR_7B, 16)
    modelled = [step_model(n, link, nbytes=nbytes) for link in LINKS for n in (2, 4)]
    result.details = {
        "local_tokens_per_s": {"1 rank": tps[1], "2 ranks": tps[2],
                               "ratio": tps[2] / tps[1] if tps[1] else 0.0,
                               "cpu_cores": os.cpu_count(), "batch_pairs": batch,
                               "max_length": max_length, "model_dims": model_dims},
        "allreduce_2_local_ranks": probe,
        "zephyr_7b_lora16_all_layers_gradient_bytes": nbytes,
        "assumptions": {"links_bytes_per_s_latency_s": LINKS,
                        "mac_7b_lora_tokens_per_s": MAC_7B_TOKENS_PER_S,
                        "step_tokens": STEP_TOKENS_7B},
        "modelled_7b": modelled}
    result.ratios.append(ratio(
        "distributed", "DPO tokens/s, 2 local ranks vs 1 (same cores)", tps[2], tps[1], "1 rank",
        higher_is_better=True, goal=None, unit="tok/s"))
    return result


if __name__ == "__main__":
    _probe_main(json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))


def run_distributed(ctx: Context) -> CaseResult:
    return distributed_case(ctx.settings["dpo_dims"], **ctx.settings["distributed"])
