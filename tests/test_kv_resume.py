"""Conversations that resume from a saved KV cache, through the public surface:
`generate --messages` run again with a longer history, and the chat app restarted."""

from __future__ import annotations

import json

import pytest

from zephyr_local import kv_store
from zephyr_local.engine import common_prefix_len
from zephyr_local.safetensors_header import read_header_and_metadata

CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me about the sea, the sky and the long river."}]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """ZEPHYR_LOCAL_HOME in a temporary folder: the history and kv-cache/ live there."""
    monkeypatch.setenv("ZEPHYR_LOCAL_HOME", str(tmp_path))
    monkeypatch.delenv(kv_store.MAX_GB_ENV, raising=False)
    return tmp_path


def _generate(run_cli, messages, path, *extra):
    path.write_text(json.dumps(messages))
    r = run_cli("generate", "-m", "zephyr-test", "--temp", "0", "--max-tokens", "8",
                "--messages", str(path), "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.splitlines()[-1])


def _tokenize(run_cli, messages, path):
    path.write_text(json.dumps(messages))
    r = run_cli("tokenize", "-m", "zephyr-test", "--messages", str(path))
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _held(home):
    (path,) = sorted((home / kv_store.DIR_NAME).glob("*.safetensors"))
    return json.loads(read_header_and_metadata(path)[1]["0.tokens"]), path


def test_generate_messages_prefills_only_the_new_turn(run_cli, home, tmp_path):
    first = _generate(run_cli, CHAT, tmp_path / "1.json")
    assert first["loaded_tokens"] == 0 and first["prefilled_tokens"] == first["prompt_tokens"]
    held, _ = _held(home)
    longer = CHAT + [{"role": "assistant", "content": first["text"]},
                     {"role": "user", "content": "And the mountains?"}]
    ids = _tokenize(run_cli, longer, tmp_path / "ids.json")
    second = _generate(run_cli, longer, tmp_path / "2.json")
    common = common_prefix_len(held, ids)
    assert common > first["prompt_tokens"] - 1
    assert second["loaded_tokens"] == second["reused_tokens"] == common
    assert second["prefilled_tokens"] == len(ids) - common
    uncached = _generate(run_cli, longer, tmp_path / "3.json", "--kv-cache-max-gb", "0")
    assert uncached["loaded_tokens"] == 0 and uncached["prefilled_tokens"] == len(ids)
    assert second["text"] == uncached["text"]
    assert len(list((home / kv_store.DIR_NAME).glob("*.safetensors"))) == 1


def test_kv_bits_8_saves_fewer_bytes_per_token(run_cli, home, tmp_path):
    plain = _generate(run_cli, CHAT, tmp_path / "1.json")
    tokens, path = _held(home)
    per_token = path.stat().st_size / len(tokens)
    path.unlink()
    quant = _generate(run_cli, CHAT, tmp_path / "1.json", "--kv-bits", "8")
    tokens8, path8 = _held(home)
    assert json.loads(read_header_and_metadata(path8)[1]["0.kv_bits"]) == 8
    assert path8.stat().st_size / len(tokens8) < 0.5 * per_token
    assert quant["generation_tokens"] == plain["generation_tokens"]


def test_one_shot_prompts_save_no_cache(run_cli, home):
    r = run_cli("generate", "-m", "zephyr-test", "--max-tokens", "2", "-p", "Hi")
    assert r.exit_code == 0, r.output
    assert not (home / kv_store.DIR_NAME).exists()


def test_bad_kv_flags_are_one_line_errors(run_cli, home, tmp_path, monkeypatch):
    (tmp_path / "m.json").write_text(json.dumps(CHAT))
    args = ("generate", "-m", "zephyr-test", "--messages", str(tmp_path / "m.json"))
    r = run_cli(*args, "--kv-bits", "3")
    assert r.exit_code == 2 and "--kv-bits" in r.output
    r = run_cli(*args, "--kv-cache-max-gb", "-1")
    assert r.exit_code == 2 and "--kv-cache-max-gb" in r.output
    monkeypatch.setenv(kv_store.MAX_GB_ENV, "lots")
    r = run_cli(*args)
    assert r.exit_code == 1 and kv_store.MAX_GB_ENV in r.output
    assert "Traceback" not in r.output
