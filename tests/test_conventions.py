"""Conventions shared with mlx-lm, TRL and Unix: flag aliases, JSON on stdout, stdin, modes."""

from __future__ import annotations

import itertools
import json
import os
import stat

import click
import mlx.core as mx
import numpy as np
import pytest

from zephyr_local.cli import cli
from zephyr_local.flags import MLX_LM_ALIASES

GREEDY = ["-m", "zephyr-test", "--temp", "0", "--max-tokens", "6"]


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch):
    """Reference caches go to a temp home, not the checkout."""
    monkeypatch.setenv("ZEPHYR_LOCAL_HOME", str(tmp_path_factory.getbasetemp() / "conv-home"))


def test_every_mlx_lm_alias_parses_as_our_flag():
    """Each alias reaches the same parameter as our name, on every command listed."""
    checked = 0
    for alias, where in MLX_LM_ALIASES.items():
        for name, ours in where.items():
            command = cli.commands[name]
            value = "4" if "bits" in ours or "layers" in ours or "length" in ours else "7"
            for flag in (ours, alias):
                with click.Context(command) as ctx:
                    parser = command.make_parser(ctx)
                    params, _, _ = parser.parse_args([flag, value])
                target = next(p.name for p in command.params if ours in getattr(p, "opts", []))
                assert params.get(target) == value, (name, flag)
            checked += 1
    assert checked >= 20  # the table is not empty by accident


def test_aliases_run_end_to_end(run_cli, tmp_path):
    """mlx-lm's spellings on real commands: generate and a short sft run."""
    ours = run_cli("generate", *GREEDY, "--system", "Be brief.", "-p", "Hi", "--json")
    theirs = run_cli("generate", *GREEDY, "--system-prompt", "Be brief.", "-p", "Hi", "--json")
    assert ours.exit_code == theirs.exit_code == 0, theirs.output
    assert json.loads(ours.stdout)["text"] == json.loads(theirs.stdout)["text"]
    out = tmp_path / "sft"
    r = run_cli("sft", "-m", "zephyr-test", "--data", "example:sft", "--adapter-path", str(out),
                "--num-layers", "1", "--lora-rank", "2", "--grad-accumulation-steps", "2",
                "--max-seq-length", "64", "--steps-per-eval", "1", "--iters", "1",
                "--batch-size", "1")
    assert r.exit_code == 0, r.output
    config = json.loads((out / "run_config.json").read_text())
    assert config["lora"]["layers"] == 1 and config["grad_accumulation"] == 2
    assert config["data_config"]["max_length"] == 64 and config["eval_every"] == 1


def test_generate_json_is_only_json(run_cli):
    r = run_cli("generate", *GREEDY, "-p", "Hi", "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)  # the whole of stdout: one object
    assert set(record) >= {"text", "finish_reason", "prompt_tokens", "generation_tps"}
    s = run_cli("generate", *GREEDY, "-p", "Hi", "--json-stream")
    lines = [json.loads(line) for line in s.stdout.splitlines()]
    assert all("text" in x and "token" in x for x in lines[:-1]) and len(lines) >= 2
    assert "".join(x["text"] for x in lines[:-1]) == lines[-1]["text"] == record["text"]
    assert lines[-1]["finish_reason"] == record["finish_reason"]


def test_prompt_dash_reads_stdin(run_cli):
    piped = run_cli("generate", *GREEDY, "--prompt", "-", "--json", input="Hello there")
    given = run_cli("generate", *GREEDY, "--prompt", "Hello there", "--json")
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.stdout) ["text"] == json.loads(given.stdout)["text"]
    assert json.loads(piped.stdout)["prompt_tokens"] == json.loads(given.stdout)["prompt_tokens"]


