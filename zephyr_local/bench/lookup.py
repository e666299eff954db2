"""Prompt-lookup decoding against mlx-lm's stream_generate: echo-heavy and open-ended turns.

Each turn is decoded greedily by zephyr-local (prompt lookup on) and by mlx-lm's
`stream_generate` on the same model and prompt, alternating, in one process; the
token ids must be identical. A cost model explains the ratio: the time of one
forward pass of 1 + d tokens against one of a single token, fitted as
t(d) = t(0) * (1 + slope * d), predicts speed-up = tokens / (passes + slope * drafted).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult, median, ratio
from zephyr_local.engine import Engine
from zephyr_local.sampling import SamplingOptions

CODE = """def mean(values):
    total = 0
    for value in values:
        total += value
    return total / len(values)"""
PASSAGE = ("The lighthouse stood at the end of the harbour wall for two hundred years. Every "
           "night its keeper climbed the ninety steps, trimmed the wick and wound the clockwork "
           "that turned the lens.")
LIST = "1. wash the car 2. water the plants 3. feed the cat 4. walk the dog"
TYPOS = ("Every mornng the keeper wrote the wether in a lether book, and every evenng he "
         "climbed the ninety steps to light the lamp.")

# (kind, name, user message): echo-heavy turns repeat their context, open-ended ones do not.
# Phrased so that SmolLM2-135M-Instruct, the small real model, does echo them.
TURNS = [
    ("echo", "code block with one change",
     f"Repeat exactly, with total renamed to acc:\n\n{CODE}"),
    ("echo", "passage quoted back", f"Repeat exactly: {PASSAGE}"),
    ("echo", "list continued", f"Repeat exactly, then add one more item: {LIST}"),
    ("echo", "typos fixed", f"Fix the spelling and write the corrected text: {TYPOS}"),
    ("open", "open-ended story", "Write a short story about a fox who learns to sail."),
    ("open", "open-ended explanation", "Why do leaves change colour in autumn?"),
]
GOALS = {"echo": 2.0, "open": 0.97}

# Zephyr-7B 4-bit on Apple Silicon: one token reads 4.07 GB of weights; each extra token
# of a verify pass adds 2 x 7.24e9 FLOPs. M1 (68 GB/s, 2.6 TFLOPS): 60 ms + 5.6 ms;
# M2 Max (400 GB/s, 13.6 TFLOPS): 10.2 ms + 1.1 ms. At peak FLOPs, about 0.1 token each.
METAL_7B_SLOPE = 0.1


@contextmanager
def float32_engine(engine: Engine) -> Iterator[Engine]:
    """`engine` itself, or on the CPU for a quantized model a float32 copy of it."""
    from zephyr_local import loading
    from zephyr_local.backend import backend_name

    if not engine.loaded.quantization or backend_name() != "cpu":
        yield engine
        return

    def load():
        from mlx_lm.utils import dequantize_model

        loaded = loading.load(engine.loaded.path, engine.loaded.adapter_path)
        loaded.model = dequantize_model(loaded.model)
        loaded.config = {k: v for k, v in loaded.config.items() if k != "quantization"}
        return loaded

    copy = Engine(engine.worker.call(load), engine.worker)
    try:
        yield copy
    finally:
        copy.loaded = None  # the worker belongs to `engine`


def _ours(engine: Engine, ids: list[int], max_tokens: int) -> dict:
    opts = SamplingOptions(temperature=0.0, max_tokens=max_tokens)
    session = engine.session(context_budget=len(ids) + max_tokens + 8)
    tokens, last = [], None
    for last in session.reply_to_ids(ids, opts):
        tokens += [last.token] if last.token is not None else []
    s = last.stats
    return {"tps": s.generation_tps, "tokens": tokens, "generation_tokens": s.generation_tokens,
            "draft_tokens": s.draft_tokens, "accepted_tokens": s.accepted_tokens}


def _mlx_lm(engine: Engine, ids: list[int], max_tokens: int) -> dict:
    """mlx-lm's stream_generate (greedy), on the same MLX thread, model and prompt."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    eos = set(engine.tokenizer.eos_token_ids)

    def run():
        tokens, last = [], None
        for last in stream_generate(engine.loaded.model, engine.tokenizer, mx.array(ids),
                                    max_tokens=max_tokens):
            if last.token in eos:
                break
            tokens.append(last.token)
        return {"tps": last.generation_tps, "tokens": tokens}

    return engine.worker.call(run)


