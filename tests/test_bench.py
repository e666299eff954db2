"""The benchmark harness in its smallest form, so it cannot rot (fields, not speeds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from zephyr_local.bench import harness
from zephyr_local.safetensors_header import read_header

HEADER_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


TINY = {"prompt_lengths": (16, 64), "max_tokens": 4, "repeats": 1, "turns": 3,
        "user_tokens": 8, "reply_tokens": 4, "bandwidth_mb": 8, "blas_repeats": 1,
        "dpo_dims": {"num_hidden_layers": 2}, "dpo_steps": 1, "dpo_max_length": 64,
        "dpo_batch_pairs": 1, "chat_tokens": 4, "quantize_7b": False,
        "multiturn_dims": {"num_hidden_layers": 2}, "dtype_tokens": 4, "dtype_budget_s": 0.2,
        "dtype_probe_s": 0, "docs_bytes": 1 << 16,
        "distributed": None, "lookup_tokens": 4}


@pytest.fixture
def tiny_mode(monkeypatch, tmp_path):
    monkeypatch.setitem(harness.MODES, "quick", TINY)
    monkeypatch.setattr(harness, "cache_dir", lambda: tmp_path / "cache")


def test_harness_writes_results(test_model, tmp_path, tiny_mode):
    run = harness.run("quick", str(test_model))
    paths = harness.write(run, tmp_path)
    record = json.loads(paths["json"].read_text())
    assert record["machine"]["backend"] == "cpu" and record["machine"]["mlx_version"]
    cases = {c["name"]: c for c in record["cases"]}
    assert set(cases) == {"generation", "multi-turn", "hardware limit", "linux-cpu-blas", "dpo",
                          "chat UI", "quantize 7B", "dtype", "retrieval", "distributed",
                          "prompt lookup"}
    lookup = cases["prompt lookup"]
    assert len(lookup["ratios"]) == 6 and lookup["details"]["cost_model"]["one_token_s"] > 0
    assert all(v["identical_greedy_tokens"] for v in lookup["details"].values() if "kind" in v)
    docs = cases["retrieval"]["details"]
    assert docs["bytes"] == 1 << 16 and docs["passages"] > 10 and docs["passages_used"] > 0
    gen = cases["generation"]
    assert len(gen["ratios"]) == 3 * 2  # three metrics per prompt length
    for r in gen["ratios"]:
        assert r["ours"] > 0 and r["baseline"] > 0 and r["goal"] == ">= 0.98"
        assert isinstance(r["met"], bool)
    turns = cases["multi-turn"]["details"]["cache_reuse"]
    assert len(turns) == 3
    # With cache reuse, later turns prefill less than their whole prompt.
    assert all(t["prefilled"] < t["prompt_tokens"] for t in turns[1:])
    rebuild = cases["multi-turn"]["details"]["re_prefill"]
    assert all(t["prefilled"] == t["prompt_tokens"] for t in rebuild)
    # multiturn_dims set: measured on a random model, and the metrics say so.
    assert [r["metric"] for r in cases["multi-turn"]["ratios"]] == [
        "turn 3 TTFT vs turn 1 TTFT (goal: within 1.5x), random 2-layer 128-wide model",
        "turn 3 TTFT, cache reuse vs re-prefill, random 2-layer 128-wide model"]
    assert cases["multi-turn"]["details"]["model"] == "random 2-layer 128-wide model"
    hw = cases["hardware limit"]["details"]
    assert hw["read_bandwidth_gb_s"] > 0 and hw["ceiling_tok_s"] > 0
    # The hardware case reuses the generation case's decode reading (shortest prompt).
    assert hw["decode_tok_s"] == gen["details"]["prompt_16"]["zephyr-local"]["generation_tps"]
    _check_blas_case(cases["linux-cpu-blas"])
    chat = cases["chat UI"]["ratios"][0]
    assert chat["goal"] == ">= 0.95" and chat["ours"] > 0 and chat["baseline"] > 0
    dpo = cases["dpo"]
    # -m given: the DPO case measures that model and says so.
    assert [r["metric"] for r in dpo["ratios"]] == ["peak memory of a step, zephyr-test",
                                                    "time per step (best), zephyr-test"]
    assert dpo["details"]["settings"]["model"] == str(test_model)
    assert dpo["details"]["naive"]["peak_memory_gb"] > 0
    _check_dtype_case(cases["dtype"])
    md = paths["md"].read_text()
    assert "| generation | prompt tok/s, 16-token prompt |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["json"].name.endswith("-cpu.json")


def _system_openblas() -> bool:
    """Whether the dynamic linker finds an OpenBLAS here (ldconfig's cache), asked apart
    from backend.OPENBLAS_CANDIDATES, the list the BLAS case's probe tries."""
    import ctypes.util

    return ctypes.util.find_library("openblas") is not None


def _check_blas_case(blas: dict) -> None:
    """Measured with OpenBLAS against the reference BLAS where Linux has one; else skipped."""
    if sys.platform != "linux":
        assert blas["skipped"] == "not Linux" and blas["ratios"] == []
    elif not _system_openblas():
        assert blas["skipped"].startswith("no system OpenBLAS") and blas["ratios"] == []
    else:
        assert blas["skipped"] is None
        assert [r["unit"] for r in blas["ratios"]] == ["tok/s", "tok/s", "s"]
        assert blas["ratios"][2]["metric"] == "DPO step (1 pair x 128 tokens), zephyr-test"
        for side in ("openblas", "reference"):
            assert blas["details"][side]["prompt_tps"] > 0
            assert blas["details"][side]["dpo_step_s"] > 0


def test_multiturn_on_the_run_model_names_no_other_model(test_model, tiny_mode, monkeypatch):
    monkeypatch.setitem(harness.MODES, "quick", {**TINY, "multiturn_dims": None})
    [result] = harness.run("quick", str(test_model), ["multiturn"]).results
    assert [r.metric for r in result.ratios] == [
        "turn 3 TTFT vs turn 1 TTFT (goal: within 1.5x)", "turn 3 TTFT, cache reuse vs re-prefill"]
    assert result.details["model"] == "zephyr-test" and "model_dims" not in result.details


def test_every_registered_case_resolves_and_is_listed_in_help(run_cli):
    from zephyr_local.bench.cases import CASES, MODES

    assert list(CASES) == ["generation", "multiturn", "chat-ui", "quantize", "hardware", "blas",
                           "dpo", "dtype", "retrieval", "distributed", "lookup"]
    for case in CASES.values():
        assert callable(case.load()), case.name
        assert set(case.modes) <= set(MODES)
        assert bool(case.skipped) == (set(case.modes) != set(MODES))  # a reason where skipped
    r = run_cli("bench", "--help")
    text = " ".join(r.stdout.split())
    assert r.exit_code == 0
    assert "generation, multiturn, chat-ui, quantize, hardware, blas, dpo, dtype, retrieval, " \
           "distributed, lookup (quantize, distributed: --full only)" in text


def test_a_case_outside_its_modes_is_skipped_without_running():
    from zephyr_local.bench.cases import Case, Context

    case = Case("x", "x case", "no.such.module:fn", ("full",), "full mode only")
    ctx = Context(None, "", "quick", {}, False, lambda: Path("."))
    result = case.run(ctx)
    assert (result.name, result.skipped, result.ratios) == ("x case", "full mode only", [])


def test_bench_rejects_unknown_case(run_cli, tmp_path):
    r = run_cli("bench", "--case", "nope", "--out", str(tmp_path))
    assert r.exit_code == 1 and "unknown case(s) nope" in r.stderr


def _check_dtype_case(case: dict) -> None:
    """Six variants, each written in its dtype; the default compared with the other two."""
    from zephyr_local.backend import COMPUTE_DTYPES, default_dtype

    variants = case["details"]["variants"]
    assert {(v["bits"], v["dtype"]) for v in variants} == {
        (b, d) for b in (4, 8) for d in COMPUTE_DTYPES}
    for v in variants:
        header = read_header(Path(v["path"]) / "model.safetensors")
        assert header["lm_head.scales"]["dtype"] == HEADER_DTYPE[v["dtype"]]
        assert v["decode_tok_s"] > 0 and v["tokens"] >= 2
        assert (v["vs_float32"] == 1.0) == (v["dtype"] == "float32")
    assert case["details"]["matmul_4096_4bit"] == {}  # probes off in this tiny mode
    assert len(case["ratios"]) == 4
    assert all(f"{default_dtype()} (default) vs" in r["metric"] for r in case["ratios"])


def test_dpo_case_without_a_model_says_it_measured_a_random_one(tiny_mode):
    run = harness.run("quick", None, ["dpo"])
    dpo = run.results[0]
    assert [r.metric for r in dpo.ratios] == [
        "peak memory of a step, random 2-layer 128-wide model",
        "time per step (best), random 2-layer 128-wide model"]
    assert dpo.details["model_dims"] == TINY["dpo_dims"]


@pytest.mark.parametrize("kind", ["float16", "dense"])
def test_matmul_probe_times_and_counts_threads(kind):
    from zephyr_local.bench.dtype import matmul_probe

    probe = matmul_probe(kind, 0.3, k=256)  # 0.3 s: many 10 ms scheduler ticks
    assert probe["ms"] > 0
    if Path("/proc/self/task").is_dir():  # Linux: per-thread CPU times are readable
        assert probe["busy_threads"] >= 1
    else:
        assert probe["busy_threads"] is None
