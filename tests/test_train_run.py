"""DPO/SFT runs through the CLI: step-0 values, adapter format, cache, learning, resume, faults."""

from __future__ import annotations

import json
import math

import mlx.core as mx
import numpy as np
import pytest

TOPICS = ["cats", "rain", "tea", "bikes", "maps", "bread", "stars", "clocks", "rivers", "snow",
          "jazz", "chess", "ships", "bees", "glass", "paper", "salt", "wolves", "kites", "lamps",
          "honey", "moss", "drums", "caves", "tigers", "apples", "boots", "pianos", "owls", "dunes"]
TINY = ["--lora-rank", "4", "--lora-layers", "2", "--batch-size", "2", "--warmup-ratio", "0"]


def pairs(topics):
    """Chosen replies share a style (start with "Sure!"); rejected ones do not."""
    return [{"prompt": f"Tell me about {t}.", "chosen": f"Sure! Here is a fact about {t}.",
             "rejected": f"I would rather not talk about {t}."} for t in topics]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch):
    """Reference caches go to a temp home shared by this module's tests."""
    home = tmp_path_factory.getbasetemp() / "train-home"
    monkeypatch.setenv("ZEPHYR_LOCAL_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train-data")
    return {"train": write_jsonl(d / "train.jsonl", pairs(TOPICS[:24])),
            "heldout": write_jsonl(d / "heldout.jsonl", pairs(TOPICS[24:])),
            "sft": write_jsonl(d / "sft.jsonl", [{"messages": [
                {"role": "user", "content": p["prompt"]},
                {"role": "assistant", "content": p["chosen"]}]} for p in pairs(TOPICS[:8])])}


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def dpo(run_cli, data_file, out, *extra):
    return run_cli("dpo", "-m", "zephyr-test", "--data", data_file, "--out", str(out), *TINY,
                   *extra)


def test_first_step_is_log2_and_adapter_is_mlx_lm_format(run_cli, data, tmp_path, test_model):
    out = tmp_path / "a"
    r = dpo(run_cli, data["train"], out, "--iters", "2", "--lr", "1e-3")
    assert r.exit_code == 0, r.output
    first, second = records(out)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0, abs=1e-5)
    for key in ("rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected",
                "logits/chosen", "logits/rejected", "num_tokens", "grad_norm", "learning_rate",
                "tokens_per_second", "peak_memory_gb", "step"):
        assert key in first
    assert second["loss"] < first["loss"] and second["step"] == 2
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # mlx-lm loads the adapter itself, and agrees with our loader on the logits.
    from mlx_lm import load as mlx_load

    from zephyr_local.loading import load
    from zephyr_local.train.lora import load_adapter_into

    theirs, _ = mlx_load(str(test_model), adapter_path=str(out))
    ours = load(test_model).model
    load_adapter_into(ours, out)
    ids = mx.array([[1, 523, 28766, 1838, 28766, 28767, 13, 23809]])
    assert mx.allclose(theirs(ids), ours(ids), atol=1e-5).item()
    base = load(test_model).model(ids)
    assert not mx.allclose(base, ours(ids), atol=1e-3).item()  # training changed it
    g = run_cli("generate", "-m", "zephyr-test", "--adapter", str(out), "--temp", "0",
                "--max-tokens", "4", "-p", "Hi")
    assert g.exit_code == 0, g.output


def test_reference_comes_from_cache_on_second_run(run_cli, data, tmp_path, monkeypatch):
    r1 = dpo(run_cli, data["heldout"], tmp_path / "r1", "--iters", "1")
    assert r1.exit_code == 0 and "computed and cached" in r1.stderr.replace("\n", " ")

    def boom(*a, **k):
        raise AssertionError("reference recomputed")

    monkeypatch.setattr("zephyr_local.train.logprobs.batched_logps", boom)
    r2 = dpo(run_cli, data["heldout"], tmp_path / "r2", "--iters", "1")
    assert r2.exit_code == 0, r2.output
    assert "loaded from cache" in r2.stderr
    assert records(tmp_path / "r1") [0]["loss"] == records(tmp_path / "r2")[0]["loss"]


def test_short_dpo_run_raises_heldout_accuracy(run_cli, data, tmp_path):
    out = tmp_path / "learn"
    r = dpo(run_cli, data["train"], out, "--iters", "10", "--lr", "2e-3", "--batch-size", "4",
            "--eval-data", data["heldout"], "--eval-every", "5")
    assert r.exit_code == 0, r.output
    evals = [x for x in records(out) if "eval_rewards/accuracies" in x]
    assert [x["step"] for x in evals] == [5, 10]
    e = run_cli("evaluate", "-m", "zephyr-test", "--adapter", str(out), "--data", data["heldout"])
    assert e.exit_code == 0, e.output
    result = json.loads(e.stdout)
    assert result["pairs"] == 6 and result["reference"] == "base"
    assert result["eval_rewards/accuracies"] >= 0.83 and result["eval_rewards/margins"] > 0
    assert result["eval_loss"] < math.log(2)
    assert result["eval_rewards/accuracies"] == pytest.approx(evals[-1]["eval_rewards/accuracies"])
    assert result["eval_logits/chosen"] == pytest.approx(evals[-1]["eval_logits/chosen"], rel=1e-4)


