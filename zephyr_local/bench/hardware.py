"""Case 6: the machine's memory read bandwidth and the decode ceiling it implies."""

from __future__ import annotations

import time

from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Best-of-N memory read bandwidth of the device that runs the model.

    On a GPU (Metal, CUDA) an MLX reduction over a buffer; on the CPU, numpy sums on
    every core at once, because MLX's CPU reduction is single-threaded and reads
    at a fraction of what the memory delivers.
    """
    from zephyr_local.backend import backend_name

    if backend_name() == "cpu":
        return _cpu_read_bandwidth(megabytes, repeats)
    import mlx.core as mx

    a = mx.random.uniform(shape=(megabytes * 2**20 // 4,))
    mx.eval(a)
    return a.nbytes / _best_time(lambda: mx.eval(mx.sum(a)), repeats) / 1e9


def _cpu_read_bandwidth(megabytes: int, repeats: int) -> float:
    import os
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    a = np.random.default_rng(0).random(megabytes * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(a, os.cpu_count() or 1)
    with ThreadPoolExecutor(len(parts)) as pool:  # numpy releases the GIL in sum
        return a.nbytes / _best_time(lambda: list(pool.map(np.sum, parts)), repeats) / 1e9


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: everything but all-but-one embedding row."""
    from mlx.utils import tree_flatten

    total, embed = 0, 0
    for name, p in tree_flatten(model.parameters()):
        total += p.nbytes
        if "embed_tokens" in name:
            embed += p.nbytes
    vocab = model.args.vocab_size
    return total - embed + embed // vocab


def decode_7b(path, max_tokens: int = 32) -> dict:
    """Decode tok/s of the 7B-shaped 4-bit model (made by the quantize case) vs its ceiling."""
    from zephyr_local.backend import backend_name
    from zephyr_local.bench.common import filler_ids
    from zephyr_local.bench.generation import reply_stats
    from zephyr_local.engine import Engine

    if backend_name() == "cpu":
        return {"skipped": "CPU backend: not measured (one thread reads the 4-bit 7B's 4.5 GB "
                           "of weights per token: seconds per token); measure on Metal or CUDA"}
    if not (path / "config.json").exists():
        return {"skipped": "no 7B 4-bit model: run the quantize case first (full mode)"}
    engine = Engine.load(str(path))
    try:
        tps = reply_stats(engine, filler_ids(engine.tokenizer, 32), max_tokens)["generation_tps"]
        per_token = weight_bytes_per_token(engine.loaded.model)
        bw = engine.worker.call(read_bandwidth_gbs, 1024)
    finally:
        engine.close()
    ceiling = bw * 1e9 / per_token
    return {"decode_tok_s": tps, "weight_bytes_per_token": per_token, "ceiling_tok_s": ceiling,
            "fraction_of_ceiling": tps / ceiling}


def hardware_case(engine, decode_tps: float, *, megabytes: int) -> CaseResult:
    """Decode tok/s as a fraction of bandwidth / bytes-per-token (no goal: a reading).

    A model whose weights fit in the CPU caches (the test model) can beat this ceiling;
    it binds for models of gigabytes, like Zephyr-7B.
    """
    result = CaseResult("hardware limit")
    bw = engine.worker.call(read_bandwidth_gbs, megabytes)
    per_token = weight_bytes_per_token(engine.loaded.model)
    ceiling = bw * 1e9 / per_token
    result.details = {"read_bandwidth_gb_s": bw, "weight_bytes_per_token": per_token,
                      "ceiling_tok_s": ceiling, "decode_tok_s": decode_tps,
                      "fraction_of_ceiling": decode_tps / ceiling if ceiling else 0.0}
    return result


def run_hardware(ctx: Context) -> CaseResult:
    """With the generation case's decode reading; alone (`--case hardware`) it measures
    decode itself rather than report 0 tok/s."""
    from zephyr_local.bench.generation import decode_tps

    s = ctx.settings
    tps = ctx.decode_tok_s or decode_tps(ctx.engine, max_tokens=s["max_tokens"],
                                         repeats=s["repeats"])
    result = hardware_case(ctx.engine, tps, megabytes=s["bandwidth_mb"])
    if s["quantize_7b"]:
        from zephyr_local.bench.quantize7b import quantized_path

        result.details["zephyr_7b_4bit"] = decode_7b(quantized_path(ctx.cache_dir()))
    return result
