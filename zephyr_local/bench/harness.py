"""Drive the benchmark cases and write `<date>-<machine>` JSON, Markdown and PNG results.

The cases, their modes and settings are registered in `bench/cases.py`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zephyr_local.atomic import write_text
from zephyr_local.bench.cases import CASES, MODES, Context
from zephyr_local.bench.common import CaseResult


@dataclass
class BenchRun:
    """One run of the harness: where, how, and what came out."""

    mode: str
    model: str
    cases: list[str]
    machine: dict = field(default_factory=dict)
    results: list[CaseResult] = field(default_factory=list)


def machine_record() -> dict:
    from zephyr_local import backend

    return backend.describe()


def cache_dir() -> Path:
    """Where benchmark inputs made once are kept (git-ignored)."""
    from zephyr_local.store import home_dir

    path = home_dir() / "benchmarks" / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(mode: str = "quick", model: str | None = None, cases: list[str] | None = None,
        progress: Callable[[str], None] = lambda msg: None,
        on_case: Callable[[int, int, str], None] | None = None) -> BenchRun:
    """Run the cases (all by default) on `model` (default: a fresh test model).

    `on_case(done, total, name)` is called before each case and once at the end.
    """
    from zephyr_local.engine import Engine
    from zephyr_local.testmodel import create_test_model

    cases = cases or list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        from zephyr_local.errors import ZephyrError

        raise ZephyrError(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    with tempfile.TemporaryDirectory() as tmp:
        given = model is not None
        if not given:
            progress("creating the test model")
            model = str(create_test_model(Path(tmp) / "zephyr-test"))
        engine = Engine.load(model)
        bench = BenchRun(mode, str(engine.loaded.path), cases, machine_record())
        ctx = Context(engine, model, mode, MODES[mode], given, cache_dir)
        try:
            for i, name in enumerate(cases):
                progress(f"case {name}")
                if on_case:
                    on_case(i, len(cases), name)
                bench.results.append(CASES[name].run(ctx))
            if on_case:
                on_case(len(cases), len(cases), "done")
        finally:
            engine.close()
    return bench


def machine_slug(machine: dict) -> str:
    name = f"{machine.get('device') or machine.get('processor')}-{machine['backend']}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def write(bench: BenchRun, out_dir: Path) -> dict[str, Path]:
    """Write the JSON record, the Markdown table and the PNG chart; return their paths."""
    from zephyr_local.bench import report

    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    base = out_dir / f"{stamp}-{machine_slug(bench.machine)}"
    record = {"date": dt.datetime.now().isoformat(timespec="seconds"), "mode": bench.mode,
              "model": bench.model, "machine": bench.machine,
              "cases": [c.as_dict() for c in bench.results]}
    paths = {"json": base.with_suffix(".json"), "md": base.with_suffix(".md"),
             "png": base.with_suffix(".png")}
    write_text(paths["json"], json.dumps(record, indent=2))
    write_text(paths["md"], report.markdown(record))
    report.chart(record, paths["png"])
    return paths