def strip_timing(rs):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_second", "peak_memory_gb")}
            for r in rs]


def test_resume_after_ctrl_c_equals_uninterrupted_run(run_cli, data, tmp_path, monkeypatch):
    args = ("--iters", "6", "--lr", "1e-3", "--lora-dropout", "0.1", "--grad-accumulation", "2",
            "--save-every", "2", "--warmup-ratio", "0.2", "--schedule", "cosine")
    full = dpo(run_cli, data["train"], tmp_path / "full", *args)
    assert full.exit_code == 0, full.output
    from zephyr_local.train import trainer

    real = trainer.train_step

    def ctrl_c_at_step_4(model, objective, optimizer, plan, step, cfg, **kw):
        if step == 3:
            raise KeyboardInterrupt
        return real(model, objective, optimizer, plan, step, cfg, **kw)

    monkeypatch.setattr(trainer, "train_step", ctrl_c_at_step_4)
    cut = dpo(run_cli, data["train"], tmp_path / "cut", *args)
    assert cut.exit_code == 130 and "--resume" in cut.stderr
    ckpt = json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())
    assert ckpt["step"] == 3 and len(records(tmp_path / "cut")) == 3
    monkeypatch.setattr(trainer, "train_step", real)
    resumed = run_cli("dpo", "--out", str(tmp_path / "cut"), "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = strip_timing(records(tmp_path / "full")), strip_timing(records(tmp_path / "cut"))
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), (ra["step"], k)
    wa = mx.load(str(tmp_path / "full" / "adapters.safetensors"))
    wb = mx.load(str(tmp_path / "cut" / "adapters.safetensors"))
    assert all(np.allclose(np.array(wa[k]), np.array(wb[k]), atol=1e-6) for k in wa)


def test_nan_loss_stops_names_step_and_keeps_last_good_checkpoint(run_cli, data, tmp_path):
    out = tmp_path / "nan"
    r = dpo(run_cli, data["heldout"], out, "--iters", "5", "--lr", "1e30", "--max-grad-norm", "0")
    assert r.exit_code == 1
    assert "at step 2" in r.stderr and "last good checkpoint (step 1)" in r.stderr
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 1
    w = mx.load(str(out / "adapters.safetensors"))
    assert all(np.isfinite(np.array(v)).all() for v in w.values())


def test_disk_full_while_saving_keeps_previous_checkpoint(test_model, tmp_path, monkeypatch):
    import mlx.optimizers as optim

    from zephyr_local.loading import load
    from zephyr_local.train import checkpoint as ck
    from zephyr_local.train.config import LoRAConfig
    from zephyr_local.train.lora import apply_lora

    model = load(test_model).model
    apply_lora(model, LoRAConfig(rank=2, layers=1))
    opt = optim.AdamW(learning_rate=1e-3)
    opt.init(model.trainable_parameters())
    ck.save_checkpoint(tmp_path, model, opt, {"step": 1})

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.mx, "save_safetensors", full)
    from zephyr_local.atomic import WriteError

    with pytest.raises(WriteError, match="step-000002: cannot write"):
        ck.save_checkpoint(tmp_path, model, opt, {"step": 2})
    latest = ck.latest_checkpoint(tmp_path)
    assert latest.name == "step-000001"
    assert sorted(p.name for p in ck.checkpoints_dir(tmp_path).iterdir()) == [
        "latest.json", "step-000001"]


def test_bad_inputs_get_one_line_errors(run_cli, data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pairs(["x"])[0]) + "\n{oops\n")
    r = dpo(run_cli, str(bad), tmp_path / "o1", "--strict")
    assert r.exit_code == 2 and f"{bad}:2: invalid JSON" in r.stderr and "Traceback" not in r.output
    r = dpo(run_cli, data["heldout"], tmp_path / "o0", "--lora-layers", "0")
    assert r.exit_code == 2 and "--lora-layers 0" in r.stderr
    r = run_cli("dpo", "--out", str(tmp_path / "none"), "--resume")
    assert r.exit_code != 0 and "no run to resume" in r.stderr
    out = tmp_path / "o2"
    assert dpo(run_cli, data["heldout"], out, "--iters", "1").exit_code == 0
    r = dpo(run_cli, data["heldout"], out, "--iters", "1")
    assert r.exit_code != 0 and "--resume" in r.stderr
    r = run_cli("dpo", "--out", str(out), "--resume", "--beta", "0.5")
    assert r.exit_code != 0 and "--beta 0.5 differs" in r.stderr


