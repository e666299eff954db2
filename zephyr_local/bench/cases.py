"""The registry of benchmark cases: each case's name, the modes it runs in, its function.

`CASES` lists the cases in the order `zephyr-local bench` runs them (generation before
hardware, which reuses its decode reading; quantize before hardware, which decodes the
model quantize wrote); `MODES` holds the settings of each mode. A case is a function
`run_<case>(ctx: Context) -> CaseResult` in a module of `bench/`; it reads its settings
from `ctx.settings` and the model from `ctx.engine` or `ctx.model`.

To add a case: write its function and add one `Case(...)` line to `CASES` (and its
settings, if any, to both `MODES`). `bench --case NAME`, `bench --help` and a full run
pick it up. This module imports nothing heavier than `bench.common`, so the CLI lists
the cases without loading MLX; a case's module is imported when the case runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zephyr_local.bench.common import CaseResult

# Random Zephyr-architecture models for the DPO case: weights must dominate memory.
LARGE_DIMS = {"hidden_size": 1024, "num_hidden_layers": 8, "intermediate_size": 2816,
              "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 128}

# Settings per mode: quick finishes in under 2 minutes on a 2-core CPU with the test model.
MODES = {
    "quick": {"prompt_lengths": (32, 512, 2048), "max_tokens": 32, "repeats": 3, "turns": 10,
              "user_tokens": 48, "reply_tokens": 16, "bandwidth_mb": 256, "blas_repeats": 1,
              "dpo_dims": LARGE_DIMS, "dpo_steps": 2, "dpo_max_length": 128,
              "dpo_batch_pairs": 1, "chat_tokens": 256,
              "quantize_7b": False, "multiturn_dims": None, "dtype_tokens": 256,
              "dtype_budget_s": 2.0, "dtype_probe_s": 1.0, "docs_bytes": 1 << 20,
              "distributed": None, "lookup_tokens": 64},
    "full": {"prompt_lengths": (32, 512, 2048), "max_tokens": 128, "repeats": 5, "turns": 10,
             "user_tokens": 96, "reply_tokens": 64, "bandwidth_mb": 1024, "blas_repeats": 3,
             "dpo_dims": LARGE_DIMS, "dpo_steps": 3, "dpo_max_length": 256,
             "dpo_batch_pairs": 2, "chat_tokens": 512,
             "quantize_7b": True, "multiturn_dims": LARGE_DIMS, "dtype_tokens": 512,
             "dtype_budget_s": 5.0, "dtype_probe_s": 2.0, "docs_bytes": 1 << 20,
             "distributed": {"steps": 2, "batch": 2, "max_length": 128, "repeats": 3},
             "lookup_tokens": 160},
}


@dataclass
class Context:
    """What every case gets: the run's loaded engine and model, and the mode's settings."""

    engine: Any  # zephyr_local.engine.Engine, loaded once for the run
    model: str  # its path
    mode: str
    settings: dict
    model_given: bool  # -m MODEL, not the test model made for the run
    cache_dir: Callable[[], Path]  # where inputs made once are kept
    # Our decode tok/s on the shortest prompt, set by the generation case when it runs
    # (the hardware case measures it itself otherwise).
    decode_tok_s: float | None = None


@dataclass(frozen=True)
class Case:
    """One benchmark case: `bench --case NAME` runs `function(ctx)` in `modes`."""

    name: str  # what --case takes
    title: str  # the name of its CaseResult in the results
    function: str  # "module:function", imported when the case runs
    modes: tuple[str, ...] = ("quick", "full")
    skipped: str = ""  # the reason recorded in the other modes

    def load(self) -> Callable[[Context], CaseResult]:
        module, _, attr = self.function.partition(":")
        return getattr(importlib.import_module(module), attr)

    def run(self, ctx: Context) -> CaseResult:
        if ctx.mode not in self.modes:
            return CaseResult(self.title, skipped=self.skipped)
        return self.load()(ctx)


_B = "zephyr_local.bench."
CASES = {c.name: c for c in [
    Case("generation", "generation", _B + "generation:run_generation"),
    Case("multiturn", "multi-turn", _B + "generation:run_multiturn"),
    Case("chat-ui", "chat UI", _B + "chat_ui:run_chat_ui"),
    Case("quantize", "quantize 7B", _B + "quantize7b:run_quantize", ("full",),
         "full mode only (writes a 14.5 GB checkpoint)"),
    Case("hardware", "hardware limit", _B + "hardware:run_hardware"),
    Case("blas", "linux-cpu-blas", _B + "blas:run_blas"),
    Case("dpo", "dpo", _B + "dpo:run_dpo"),
    Case("dtype", "dtype", _B + "dtype:run_dtype"),
    Case("retrieval", "retrieval", _B + "retrieval:run_retrieval"),
    Case("distributed", "distributed", _B + "distributed:run_distributed", ("full",),
         "full mode only (three mlx.launch jobs)"),
    Case("lookup", "prompt lookup", _B + "lookup:run_lookup"),
]}