def pass_cost_slope(engine: Engine, prompt_len: int, draft: int, repeats: int = 7) -> dict:
    """Time a forward pass of 1 and of 1 + draft tokens on a cache of prompt_len tokens."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

    model = engine.loaded.model

    def run():
        cache = make_prompt_cache(model)
        mx.eval(model(mx.array([[7] * prompt_len]), cache=cache))
        times = {0: [], draft: []}
        for _ in range(repeats):
            for d, samples in times.items():
                t0 = time.perf_counter()
                mx.eval(model(mx.array([[7] * (d + 1)]), cache=cache))
                samples.append(time.perf_counter() - t0)
                trim_prompt_cache(cache, d + 1)
        one, many = median(times[0]), median(times[draft])
        return {"one_token_s": one, f"verify_{draft + 1}_tokens_s": many,
                "slope_per_draft_token": max(0.0, (many / one - 1) / draft)}

    return engine.worker.call(run)


def predicted_speedup(generated: int, drafted: int, accepted: int, slope: float) -> float:
    """Tokens per unit of one-token cost: each pass yields one model token plus accepted drafts."""
    passes = max(1, generated - accepted)
    return generated / (passes + slope * drafted)


def lookup_case(engine: Engine, *, max_tokens: int, repeats: int) -> CaseResult:
    """Decode tok/s with prompt lookup vs mlx-lm, echo-heavy and open-ended, greedy."""
    from zephyr_local.backend import default_num_draft_tokens
    from zephyr_local.template import encode

    result = CaseResult("prompt lookup")
    warm = encode(engine.tokenizer, [{"role": "user", "content": "Hello"}])
    _ours(engine, warm, 4), _mlx_lm(engine, warm, 4)
    cost = pass_cost_slope(engine, 256, default_num_draft_tokens())
    result.details["cost_model"] = cost
    for kind, name, text in TURNS:
        ids = encode(engine.tokenizer, [{"role": "user", "content": text}])
        runs = {"ours": [], "mlx-lm": []}
        for i in range(repeats):
            order = (("ours", _ours), ("mlx-lm", _mlx_lm))
            for who, fn in order if i % 2 == 0 else order[::-1]:
                runs[who].append(fn(engine, ids, max_tokens))
        ours, base = runs["ours"], runs["mlx-lm"]
        first = ours[0]
        identical = all(r["tokens"] == base[0]["tokens"] for r in ours + base)
        drafted, accepted = first["draft_tokens"], first["accepted_tokens"]
        result.details[name] = {
            "kind": kind, "prompt_tokens": len(ids), "identical_greedy_tokens": identical,
            "ours_tps": median(r["tps"] for r in ours),
            "mlx_lm_tps": median(r["tps"] for r in base),
            "generation_tokens": first["generation_tokens"], "draft_tokens": drafted,
            "accepted_tokens": accepted,
            "acceptance": round(accepted / drafted, 4) if drafted else None,
            "predicted_speedup_here": round(predicted_speedup(
                first["generation_tokens"], drafted, accepted, cost["slope_per_draft_token"]), 3),
            "predicted_speedup_if_verify_costs_one_token": round(predicted_speedup(
                first["generation_tokens"], drafted, accepted, 0.0), 3),
            "predicted_speedup_metal_7b": round(predicted_speedup(
                first["generation_tokens"], drafted, accepted, METAL_7B_SLOPE), 3),
            "text": engine.tokenizer.decode(first["tokens"]),
        }
        label = "echo-heavy" if kind == "echo" else "ordinary"
        result.ratios.append(ratio(
            "prompt lookup", f"decode tok/s, {label}: {name} (identical: {identical})",
            result.details[name]["ours_tps"], result.details[name]["mlx_lm_tps"],
            "mlx-lm stream_generate", higher_is_better=True, goal=GOALS[kind], unit="tok/s"))
    return result


def run_lookup(ctx: Context) -> CaseResult:
    """On the CPU quantized matmuls of several rows are a slow path, so a verify pass
    would cost many tokens: this case runs a float32 copy of a quantized model."""
    with float32_engine(ctx.engine) as engine:
        result = lookup_case(engine, max_tokens=ctx.settings["lookup_tokens"],
                             repeats=ctx.settings["repeats"])
    result.details["dtype"] = "float32"
    return result
