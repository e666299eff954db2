"""Case 3: tokens/s shown by the Textual chat app (driven headless) against `generate`."""

from __future__ import annotations

import asyncio

from zephyr_local.bench.common import CaseResult, median, ratio


def chat_ui_case(engine, model: str, *, max_tokens: int, repeats: int) -> CaseResult:
    """The same prompt through `generate`'s loop and through the app, on one loaded engine.

    Pairs alternate order; the ratio is the median of per-pair ratios, so drift on a
    busy machine cancels out.
    """
    from zephyr_local.tui import speed

    result = CaseResult("chat UI")
    speed.plain_tps(engine, 8)  # warm-up

    def app_tps() -> float:
        [(stats, _)] = asyncio.run(speed.app_run(model, None, max_tokens, 1, engine))
        return stats.generation_tps

    pairs = []
    for i in range(repeats):
        if i % 2 == 0:
            base = speed.plain_tps(engine, max_tokens)
            pairs.append((base, app_tps()))
        else:
            app = app_tps()
            pairs.append((speed.plain_tps(engine, max_tokens), app))
    result.details = {"max_tokens": max_tokens, "generate_tps": [b for b, _ in pairs],
                      "app_tps": [a for _, a in pairs]}
    r = ratio("chat UI", f"generation tok/s in the app, {max_tokens}-token reply",
              median(a for _, a in pairs), median(b for b, _ in pairs), "generate (same engine)",
              higher_is_better=True, goal=0.95, unit="tok/s")
    r.ratio = round(median(a / b for b, a in pairs), 4)
    r.met = r.ratio >= 0.95
    result.ratios.append(r)
    return result
