"""Data-parallel training under `mlx.launch -n 2` (ring backend, CPU) against one process.

The oracle is the single-process run on the same global batches: per-step loss and
metrics and the final adapter agree up to float32 reduction order (the two ranks'
shards are padded, summed and reduced in another order). Measured here on these
configurations: metrics agree to 4.1e-6 relative (DPO rewards/chosen at step 2; SFT
9e-8), values near 0 to 4e-7 absolute, adapter weights (|w| up to 0.09) to 7e-7
absolute. The tolerances below leave a margin of 5 to 25.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from test_train_run import TOPICS, pairs, records, strip_timing, write_jsonl

LAUNCHER = Path(sys.executable).parent / "mlx.launch"
pytestmark = pytest.mark.skipif(not LAUNCHER.exists(), reason="mlx.launch is not installed")
REL, ABS, WEIGHTS = 2e-5, 1e-5, 1e-5
# Batch 3 on 2 ranks splits 2 + 1; 10 rows leave a 1-row micro-batch, where rank 1 has none.
DPO = ["--lora-rank", "4", "--lora-layers", "2", "--batch-size", "3", "--grad-accumulation", "2",
       "--warmup-ratio", "0", "--lr", "1e-3", "--iters", "3", "--save-every", "2"]
SFT = ["--lora-rank", "4", "--lora-layers", "2", "--batch-size", "3", "--warmup-ratio", "0",
       "--lr", "1e-3", "--iters", "3", "--lora-dropout", "0"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """The single-process runs' reference cache: a fresh one per test."""
    monkeypatch.setenv("ZEPHYR_LOCAL_HOME", str(tmp_path / "home1"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist-data")
    sft_rows = [{"messages": [{"role": "user", "content": p["prompt"]},
                              {"role": "assistant", "content": p["chosen"] * (1 + i % 3)}]}
                for i, p in enumerate(pairs(TOPICS[:10]))]
    return {"prefs": write_jsonl(d / "prefs.jsonl", pairs(TOPICS[:10])),
            "other": write_jsonl(d / "other.jsonl", pairs(TOPICS[10:20])),
            "heldout": write_jsonl(d / "heldout.jsonl", pairs(TOPICS[24:])),
            "sft": write_jsonl(d / "sft.jsonl", sft_rows)}


def free_ports() -> int:
    """A starting port with the next one free too (the ring listens on one per rank)."""
    for _ in range(50):
        port = random.randint(20000, 60000)
        try:
            for p in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free ports")


def launch(store, *args, home, shell: str | None = None, wait=True):
    """`mlx.launch -n 2 --backend ring -- zephyr-local ARGS` (or a shell line per rank)."""
    cmd = [str(LAUNCHER), "-n", "2", "--backend", "ring", "--starting-port", str(free_ports()),
           "--"]
    cli = [sys.executable, "-m", "zephyr_local.cli", "--models-dir", str(store), *args]
    cmd += ["bash", "-c", shell.format(cli=" ".join(cli))] if shell else cli
    env = {**os.environ, "ZEPHYR_LOCAL_HOME": str(home), "COLUMNS": "200"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    if not wait:
        return p
    out, err = p.communicate(timeout=300)
    return out, err


def assert_same_run(single, dist):
    a, b = strip_timing(records(single)), strip_timing(records(dist))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if k == "rewards/accuracies" and ra["step"] == 1:
                continue  # policy == reference: every margin is 0 but for rounding noise
            assert rb[k] == pytest.approx(ra[k], rel=REL, abs=ABS), (ra["step"], k)
    wa = mx.load(str(single / "adapters.safetensors"))
    wb = mx.load(str(dist / "adapters.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(np.array(wb[k]), np.array(wa[k]), atol=WEIGHTS, err_msg=k)


def test_two_rank_dpo_equals_one_process(run_cli, model_store, files, tmp_path):
    args = ["dpo", "-m", "zephyr-test", "--data", files["prefs"], "--eval-data",
            files["heldout"], "--eval-every", "2", *DPO]
    one = run_cli(*args, "--out", str(tmp_path / "one"))
    assert one.exit_code == 0, one.output
    out, err = launch(model_store, *args, "--out", str(tmp_path / "two"), home=tmp_path / "h2")
    assert "Wrote adapter" in out and "Error" not in err, err
    assert out.count("Wrote adapter") == 1  # rank 0 alone reports and writes
    assert err.count("computed and cached") == 2  # reference of train and eval, sharded
    assert_same_run(tmp_path / "one", tmp_path / "two")
    evals = [r for r in records(tmp_path / "two") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 3] and evals[0]["eval_pairs"] == 6
    assert len(list((tmp_path / "h2" / "cache" / "reference").glob("*.npy"))) == 2


def test_two_rank_sft_equals_one_process(run_cli, model_store, files, tmp_path):
    args = ["sft", "-m", "zephyr-test", "--data", files["sft"], *SFT]
    one = run_cli(*args, "--out", str(tmp_path / "one"))
    assert one.exit_code == 0, one.output
    out, err = launch(model_store, *args, "--out", str(tmp_path / "two"), home=tmp_path / "h")
    assert "Wrote adapter" in out and "Error" not in err, err
    assert_same_run(tmp_path / "one", tmp_path / "two")
    first = records(tmp_path / "two")[0]
    # summed over the ranks, not one rank's
    assert first["num_tokens"] == records(tmp_path / "one")[0]["num_tokens"]


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The process mlx.launch started as `rank` (its environment holds MLX_RANK)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"MLX_RANK={rank}".encode() in env and b"zephyr_local.cli" in cmd and \
                os.getsid(int(proc.name)) == launcher_pid:
            return int(proc.name)
    return None


def test_ctrl_c_on_rank_1_stops_both_and_resumes_on_one_rank(run_cli, model_store, files,
                                                            tmp_path):
    args = ["dpo", "-m", "zephyr-test", "--data", files["prefs"], *DPO[:-4], "--iters", "30",
            "--save-every", "50"]
    full = run_cli(*args, "--out", str(tmp_path / "full"))
    assert full.exit_code == 0, full.output
    cut = tmp_path / "cut"
    p = launch(model_store, *args, "--out", str(cut), home=tmp_path / "h", wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and not (
            (cut / "metrics.jsonl").exists() and len(records(cut)) >= 2):
        time.sleep(0.02)
    pid = _rank_pid(p.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGINT)  # rank 1 alone is interrupted
    _, err = p.communicate(timeout=120)
    assert err.count("Interrupted: the last checkpoint") == 1 and "Traceback" not in err, err
    done = json.loads((cut / "checkpoints" / "latest.json").read_text())["step"]
    assert 2 <= done < 30 and len(records(cut)) == done
    resumed = run_cli("dpo", "--out", str(cut), "--resume")  # one process
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(tmp_path / "full", cut)


def test_different_data_on_rank_1_fails_naming_it(model_store, files, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows-0.jsonl").write_text(Path(files["prefs"]).read_text())
    (data / "rows-1.jsonl").write_text(Path(files["other"]).read_text())
    shell = "{cli} --data " + str(data) + "/rows-$MLX_RANK.jsonl"
    t0 = time.time()
    _, err = launch(model_store, "dpo", "-m", "zephyr-test", "--out", str(tmp_path / "o"),
                    *DPO, home=tmp_path / "h", shell=shell)
    assert "Error: rank 1 (127.0.0.1) has different training data from rank 0" in err, err
    assert err.count("Error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "metrics.jsonl").exists() and time.time() - t0 < 120


def test_unreachable_rank_fails_naming_it(tmp_path):
    port = free_ports()
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    env = {**os.environ, "MLX_RANK": "0", "MLX_HOSTFILE": str(hostfile),
           "ZEPHYR_LOCAL_DIST_CONNECT_TIMEOUT": "3"}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "zephyr_local.cli", "info"], env=env, check=False,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and time.time() - t0 < 60
    assert "Error: rank 0 (127.0.0.1): could not reach rank 1 (127.0.0.1) within 3 s" in r.stderr


def test_info_reports_the_group(model_store, tmp_path):
    out, _ = launch(model_store, "info", home=tmp_path)
    lines = sorted(line.strip() for line in out.splitlines() if "distributed:" in line)
    assert lines == ["distributed: 2 ranks, this is rank 0",
                     "distributed: 2 ranks, this is rank 1"], out


def test_gradient_bytes_match_mlx_lm_lora_layers():
    """The benchmark's byte count against the LoRA layers mlx-lm actually builds."""
    from mlx_lm.models import llama

    from zephyr_local.bench.distributed import ZEPHYR_7B, lora_gradient_bytes, step_model
    from zephyr_local.testmodel import tiny_config
    from zephyr_local.train.config import LoRAConfig
    from zephyr_local.train.lora import apply_lora

    dims = {"hidden_size": 96, "num_hidden_layers": 3, "intermediate_size": 160,
            "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 24}
    model = llama.Model(llama.ModelArgs.from_dict(tiny_config(**dims)))
    assert 4 * apply_lora(model, LoRAConfig(rank=8)) == lora_gradient_bytes(dims, 8)
    assert lora_gradient_bytes(ZEPHYR_7B, 16) == 4 * 16 * 32 * 81920  # 167.8 MB
    two, four = (step_model(n, "10 GbE", nbytes=lora_gradient_bytes(ZEPHYR_7B, 16))
                 for n in (2, 4))
    assert 1 < two["speedup"] < 2 and 2 < four["speedup"] < 4
    assert four["communication_share"] > two["communication_share"] > 0
