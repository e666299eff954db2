"""Shared pieces of benchmark cases: the result record, prompts, timing helpers."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Ratio:
    """One headline comparison: ours / baseline (or baseline / ours where lower is better)."""

    case: str
    metric: str
    ours: float
    baseline: float
    baseline_name: str
    ratio: float  # > 1 means ours is better, for every metric
    goal: str  # e.g. ">= 0.98"
    met: bool | None = None  # None when there is no goal
    unit: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CaseResult:
    """What a case measured: headline ratios plus the raw numbers behind them."""

    name: str
    ratios: list[Ratio] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    skipped: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "skipped": self.skipped, "details": self.details,
                "ratios": [r.as_dict() for r in self.ratios]}


def ratio(case: str, metric: str, ours: float, base: float, base_name: str, *,
          higher_is_better: bool, goal: float | None, unit: str = "") -> Ratio:
    """A Ratio oriented so that > 1 favours zephyr-local; `goal` applies to that ratio."""
    value = (ours / base if higher_is_better else base / ours) if ours and base else 0.0
    return Ratio(case, metric, ours, base, base_name, round(value, 4),
                 f">= {goal}" if goal is not None else "-",
                 None if goal is None else value >= goal, unit)


def median(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else 0.0


def filler_ids(tokenizer, n: int) -> list[int]:
    """A prompt of about n token ids: BOS, a user turn of English text, the assistant header."""
    words = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
             "judge boxing matches in the park near old river banks and tall green trees ")
    head = tokenizer.encode("<|user|>\n")  # BOS added
    tail = [2] + tokenizer.encode("\n<|assistant|>\n", add_special_tokens=False)
    body = tokenizer.encode(words * (n // 8 + 8), add_special_tokens=False)
    return head + body[: max(0, n - len(head) - len(tail))] + tail


def random_model(path: Path, dims: dict) -> tuple[Path, str]:
    """A random Zephyr-architecture model of `dims` (testmodel.create_test_model) at
    `path`, and the label that names it in a case's metrics."""
    from zephyr_local.testmodel import create_test_model

    path = create_test_model(path, **dims)
    config = json.loads((path / "config.json").read_text())
    return path, f"random {config['num_hidden_layers']}-layer {config['hidden_size']}-wide model"
