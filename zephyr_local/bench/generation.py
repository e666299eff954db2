"""Cases 1 and 2: generation against mlx-lm, multi-turn cache reuse against re-prefill."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult, filler_ids, median, random_model, ratio
from zephyr_local.engine import Engine
from zephyr_local.sampling import SamplingOptions


def reply_stats(engine: Engine, ids: list[int], max_tokens: int) -> dict:
    """One greedy reply of zephyr-local's engine to prompt `ids` (a fresh session):
    prompt and generation tok/s, TTFT and tokens generated, from its ReplyStats."""
    opts = SamplingOptions(temperature=0.0, max_tokens=max_tokens)
    last = None
    for event in engine.session(context_budget=len(ids) + max_tokens + 8).reply_to_ids(ids, opts):
        last = event
    s = last.stats
    return {"prompt_tps": s.prompt_tps, "generation_tps": s.generation_tps, "ttft_s": s.ttft_s,
            "generation_tokens": s.generation_tokens}


def decode_tps(engine: Engine, *, prompt_length: int = 32, max_tokens: int, repeats: int) -> float:
    """Our generation tok/s on a short prompt, best of `repeats` (for the hardware case
    when the generation case did not run)."""
    ids = filler_ids(engine.tokenizer, prompt_length)
    runs = max(repeats, 1)
    return max(reply_stats(engine, ids, max_tokens)["generation_tps"] for _ in range(runs))


def _mlx_lm(engine: Engine, ids: list[int], max_tokens: int) -> dict:
    """mlx-lm's stream_generate, on the same MLX thread, model and prompt."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    def run():
        t0, ttft, last = time.perf_counter(), None, None
        for event in stream_generate(engine.loaded.model, engine.tokenizer, mx.array(ids),
                                     max_tokens=max_tokens):
            last, ttft = event, ttft or time.perf_counter() - t0
        return {"prompt_tps": last.prompt_tps, "generation_tps": last.generation_tps,
                "ttft_s": ttft, "generation_tokens": last.generation_tokens}

    return engine.worker.call(run)