def test_quantize_takes_dash_m_like_every_command(run_cli, tmp_path):
    args = ["--bits", "4", "--group-size", "32", "--no-eval", "--json"]
    r = run_cli("quantize", "-m", "zephyr-test", "--out", str(tmp_path / "q"), *args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["bits"] == 4
    r = run_cli("quantize", "zephyr-test", "--hf-path", "other", "--mlx-path", str(tmp_path / "x"),
                *args)
    assert r.exit_code == 2 and "two models" in r.stderr


def test_dpo_logits_metrics_are_trls(run_cli, test_model, tmp_path):
    """logits/chosen = mean of the policy's logits over every completion token and the
    vocabulary (TRL's `logits[loss_mask].mean()`), computed here with a full forward."""
    from zephyr_local.loading import load
    from zephyr_local.train.config import DataConfig
    from zephyr_local.train.data import load_dataset, pref_batch

    out = tmp_path / "dpo"
    r = run_cli("dpo", "-m", "zephyr-test", "--data", "example:prefs", "--out", str(out),
                "--iters", "1", "--batch-size", "4", "--lora-rank", "2", "--warmup-ratio", "0",
                "--max-length", "96")
    assert r.exit_code == 0, r.output
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    loaded = load(test_model)  # step-1 metrics are measured before the update: the base
    ds = load_dataset("example:prefs", "dpo", loaded.tokenizer, DataConfig(max_length=96))
    from zephyr_local.train.config import TrainConfig
    from zephyr_local.train.trainer import make_plan

    plan = make_plan(TrainConfig(batch_size=4, iters=1), len(ds))
    batch = [ds.examples[i] for i in plan.micro_batch(0)]
    tokens, mask = pref_batch(batch)
    logits = np.array(loaded.model(mx.array(tokens[:, :-1])).astype(mx.float32))  # [2B, L-1, V]
    b = len(batch)
    for key, rows in (("logits/chosen", slice(0, b)), ("logits/rejected", slice(b, 2 * b))):
        expected = logits[rows][mask[rows] > 0].mean()
        assert first[key] == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


def test_sft_num_tokens_is_cumulative(run_cli, tmp_path):
    out = tmp_path / "sft"
    r = run_cli("sft", "-m", "zephyr-test", "--data", "example:sft", "--out", str(out),
                "--iters", "3", "--batch-size", "2", "--lora-rank", "2")
    assert r.exit_code == 0, r.output
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "num_tokens" in s and "loss" in s]
    totals = [s["num_tokens"] for s in steps]
    assert len(totals) == 3 and totals[0] > 0
    assert all(later > earlier for earlier, later in itertools.pairwise(totals))


