"""Decode speed by dtype: the model quantized at 4 and 8 bits with float32, float16 and
bfloat16 scales (and activations), timed side by side.

This is the measurement behind backend.DEFAULT_DTYPES. Each variant is made once by
zephyr-local's own quantize into the benchmark cache (a quantized source is first
dequantized to float32, once); then all are loaded on one MLX thread and timed in
alternating order with greedy decode of the same prompt. mlx-lm's generate_step is
timed directly so that every variant decodes the same number of tokens (no EOS stop).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult, median, ratio

BITS = (4, 8)
# A prompt of a token or two: on the slow dtypes each prompt token costs as much as a
# decoded one (MLX's CPU quantized matmul handles the rows of a batch one by one).
PROMPT = "Once"
MIN_TOKENS = 2


def source_key(source: Path) -> str:
    """`<name>-<hash>`: changes when the source's path or weight files change."""
    h = hashlib.sha256(str(source.resolve()).encode())
    for f in sorted(source.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{source.name}-{h.hexdigest()[:10]}"


def group_size_for(config: dict) -> int:
    """64 (the default) when it divides every layer's input dimension, else 32."""
    from zephyr_local.kv_layout import head_dim

    dims = (config["hidden_size"], config["intermediate_size"],
            config["num_attention_heads"] * head_dim(config))
    return 64 if all(d % 64 == 0 for d in dims) else 32


def float_source(source: Path, cache: Path) -> Path:
    """`source` itself when it is a float model; else a float32 copy, made once.

    quantize refuses quantized sources, and requantizing from the dequantized
    weights keeps every variant on the same numbers.
    """
    config = json.loads((source / "config.json").read_text())
    if not (config.get("quantization") or config.get("quantization_config")):
        return source
    out = cache / "float32"
    if (out / "config.json").exists():
        return out
    from mlx_lm.utils import dequantize_model, save

    from zephyr_local import loading
    from zephyr_local.atomic import atomic_dir
    from zephyr_local.quantize import cast_floating

    loaded = loading.load(source)
    model, config = dequantize_model(loaded.model), dict(loaded.config)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    cast_floating(model, "float32")
    config["torch_dtype"] = "float32"
    with atomic_dir(out) as tmp:
        save(tmp, str(source), model, loaded.tokenizer, config, donate_model=False)
    return out


def variants(source: Path, cache_root: Path, progress=lambda msg: None) -> dict:
    """{(bits, dtype): path} of the quantized variants, made on first use."""
    from zephyr_local import quantize as q
    from zephyr_local.backend import COMPUTE_DTYPES

    cache = cache_root / "dtype" / source_key(source)
    base = float_source(source, cache)
    group = group_size_for(json.loads((base / "config.json").read_text()))
    out = {}
    for bits in BITS:
        for dtype in COMPUTE_DTYPES:
            path = cache / f"{bits}bit-g{group}-{dtype}"
            if not (path / "config.json").exists():
                progress(f"quantizing {source.name} to {bits} bits, {dtype} (once)")
                q.quantize(base, path, q.QuantizeOptions(bits=bits, group_size=group,
                                                         dtype=dtype, evaluate=False))
            out[(bits, dtype)] = path
    return out


def decode_tps(model, ids: list[int], tokens: int) -> float:
    """Greedy decode tok/s over `tokens` steps after the first (prefill excluded)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    steps = generate_step(mx.array(ids), model, max_tokens=tokens + 1)
    next(steps)  # prefill and the first token
    t0 = time.perf_counter()
    n = sum(1 for _ in steps)
    return n / (time.perf_counter() - t0)


def _thread_ticks() -> dict[str, int] | None:
    """CPU ticks so far of each thread of this process (Linux), else None."""
    import os

    try:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            out[tid] = int(fields[11]) + int(fields[12])  # utime + stime
        return out
    except OSError:
        return None


def matmul_probe(kind: str, seconds: float = 1.0, k: int = 4096) -> dict:
    """ms per (1 x k) @ (k x k) product and how many threads did the work.

    `kind` is a dtype (a 4-bit, group-64 quantized matmul with scales in it) or "dense"
    (a float32 matmul, which goes to BLAS on the CPU). A thread counts as busy when it
    used at least a quarter of the busiest one's CPU time.
    """
    import mlx.core as mx

    w = mx.random.normal((k, k), key=mx.random.key(0))
    x = mx.random.normal((1, k), key=mx.random.key(1))
    if kind == "dense":
        args = (x, w.T)
        op = mx.matmul
    else:
        dt = getattr(mx, kind)
        args = (x.astype(dt), *mx.quantize(w.astype(dt), 64, 4))

        def op(x, qw, scales, biases):
            return mx.quantized_matmul(x, qw, scales, biases, True, 64, 4)

    mx.eval(args)

    def fn():
        return op(*args)

    mx.eval(fn())
    before, t0, n = _thread_ticks(), time.perf_counter(), 0
    while n < 2 or time.perf_counter() - t0 < seconds:
        mx.eval(fn())
        n += 1
    ms = 1000 * (time.perf_counter() - t0) / n
    after = _thread_ticks()
    busy = None
    if before is not None and after is not None:
        used = [after[t] - before.get(t, 0) for t in after]
        busy = sum(u >= max(used) / 4 for u in used) if max(used) > 0 else None
    return {"ms": ms, "busy_threads": busy}


def _timed_rounds(worker, models: dict, ids: list[int], *, max_tokens: int, budget_s: float,
                  repeats: int) -> dict:
    """{variant: [tok/s per round]}. Each run decodes for about budget_s (at most
    max_tokens, at least MIN_TOKENS), so that every variant is exposed alike to other
    work on the machine; the 10-40x gaps this measures need no more tokens."""
    tokens = {}
    for key, model in models.items():
        warm = worker.call(decode_tps, model, ids, MIN_TOKENS)  # and first-call allocations
        tokens[key] = max(MIN_TOKENS, min(max_tokens, int(warm * budget_s)))
    runs: dict = {key: [] for key in models}
    order = list(models)
    for i in range(repeats):
        for key in order if i % 2 == 0 else order[::-1]:
            runs[key].append(worker.call(decode_tps, models[key], ids, tokens[key]))
    return {"tok_s": runs, "tokens": tokens}


def dtype_case(model: str, cache_root: Path, *, max_tokens: int, budget_s: float, repeats: int,
               probe_s: float = 1.0, progress=lambda msg: None) -> CaseResult:
    """Decode tok/s of each (bits, dtype) variant; ratios of the backend's default dtype
    against each other dtype (goal: the default is the fastest). The details add
    matmul_probe for each dtype ("dense": float32 through BLAS)."""
    from mlx_lm.utils import load_model

    from zephyr_local import loading
    from zephyr_local.backend import COMPUTE_DTYPES, backend_name, default_dtype
    from zephyr_local.worker import MLXThread

    result = CaseResult("dtype")
    paths = variants(Path(model), cache_root, progress)
    worker = MLXThread("zephyr-bench-dtype")
    try:
        # The variants share the tokenizer: load it once, and each model's weights.
        models = {key: worker.call(lambda p: load_model(p)[0], path)
                  for key, path in paths.items()}
        ids = loading.load_tokenizer(Path(model)).encode(PROMPT)
        timed = _timed_rounds(worker, models, ids, max_tokens=max_tokens, budget_s=budget_s,
                              repeats=repeats)
        # Why: one quantized matmul per dtype, and the threads it runs on (vs BLAS).
        probes = {kind: worker.call(matmul_probe, kind, probe_s)
                  for kind in (*COMPUTE_DTYPES, "dense")} if probe_s > 0 else {}
    finally:
        models = None
        worker.close()
    tps = {key: median(v) for key, v in timed["tok_s"].items()}
    default = default_dtype()
    result.details = {
        "model": str(model), "backend": backend_name(), "default_dtype": default,
        "prompt_tokens": len(ids), "repeats": repeats, "matmul_4096_4bit": probes,
        "variants": [{"bits": b, "dtype": d, "path": str(paths[(b, d)]),
                      "decode_tok_s": tps[(b, d)], "tokens": timed["tokens"][(b, d)],
                      "vs_float32": tps[(b, d)] / tps[(b, "float32")]}
                     for b, d in paths]}
    name = Path(model).name
    for bits in BITS:
        for other in (d for d in COMPUTE_DTYPES if d != default):
            result.ratios.append(ratio(
                "dtype", f"decode tok/s, {name} {bits}-bit, {default} (default) vs {other}",
                tps[(bits, default)], tps[(bits, other)], f"{other} scales",
                higher_is_better=True, goal=1.0, unit="tok/s"))
    return result


def markdown_table(details: dict) -> str:
    """The README's table: tok/s per bits and dtype, and the ratio to float32."""
    from zephyr_local.backend import COMPUTE_DTYPES

    rows = {(v["bits"], v["dtype"]): v for v in details["variants"]}
    head = " | ".join(f"{d} tok/s (x float32)" for d in COMPUTE_DTYPES)
    lines = [f"| bits | {head} |", "|---" * (1 + len(COMPUTE_DTYPES)) + "|"]
    for bits in sorted({b for b, _ in rows}):
        cells = " | ".join(f"{rows[(bits, d)]['decode_tok_s']:.3g} "
                           f"({rows[(bits, d)]['vs_float32']:.3f})" for d in COMPUTE_DTYPES)
        lines.append(f"| {bits} | {cells} |")
    return "\n".join(lines)


def run_dtype(ctx: Context) -> CaseResult:
    s = ctx.settings
    return dtype_case(ctx.model, ctx.cache_dir(), max_tokens=s["dtype_tokens"],
                      budget_s=s["dtype_budget_s"], repeats=s["repeats"],
                      probe_s=s["dtype_probe_s"])
