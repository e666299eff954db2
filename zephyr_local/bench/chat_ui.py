"""Case 3: tokens/s shown by the Textual chat app (driven headless) against `generate`.

The app runs headless under Textual's Pilot (it renders every update, it just
does not draw to a terminal). The harness case pairs, on one loaded engine,
`generate`'s own loop (stream and print every token) with the app, back to back.
All numbers are the engine's own ReplyStats.generation_tps.

Run as a script, it also times `generate` as the real command in a subprocess
(separate processes on a busy machine vary a lot, hence the paired runs too) and
TTFT by turn:

    python -m zephyr_local.bench.chat_ui -m zephyr-test --max-tokens 512 --turns 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult, median, ratio

PROMPT = "Write a long story about a lighthouse keeper."


def generate_tps(model: str, models_dir: str | None, max_tokens: int) -> float:
    cmd = [sys.executable, "-m", "zephyr_local.cli"] + (
        ["--models-dir", models_dir] if models_dir else []) + [
        "generate", "-m", model, "--temp", "0", "--max-tokens", str(max_tokens),
        "-p", PROMPT, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["generation_tps"]


def plain_tps(engine, max_tokens: int) -> float:
    """`generate`'s loop in this process: stream the reply, print each piece."""
    from zephyr_local.sampling import SamplingOptions

    options = SamplingOptions(temperature=0, max_tokens=max_tokens)
    with open(os.devnull, "w") as out:
        for last in engine.session().reply([{"role": "user", "content": PROMPT}], options):
            out.write(last.text)
            out.flush()
    return last.stats.generation_tps


async def app_run(model: str, models_dir: str | None, max_tokens: int, turns: int,
                  engine=None) -> list:
    """Send `turns` messages in one conversation; return (ReplyStats, UI CPU s) per reply."""
    from zephyr_local.sampling import SamplingOptions
    from zephyr_local.tui.app import ChatApp
    from zephyr_local.tui.config import ChatConfig
    from zephyr_local.tui.widgets.prompt import PromptInput

    db = Path(tempfile.mkdtemp()) / "history.sqlite"
    config = ChatConfig(model=model, models_dir=models_dir, history_path=db,
                        options=SamplingOptions(temperature=0, max_tokens=max_tokens))
    app = ChatApp(config, engine=engine)
    stats = []
    async with app.run_test(size=(120, 40)) as pilot:
        while app.session is None:
            if app.load_error:
                raise SystemExit(str(app.load_error))
            await pilot.pause(0.05)
        for turn in range(turns):
            app.query_one(PromptInput).text = PROMPT if turn == 0 else f"Go on, part {turn + 1}."
            await pilot.press("enter")
            ui_cpu = time.thread_time()  # the UI thread's CPU time during the reply
            while app.generating:
                await asyncio.sleep(0.1)  # coarse polling: keep the harness itself cheap
            ui_cpu = time.thread_time() - ui_cpu
            stats.append((app.last_final.stats, ui_cpu))
    return stats


def chat_ui_case(engine, model: str, *, max_tokens: int, repeats: int) -> CaseResult:
    """The same prompt through `generate`'s loop and through the app, on one loaded engine.

    Pairs alternate order; the ratio is the median of per-pair ratios, so drift on a
    busy machine cancels out.
    """
    result = CaseResult("chat UI")
    plain_tps(engine, 8)  # warm-up

    def app_tps() -> float:
        [(stats, _)] = asyncio.run(app_run(model, None, max_tokens, 1, engine))
        return stats.generation_tps

    pairs = []
    for i in range(repeats):
        if i % 2 == 0:
            base = plain_tps(engine, max_tokens)
            pairs.append((base, app_tps()))
        else:
            app = app_tps()
            pairs.append((plain_tps(engine, max_tokens), app))
    result.details = {"max_tokens": max_tokens, "generate_tps": [b for b, _ in pairs],
                      "app_tps": [a for _, a in pairs]}
    r = ratio("chat UI", f"generation tok/s in the app, {max_tokens}-token reply",
              median(a for _, a in pairs), median(b for b, _ in pairs), "generate (same engine)",
              higher_is_better=True, goal=0.95, unit="tok/s")
    r.ratio = round(median(a / b for b, a in pairs), 4)
    r.met = r.ratio >= 0.95
    result.ratios.append(r)
    return result


def run_chat_ui(ctx: Context) -> CaseResult:
    return chat_ui_case(ctx.engine, ctx.model, max_tokens=ctx.settings["chat_tokens"],
                        repeats=ctx.settings["repeats"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="zephyr-test")
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from zephyr_local.engine import Engine

    engine = Engine.load(args.model, None, args.models_dir)
    plain_tps(engine, 16)  # warm-up
    cli, app, ui, paired = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all
        cli.append(generate_tps(args.model, args.models_dir, args.max_tokens))
        [(stats, ui_cpu)] = asyncio.run(app_run(args.model, args.models_dir, args.max_tokens, 1))
        app.append(stats.generation_tps)
        ui.append(ui_cpu / (stats.ttft_s + stats.generation_tokens / stats.generation_tps))
        base = plain_tps(engine, args.max_tokens)
        [(stats, _)] = asyncio.run(app_run(args.model, args.models_dir, args.max_tokens, 1,
                                           engine))
        paired.append((base, stats.generation_tps))
    turns = asyncio.run(app_run(args.model, args.models_dir, min(args.max_tokens, 64), args.turns,
                                engine))
    engine.close()
    med = statistics.median
    record = {
        "model": args.model, "max_tokens": args.max_tokens,
        "generate_tps": cli, "app_tps": app, "ui_thread_cpu_share": ui,
        "generate_tps_median": med(cli), "app_tps_median": med(app),
        "app_vs_generate": med(app) / med(cli),
        "paired_generate_loop_tps": [p[0] for p in paired],
        "paired_app_tps": [p[1] for p in paired],
        "paired_ratio_median": med(a / b for b, a in paired),
        "turns": [{"turn": i + 1, "ttft_s": round(s.ttft_s, 4), "prompt_tokens": s.prompt_tokens,
                   "prefilled_tokens": s.prefilled_tokens} for i, (s, _) in enumerate(turns)],
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