def test_written_files_follow_the_umask(run_cli, tmp_path):
    """Adapters, configs, metrics, plots: 0644 under umask 022, as a plain open() gives."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "sft"
        r = run_cli("sft", "-m", "zephyr-test", "--data", "example:sft", "--out", str(out),
                    "--iters", "1", "--batch-size", "2", "--lora-rank", "2")
        assert r.exit_code == 0, r.output
        from zephyr_local.atomic import write_text

        write_text(tmp_path / "note.txt", "x")
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()] + [tmp_path / "note.txt"]
    assert {"adapters.safetensors", "adapter_config.json", "metrics.png",
            "run_config.json"} <= {p.name for p in files}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, modes


def test_sft_json_is_one_summary_object(run_cli, tmp_path):
    r = run_cli("sft", "-m", "zephyr-test", "--data", "example:sft", "--out", str(tmp_path / "s"),
                "--iters", "2", "--batch-size", "2", "--lora-rank", "2", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["steps"] == summary["total_steps"] == 2 and summary["kind"] == "sft"
    assert summary["last_step"]["step"] == 2 and "eval_loss" in summary["eval"]


def test_evaluate_table_on_a_terminal_json_when_piped(run_cli, tmp_path, monkeypatch, test_model):
    from zephyr_local import display
    from zephyr_local.train.evaluate import evaluate

    seen = []
    result = evaluate(test_model, "example:prefs", progress=lambda d, t, w: seen.append((d, t, w)),
                      cache_dir=tmp_path / "cache")
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and seen[-1][0] == seen[-1][1]  # never back to zero, ends full
    assert {w for _, _, w in seen} == {"tokenizing", "reference", "policy"}
    assert result["eval_loss"] == pytest.approx(np.log(2), abs=1e-5)  # base vs base
    piped = run_cli("evaluate", "-m", "zephyr-test", "--data", "example:prefs")
    assert json.loads(piped.stdout)["eval_loss"] == pytest.approx(result["eval_loss"], abs=1e-5)
    monkeypatch.setattr(display, "stdout_is_terminal", lambda: True)
    table = run_cli("evaluate", "-m", "zephyr-test", "--data", "example:prefs")
    assert table.exit_code == 0 and "eval_rewards/accuracies" in table.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(table.stdout)
    forced = run_cli("evaluate", "-m", "zephyr-test", "--data", "example:prefs", "--json")
    assert json.loads(forced.stdout)["pairs"] == result["pairs"]


def test_info_is_a_paste_ready_block(run_cli, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    r = run_cli("info")
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "```text" and lines[-1] == "```"
    text = "\n".join(lines)
    for key in ("OS", "Python", "mlx", "mlx-lm", "transformers", "huggingface_hub", "textual",
                "backend", "device", "BLAS", "models dir", "HF cache"):
        assert any(line.strip().startswith(f"{key}:") for line in lines), key
    assert "offline: yes" in text and str(hf_constants.HF_HUB_CACHE) in text


def test_bench_hardware_case_alone_measures_decode(test_model, monkeypatch):
    from zephyr_local.bench import harness, report

    tiny = {**harness.MODES["quick"], "max_tokens": 4, "repeats": 1, "bandwidth_mb": 8}
    monkeypatch.setitem(harness.MODES, "quick", tiny)
    run = harness.run("quick", str(test_model), ["hardware"])
    details = run.results[0].details
    assert details["decode_tok_s"] > 0 and details["fraction_of_ceiling"] > 0
    record = {"mode": "quick", "date": "d", "model": str(test_model), "machine": run.machine,
              "cases": [c.as_dict() for c in run.results]}
    assert "decode reached 0 tok/s" not in report.markdown(record)


def test_shell_completion_offers_store_models(test_model, tmp_path):
    """click's completion protocol, as the shell runs it: model names from the store."""
    import shutil
    import subprocess
    import sys

    home = tmp_path / "home"
    shutil.copytree(test_model, home / "models" / "zephyr-test")
    shutil.copytree(test_model, home / "models" / "other-model")
    for words, cword in (("zephyr-local generate -m zep", "3"), ("zephyr-local quantize ze", "2"),
                         ("zephyr-local dpo --model o", "3")):
        env = {**os.environ, "ZEPHYR_LOCAL_HOME": str(home), "COMP_WORDS": words,
               "COMP_CWORD": cword, "_ZEPHYR_LOCAL_COMPLETE": "bash_complete"}
        out = subprocess.run([sys.executable, "-c", "from zephyr_local.cli import main; main()"],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
        expected = "other-model" if words.endswith(" o") else "zephyr-test"
        assert out.stdout.split() == [f"plain,{expected}"], (words, out.stdout, out.stderr)


def test_benchmark_chart_is_log_scale_with_values_and_goal_legend():
    import matplotlib.pyplot as plt

    from zephyr_local.bench.report import figure

    def row(metric, value, goal, met):
        return {"case": "c", "metric": metric, "ratio": value, "goal": goal, "met": met}

    record = {"date": "d", "machine": {"device": "cpu"}, "cases": [{"ratios": [
        row("a", 0.961, ">= 0.98", False), row("b", 0.987, ">= 0.98", True),
        row("c", 9.517, "-", None)]}]}
    fig = figure(record)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["0.961", "0.987", "9.52"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "goal" in labels and "goal met" in labels and "goal missed" in labels
    lo, hi = ax.get_xlim()
    assert lo < 0.961 and hi > 9.517
    plt.close(fig)
