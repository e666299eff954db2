"""The CLI spine through its public surface: output, exit codes and one-line errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from conftest import assert_one_line_error, invoke

from zephyr_local import template


def test_generate_json_is_greedy_reproducible(run_cli, engine):
    args = ["generate", "-m", "zephyr-test", "--temp", "0", "--max-tokens", "8", "-p", "Hi",
            "--json"]
    first, second = run_cli(*args), run_cli(*args)
    assert first.exit_code == 0, first.output
    record = json.loads(first.stdout.strip().splitlines()[-1])
    assert record == {**json.loads(second.stdout.strip().splitlines()[-1]),
                      **{k: record[k] for k in record if k.endswith(("_tps", "_s", "_gb"))}}
    assert record["generation_tokens"] == 8 and record["finish_reason"] == "length"
    # With --json, stdout is that one object and nothing else (the text is in it).
    assert json.loads(first.stdout) == record
    ids = template.encode(engine.tokenizer, [{"role": "user", "content": "Hi"}])
    assert record["prompt_tokens"] == len(ids)


def test_generate_reads_stdin_and_system(run_cli):
    r = run_cli("generate", "-m", "zephyr-test", "--temp", "0", "--max-tokens", "3",
                "--system", "Be brief.", "--json", "-", input="Hello from stdin")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.strip().splitlines()[-1])
    assert record["prompt_tokens"] > 10


def test_generate_messages_file(run_cli, tmp_path):
    f = tmp_path / "chat.json"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "one"},
                                          {"role": "assistant", "content": "two"},
                                          {"role": "user", "content": "three"}]}))
    r = run_cli("generate", "-m", "zephyr-test", "--temp", "0", "--max-tokens", "2",
                "--messages", str(f), "--json")
    assert r.exit_code == 0, r.output


def test_tokenize_matches_hugging_face(run_cli, hf_tokenizer, tmp_path):
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi there"}]
    f = tmp_path / "m.json"
    f.write_text(json.dumps(messages))
    for extra, gen in (([], True), (["--no-generation-prompt"], False)):
        r = run_cli("tokenize", "-m", "zephyr-test", "--messages", str(f), *extra)
        assert r.exit_code == 0, r.output
        text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert json.loads(r.stdout) == hf_tokenizer(text)["input_ids"]
    r = run_cli("tokenize", "-m", "zephyr-test", "--messages", "-", input=json.dumps(messages))
    assert json.loads(r.stdout) == hf_tokenizer(
        hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )["input_ids"]
    r = run_cli("tokenize", "-m", "zephyr-test", "--text", "Hello world")
    assert json.loads(r.stdout) == hf_tokenizer("Hello world")["input_ids"]


def test_tokenize_bad_messages(run_cli, tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]))
    assert_one_line_error(run_cli("tokenize", "-m", "zephyr-test", "--messages", str(f)), 2,
                        "message 1", "unknown role 'robot'")
    f.write_text("{not json")
    assert_one_line_error(run_cli("tokenize", "-m", "zephyr-test", "--messages", str(f)), 1,
                        str(f), "invalid JSON")
    f.write_text("[]")
    result = run_cli("tokenize", "-m", "zephyr-test", "--messages", str(f))
    assert_one_line_error(result, 2, "empty")


def test_missing_model_names_path_and_fetch_command(run_cli, model_store):
    r = run_cli("generate", "-m", "no-such-model", "-p", "hi")
    assert_one_line_error(r, 2, "no-such-model", str(model_store / "no-such-model"),
                          "zephyr-local models")
    r = run_cli("generate", "-p", "hi")
    assert_one_line_error(r, 2, "zephyr-7b-beta-4bit", "zephyr-local pull")


def test_offline_hub_id_not_cached_fails_immediately(run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    r = run_cli("generate", "-m", "SomeOrg/some-model", "-p", "hi")
    assert_one_line_error(r, 2, "SomeOrg/some-model", "zephyr-local pull SomeOrg/some-model")


def test_generate_makes_no_network_connection(run_cli, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    r = run_cli("generate", "-m", "zephyr-test", "--temp", "0", "--max-tokens", "2", "-p", "hi")
    assert r.exit_code == 0, r.output


def _break_truncate(model):
    f = model / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return "model.safetensors", "truncated"


def _break_garbage(model):
    (model / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    return "model.safetensors", "safetensors"


def _break_tokenizer(model):
    (model / "tokenizer.model").unlink()
    (model / "tokenizer.json").unlink()
    return "tokenizer.model", "missing"


def _break_config_arch(model):
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (model / "config.json").write_text(json.dumps(cfg))
    return "config.json", "'gpt2' is not supported"


def _break_config_json(model):
    (model / "config.json").write_text("{oops")
    return "config.json", "invalid JSON"


def _break_pickle(model):
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    return "pytorch_model.bin", "pickle checkpoints are refused"


def _break_remote_code(model):
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(cfg))
    return "config.json", "trust_remote_code is refused"


def _break_shapes(model):
    cfg = json.loads((model / "config.json").read_text())
    cfg["hidden_size"] = 256
    (model / "config.json").write_text(json.dumps(cfg))
    return str(model), "cannot load weights"


@pytest.mark.parametrize("breaker", [
    _break_truncate, _break_garbage, _break_tokenizer, _break_config_arch, _break_config_json,
    _break_pickle, _break_remote_code, _break_shapes,
], ids=lambda f: f.__name__[7:])
def test_broken_model_gets_one_line_error_naming_the_file(run_cli, model_copy, breaker):
    fname, reason = breaker(model_copy)
    r = run_cli("generate", "-m", str(model_copy), "-p", "hi", "--max-tokens", "2")
    assert_one_line_error(r, 2, fname, reason)
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1


@pytest.mark.parametrize("flag, value", [
    ("--temp", "-1"), ("--top-p", "0"), ("--top-p", "1.5"), ("--top-k", "-3"),
    ("--min-p", "1"), ("--max-tokens", "0"), ("--repetition-penalty", "0"),
])
def test_invalid_sampling_flag_is_named(run_cli, flag, value):
    r = run_cli("generate", "-m", "zephyr-test", "-p", "hi", flag, value)
    assert r.exit_code == 2
    assert f"Invalid value for '{flag}'" in r.stderr and "Traceback" not in r.output


def test_prompt_required_once(run_cli):
    assert run_cli("generate", "-m", "zephyr-test").exit_code == 2
    r = run_cli("generate", "-m", "zephyr-test", "-p", "a", "-")
    assert r.exit_code == 2 and "exactly one" in r.stderr
    result = run_cli("generate", "-m", "zephyr-test", "-p", "   ")
    assert_one_line_error(result, 1, "prompt is empty")


def test_bad_adapter_dir(run_cli, tmp_path):
    r = run_cli("generate", "-m", "zephyr-test", "-p", "hi", "--adapter", str(tmp_path / "nope"))
    assert_one_line_error(r, 2, "nope", "not found")
    (tmp_path / "ad").mkdir()
    r = run_cli("generate", "-m", "zephyr-test", "-p", "hi", "--adapter", str(tmp_path / "ad"))
    assert_one_line_error(r, 2, "adapter_config.json", "missing")


def test_models_lists_the_store(run_cli, test_model):
    r = run_cli("models", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    row = rows["zephyr-test"]
    size = sum(f.stat().st_size for f in test_model.rglob("*") if f.is_file())
    assert row["size_bytes"] == size and row["dtype"] == "F32" and row["bits"] is None
    assert 31.9 < row["bits_per_weight"] <= 32.0
    table = run_cli("models")
    assert "zephyr-test" in table.stdout and table.exit_code == 0


def test_info_reports_backend_and_blas(run_cli):
    r = run_cli("info", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["backend"] == "cpu"
    assert data["blas"] in ("openblas", "reference")
    assert data["mlx_version"] and data["mlx-lm_version"]


def test_create_test_model_refuses_to_overwrite(run_cli, tmp_path):
    out = tmp_path / "tm"
    assert run_cli("create-test-model", str(out)).exit_code == 0
    assert (out / "tokenizer.model").exists() and (out / "config.json").exists()
    assert_one_line_error(run_cli("create-test-model", str(out)), 1, "already exists", "--force")
    assert run_cli("create-test-model", str(out), "--force").exit_code == 0


def test_help_does_not_import_mlx():
    code = "import sys; from zephyr_local.cli import cli; print('mlx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_zephyr_local_home_moves_the_store(tmp_path, test_model):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(test_model, home / "models" / "my-model")
    env = {"ZEPHYR_LOCAL_HOME": str(home)}
    info = json.loads(invoke(None, "info", "--json", env=env).stdout)
    assert info["models_dir"] == str(home / "models")
    listed = json.loads(invoke(None, "models", "--json", env=env).stdout)
    assert [row["name"] for row in listed] == ["my-model"]
    r = invoke(None, "generate", "-m", "my-model", "--temp", "0", "--max-tokens", "2", "-p", "x",
               env=env)
    assert r.exit_code == 0, r.output


def test_real_process_exit_codes(model_store, model_copy):
    """As a user runs it: a separate process, whose exit code the MLX thread must not spoil."""
    base = [sys.executable, "-m", "zephyr_local.cli", "--models-dir", str(model_store), "generate"]
    args = ["-m", "zephyr-test", "--temp", "0", "--max-tokens", "3", "-p", "hi"]
    ok = subprocess.run(base + args, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "terminate called" not in ok.stderr
    _break_shapes(model_copy)
    bad = subprocess.run(base + ["-m", str(model_copy), "-p", "hi"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().startswith("Error:") and len(bad.stderr.strip().splitlines()) == 1
