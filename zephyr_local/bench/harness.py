"""Drive the benchmark cases and write `<date>-<machine>` JSON, Markdown and PNG results."""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from zephyr_local.atomic import write_text
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
class BenchRun:
    """One run of the harness: where, how, and what came out."""

    mode: str
    model: str
    cases: list[str]
    machine: dict = field(default_factory=dict)
    results: list[CaseResult] = field(default_factory=list)
    model_given: bool = False  # -m MODEL, not the test model made for the run


def machine_record() -> dict:
    from zephyr_local import backend

    return backend.describe()


def _case_fns() -> dict[str, Callable]:
    from zephyr_local.bench import blas, generation, hardware

    def gen(engine, model, s, run):
        return generation.generation_case(engine, prompt_lengths=s["prompt_lengths"],
                                          max_tokens=s["max_tokens"], repeats=s["repeats"])

    def multi(engine, model, s, run):
        kw = {"turns": s["turns"], "user_tokens": s["user_tokens"],
              "reply_tokens": s["reply_tokens"], "repeats": s["repeats"]}
        if not s["multiturn_dims"]:
            return generation.multiturn_case(engine, **kw)
        # A model whose weights, not attention, dominate prefill, as in Zephyr-7B.
        from zephyr_local.engine import Engine
        from zephyr_local.testmodel import create_test_model

        with tempfile.TemporaryDirectory() as tmp:
            big = Engine.load(str(create_test_model(Path(tmp) / "m", **s["multiturn_dims"])))
            try:
                result = generation.multiturn_case(big, **kw)
            finally:
                big.close()
        result.details["model_dims"] = s["multiturn_dims"]
        return result

    def hw(engine, model, s, run):
        decode = [r for c in run.results for r in c.ratios if r.metric.startswith("generation tok/s")]
        # Alone (`--case hardware`), it measures decode itself rather than report 0 tok/s.
        tps = decode[0].ours if decode else generation.decode_tps(
            engine, max_tokens=s["max_tokens"], repeats=s["repeats"])
        result = hardware.hardware_case(engine, tps, megabytes=s["bandwidth_mb"])
        if s["quantize_7b"]:
            from zephyr_local.bench.quantize7b import quantized_path

            result.details["zephyr_7b_4bit"] = hardware.decode_7b(quantized_path(cache_dir()))
        return result

    def cpu_blas(engine, model, s, run):
        return blas.blas_case(model, prompt_length=512, max_tokens=s["max_tokens"],
                              repeats=s["blas_repeats"])

    def dpo(engine, model, s, run):
        from zephyr_local.testmodel import create_test_model
        from zephyr_local.bench.dpo import dpo_case

        steps = (s["dpo_steps"], s["dpo_max_length"], s["dpo_batch_pairs"])
        if run.model_given:
            return dpo_case(model, *steps)
        # Without -m: a random model large enough that weights dominate memory.
        with tempfile.TemporaryDirectory() as tmp:
            path = create_test_model(Path(tmp) / "dpo-model", **s["dpo_dims"])
            config = json.loads((path / "config.json").read_text())
            label = (f"random {config['num_hidden_layers']}-layer "
                     f"{config['hidden_size']}-wide model")
            result = dpo_case(path, *steps, label=label)
        result.details["model_dims"] = s["dpo_dims"]
        return result

    def dtype(engine, model, s, run):
        from zephyr_local.bench.dtype import dtype_case

        return dtype_case(model, cache_dir(), max_tokens=s["dtype_tokens"],
                          budget_s=s["dtype_budget_s"], repeats=s["repeats"],
                          probe_s=s["dtype_probe_s"])

    def chat(engine, model, s, run):
        from zephyr_local.bench.chat_ui import chat_ui_case

        return chat_ui_case(engine, model, max_tokens=s["chat_tokens"], repeats=s["repeats"])

    def quant(engine, model, s, run):
        from zephyr_local.bench.quantize7b import quantize_case

        if not s["quantize_7b"]:
            return CaseResult("quantize 7B", skipped="full mode only (writes a 14.5 GB checkpoint)")
        return quantize_case(cache_dir())

    def lookup(engine, model, s, run):
        from zephyr_local.bench.lookup import float32_engine, lookup_case

        # On the CPU quantized matmuls of several rows are a slow path, so a verify pass
        # would cost many tokens: this case runs a float32 copy of a quantized model.
        with float32_engine(engine) as eng:
            result = lookup_case(eng, max_tokens=s["lookup_tokens"], repeats=s["repeats"])
        result.details["dtype"] = "float32"
        return result

    def docs(engine, model, s, run):
        from zephyr_local.bench.retrieval import retrieval_case

        return retrieval_case(engine, repeats=s["repeats"], total_bytes=s["docs_bytes"])

    def dist(engine, model, s, run):
        from zephyr_local.bench.distributed import distributed_case

        if not s.get("distributed"):
            return CaseResult("distributed", skipped="full mode only (three mlx.launch jobs)")
        return distributed_case(s["dpo_dims"], **s["distributed"])

    return {"generation": gen, "multiturn": multi, "chat-ui": chat, "quantize": quant,
            "hardware": hw, "blas": cpu_blas, "dpo": dpo, "dtype": dtype, "retrieval": docs,
            "distributed": dist, "lookup": lookup}


def cache_dir() -> Path:
    """Where benchmark inputs made once are kept (git-ignored)."""
    from zephyr_local.store import home_dir

    path = home_dir() / "benchmarks" / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def available_cases() -> list[str]:
    return list(_case_fns())


def run(mode: str = "quick", model: str | None = None, cases: list[str] | None = None,
        progress: Callable[[str], None] = lambda msg: None,
        on_case: Callable[[int, int, str], None] | None = None) -> BenchRun:
    """Run the cases (all by default) on `model` (default: a fresh test model).

    `on_case(done, total, name)` is called before each case and once at the end.
    """
    from zephyr_local.engine import Engine
    from zephyr_local.testmodel import create_test_model

    settings = MODES[mode]
    fns = _case_fns()
    cases = cases or list(fns)
    unknown = [c for c in cases if c not in fns]
    if unknown:
        from zephyr_local.errors import ZephyrError

        raise ZephyrError(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(fns)}")
    with tempfile.TemporaryDirectory() as tmp:
        given = model is not None
        if not given:
            progress("creating the test model")
            model = str(create_test_model(Path(tmp) / "zephyr-test"))
        engine = Engine.load(model)
        bench = BenchRun(mode, str(engine.loaded.path), cases, machine_record(), model_given=given)
        try:
            for i, name in enumerate(cases):
                progress(f"case {name}")
                if on_case:
                    on_case(i, len(cases), name)
                bench.results.append(fns[name](engine, model, settings, bench))
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