def generation_case(engine: Engine, *, prompt_lengths, max_tokens: int, repeats: int) -> CaseResult:
    """Case 1: prompt tok/s, generation tok/s and TTFT, ours vs mlx-lm, alternating runs."""
    result = CaseResult("generation")
    reply_stats(engine, filler_ids(engine.tokenizer, 16), 4)  # warm-up both paths
    _mlx_lm(engine, filler_ids(engine.tokenizer, 16), 4)
    for n in prompt_lengths:
        ids = filler_ids(engine.tokenizer, n)
        runs = {"zephyr-local": [], "mlx-lm": []}
        for i in range(repeats):
            order = (("zephyr-local", reply_stats), ("mlx-lm", _mlx_lm))
            for name, fn in order if i % 2 == 0 else order[::-1]:
                runs[name].append(fn(engine, ids, max_tokens))
        meds = {name: {k: median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
        result.details[f"prompt_{n}"] = meds
        ours, base = meds["zephyr-local"], meds["mlx-lm"]
        tag = f"{n}-token prompt"
        result.ratios += [
            ratio("generation", f"prompt tok/s, {tag}", ours["prompt_tps"], base["prompt_tps"],
                  "mlx-lm stream_generate", higher_is_better=True, goal=0.98, unit="tok/s"),
            ratio("generation", f"generation tok/s, {tag}", ours["generation_tps"],
                  base["generation_tps"], "mlx-lm stream_generate", higher_is_better=True,
                  goal=0.98, unit="tok/s"),
            ratio("generation", f"time to first token, {tag}", ours["ttft_s"], base["ttft_s"],
                  "mlx-lm stream_generate", higher_is_better=False, goal=0.98, unit="s"),
        ]
    return result


def run_generation(ctx: Context) -> CaseResult:
    s = ctx.settings
    result = generation_case(ctx.engine, prompt_lengths=s["prompt_lengths"],
                             max_tokens=s["max_tokens"], repeats=s["repeats"])
    ctx.decode_tok_s = result.details[f"prompt_{s['prompt_lengths'][0]}"]["zephyr-local"][
        "generation_tps"]
    return result


def _conversation_ttfts(engine: Engine, turns: int, user_text: str, opts,
                        reuse: bool) -> list[dict]:
    """Play a growing conversation; per turn, TTFT with one kept session or a fresh one."""
    session = engine.session()
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    out = []
    for _ in range(turns):
        messages.append({"role": "user", "content": user_text})
        # The naive design: a fresh cache every turn, the whole history prefilled again.
        records = list((session if reuse else engine.session()).reply(messages, opts))
        s = records[-1].stats
        out.append({"ttft_s": s.ttft_s, "prefilled": s.prefilled_tokens,
                    "prompt_tokens": s.prompt_tokens})
        messages.append({"role": "assistant", "content": "".join(r.text for r in records)})
    return out


def multiturn_case(engine: Engine, *, turns: int, user_tokens: int, reply_tokens: int,
                   repeats: int, label: str | None = None) -> CaseResult:
    """Case 2: TTFT of each turn of a growing conversation, cache reuse vs full re-prefill.

    The conversation is played `repeats` times each way, alternating; per-turn medians.
    `label` names the model in each metric when it is not the run's model.
    """
    result = CaseResult("multi-turn")
    opts = SamplingOptions(temperature=0.0, max_tokens=reply_tokens)
    words = "tell me more about the history of sailing ships and their crews " * 40
    ids = engine.tokenizer.encode(words, add_special_tokens=False)[:user_tokens]
    user_text = engine.tokenizer.decode(ids)
    plays = {True: [], False: []}
    for i in range(repeats):
        for reuse in ((True, False) if i % 2 == 0 else (False, True)):
            plays[reuse].append(_conversation_ttfts(engine, turns, user_text, opts, reuse))

    def per_turn(runs):
        return [{**runs[0][t], "ttft_s": median(r[t]["ttft_s"] for r in runs)}
                for t in range(turns)]

    reuse, rebuild = per_turn(plays[True]), per_turn(plays[False])
    result.details = {"cache_reuse": reuse, "re_prefill": rebuild, "repeats": repeats,
                      "model": label or Path(engine.loaded.path).name}
    on = f", {label}" if label else ""
    result.ratios += [
        ratio("multi-turn", f"turn {turns} TTFT vs turn 1 TTFT (goal: within 1.5x){on}",
              reuse[-1]["ttft_s"], reuse[0]["ttft_s"], "turn 1", higher_is_better=False,
              goal=round(1 / 1.5, 3), unit="s"),
        ratio("multi-turn", f"turn {turns} TTFT, cache reuse vs re-prefill{on}",
              reuse[-1]["ttft_s"], rebuild[-1]["ttft_s"], "re-prefill every turn",
              higher_is_better=False, goal=None, unit="s"),
    ]
    return result


def run_multiturn(ctx: Context) -> CaseResult:
    """On the run's model, or (`multiturn_dims`, full mode) on a random model whose
    weights, not attention, dominate prefill, as in Zephyr-7B; its metrics say which."""
    s = ctx.settings
    kw = {"turns": s["turns"], "user_tokens": s["user_tokens"],
          "reply_tokens": s["reply_tokens"], "repeats": s["repeats"]}
    if not s["multiturn_dims"]:
        return multiturn_case(ctx.engine, **kw)
    with tempfile.TemporaryDirectory() as tmp:
        path, label = random_model(Path(tmp) / "m", s["multiturn_dims"])
        big = Engine.load(str(path))
        try:
            result = multiturn_case(big, **kw, label=label)
        finally:
            big.close()
    result.details["model_dims"] = s["multiturn_dims"]
    return result