def test_adapter_for_another_model_is_refused_naming_both_shapes(run_cli, data, tmp_path):
    out = tmp_path / "wrong"
    out.mkdir()
    cfg = {"fine_tune_type": "lora", "num_layers": 1,
           "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0,
                               "keys": ["self_attn.q_proj"]}}
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    name = "model.layers.3.self_attn.q_proj.lora_a"
    mx.save_safetensors(str(out / "adapters.safetensors"), {name: mx.zeros((4096, 4))})
    r = run_cli("evaluate", "-m", "zephyr-test", "--adapter", str(out), "--data", data["heldout"])
    assert r.exit_code == 2 and "(4096, 4)" in r.stderr and "(128, 4)" in r.stderr
    g = run_cli("generate", "-m", "zephyr-test", "--adapter", str(out), "-p", "Hi")
    assert g.exit_code == 2 and "(4096, 4)" in g.stderr and "(128, 4)" in g.stderr
    cfg["num_layers"] = 32
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    r = run_cli("fuse", "-m", "zephyr-test", "--adapter", str(out), "--out", str(tmp_path / "f"))
    assert r.exit_code == 2 and "adapts 32 layers" in r.stderr and "has 4" in r.stderr


def test_sft_then_dpo_then_evaluate_then_fuse(run_cli, data, tmp_path, test_model):
    sft_out, dpo_out, fused = tmp_path / "sft", tmp_path / "dpo", tmp_path / "fused"
    r = run_cli("sft", "-m", "zephyr-test", "--data", data["sft"], "--out", str(sft_out), *TINY,
                "--iters", "3", "--lr", "1e-3")
    assert r.exit_code == 0, r.output
    sft_records = records(sft_out)
    assert len(sft_records) == 3 and sft_records[-1]["loss"] < sft_records[0]["loss"]
    r = dpo(run_cli, data["train"], dpo_out, "--iters", "2", "--resume-adapter", str(sft_out))
    assert r.exit_code == 0, r.output
    # The starting adapter is the reference, so step 1 is again exactly log 2.
    assert records(dpo_out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    e = run_cli("evaluate", "-m", "zephyr-test", "--adapter", str(sft_out), "--data", data["sft"])
    assert e.exit_code == 0, e.output
    m = json.loads(e.stdout)
    assert m["eval_perplexity"] == pytest.approx(math.exp(m["eval_loss"]), rel=1e-6)
    assert m["rows"] == 8
    e = run_cli("evaluate", "-m", "zephyr-test", "--adapter", str(dpo_out),
                "--data", data["heldout"])
    assert e.exit_code == 0 and json.loads(e.stdout)["reference"] == str(sft_out.resolve())
    f = run_cli("fuse", "-m", "zephyr-test", "--adapter", str(dpo_out), "--out", str(fused))
    assert f.exit_code == 0, f.output
    from zephyr_local.loading import load
    from zephyr_local.train.lora import load_adapter_into

    adapted = load(test_model).model
    load_adapter_into(adapted, dpo_out)
    ids = mx.array([[1, 523, 28766, 1838, 28766, 28767, 13, 23809, 736]])
    assert mx.allclose(load(fused).model(ids), adapted(ids), atol=1e-4).item()
    q = run_cli("fuse", "-m", "zephyr-test", "--adapter", str(dpo_out), "--out",
                str(tmp_path / "q4"), "--bits", "4")
    assert q.exit_code == 0, q.output
    assert json.loads((tmp_path / "q4" / "config.json").read_text())["quantization"]["bits"] == 4
    g = run_cli("generate", "-m", str(tmp_path / "q4"), "--temp", "0", "--max-tokens", "3",
                "-p", "Hi")
    assert g.exit_code == 0, g.output
    # QLoRA: LoRA on the 4-bit model; the reference is the same quantized weights.
    r = run_cli("dpo", "-m", str(tmp_path / "q4"), "--data", data["heldout"], "--out",
                str(tmp_path / "qlora"), *TINY, "--iters", "2", "--lr", "1e-3")
    assert r.exit_code == 0, r.output
    q = records(tmp_path / "qlora")
    assert q[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and q[1]["loss"] < q[0]["loss"]


def test_grad_checkpoint_gives_the_same_steps(run_cli, data, tmp_path):
    args = ("--iters", "2", "--lr", "1e-3")
    assert dpo(run_cli, data["heldout"], tmp_path / "plain", *args).exit_code == 0
    r = dpo(run_cli, data["heldout"], tmp_path / "ckpt", *args, "--grad-checkpoint")
    assert r.exit_code == 0, r.output
    a, b = strip_timing(records(tmp_path / "plain")), strip_timing(records(tmp_path / "ckpt"))
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-6), k
    finished = run_cli("dpo", "--out", str(tmp_path / "plain"), "--resume")
    assert finished.exit_code != 0 and "already finished (2 of 2 steps)" in finished.stderr


def test_real_ctrl_c_checkpoints_then_exits_130(model_store, data, tmp_path, home):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sigint"
    cmd = [sys.executable, "-m", "zephyr_local.cli", "--models-dir", str(model_store), "dpo",
           "-m", "zephyr-test", "--data", data["train"], "--out", str(out), *TINY,
           "--iters", "1000", "--lr", "1e-4"]
    env = {**os.environ, "ZEPHYR_LOCAL_HOME": str(home)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "metrics.jsonl"
    for _ in range(240):  # wait (up to 60 s) until two steps are logged
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.25)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-500:]
    step = json.loads((out / "checkpoints" / "latest.json").read_text())["step"]
    assert step >= 2 and len(records(out)) == step and "--resume" in err
