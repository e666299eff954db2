"""`zephyr-local pull` against a real local HTTP server that imitates the Hugging Face hub."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
from conftest import assert_one_line_error, invoke
from fakehub import FakeHub

from zephyr_local import download, pull
from zephyr_local.errors import ModelNotFoundError
from zephyr_local.store import SOURCE_FILE, resolve_model

REPO = "test-org/zephyr-test"
PICKLES = {  # files the fake repo also holds, which pull must never fetch
    "pytorch_model.bin": b"\x80\x04\x95pickled weights" * 100,
    "training_args.bin": b"\x80\x04\x95pickled args",
    "pytorch_model.bin.index.json": b'{"weight_map": {"w": "pytorch_model.bin"}}',
}


@pytest.fixture(scope="module")
def model_files(test_model) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in test_model.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def hub(model_files) -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.add_repo(REPO, {**model_files, **PICKLES, "README.md": b"# zephyr-test\n"})
        server.add_repo("test-org/pickle-only", {
            **{n: model_files[n] for n in ("config.json", "tokenizer.json", "tokenizer.model")},
            "pytorch_model.bin": PICKLES["pytorch_model.bin"]})
        server.add_repo("test-org/gated", model_files, gated=True)
        gpt2 = {**json.loads(model_files["config.json"]), "model_type": "gpt2"}
        server.add_repo("test-org/gpt2", {**model_files, "config.json": json.dumps(gpt2).encode()})
        yield server


@contextmanager
def pointed_at(endpoint: str, cache: Path) -> Iterator[None]:
    """Point huggingface_hub at `endpoint`, with an empty cache and no token.

    It reads HF_ENDPOINT and friends at import, so the constants are patched.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf_constants, "ENDPOINT", endpoint)
        mp.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                   endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        mp.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        mp.setattr(hf_constants, "HF_TOKEN_PATH", str(cache / "no-token"))
        mp.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(cache / "agents.json"))
        mp.delenv("HF_TOKEN", raising=False)
        yield


@pytest.fixture
def on_hub(hub, tmp_path) -> Iterator[FakeHub]:
    hub.reset()
    with pointed_at(hub.url, tmp_path / "hf-cache"):
        yield hub


@pytest.fixture(scope="module")
def pulled(hub, tmp_path_factory):
    """A store into which `pull` downloaded REPO once, and the requests it made."""
    store = tmp_path_factory.mktemp("pulled")
    hub.reset()
    with pointed_at(hub.url, store.parent / "hf-cache-pulled"):
        result = invoke(store, "pull", REPO)
    assert result.exit_code == 0, result.output
    return store, list(hub.requests), result


def subprocess_env(hub_url: str, home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_ENDPOINT": hub_url, "HF_HOME": str(home), "PYTHONUNBUFFERED": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", **extra}


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


# --- a good pull ----------------------------------------------------------------------


def test_pull_fetches_only_safetensors_and_config_files(pulled, hub, model_files):
    store, requests, result = pulled
    model = store / "zephyr-test"
    assert sorted(p.name for p in model.iterdir()) == sorted([*model_files, SOURCE_FILE])
    for name, data in model_files.items():
        assert (model / name).read_bytes() == data, name
    fetched = {path.rsplit("/", 1)[-1] for method, path, _ in requests if "/resolve/" in path}
    assert fetched == set(model_files)  # no pickle, no README, each file fetched
    source = json.loads((model / SOURCE_FILE).read_text())
    assert source["repo_id"] == REPO and source["revision"] == "main"
    assert source["commit"] == hub.repos[REPO].commit
    datetime.fromisoformat(source["pulled_at"])
    assert sorted(p.name for p in (store / ".partial").iterdir()) == ["zephyr-test.lock"]
    assert str(model) in result.stdout and f"zephyr-local quantize {REPO}" in result.stdout


def test_pulled_model_is_listed_and_generates_without_network(pulled, test_model, monkeypatch):
    store, _, _ = pulled
    rows = json.loads(invoke(store, "models", "--json").stdout)
    assert [(r["name"], r["source"]) for r in rows] == [("zephyr-test", REPO)]
    args = ["generate", "--temp", "0", "-p", "hi", "--max-tokens", "3", "--json"]
    expected = json.loads(invoke(store, *args, "-m", str(test_model)).stdout.splitlines()[-1])

    def no_network(self, address):
        raise OSError(f"test: network access to {address} is not allowed")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    result = invoke(store, *args, "-m", REPO)  # the hub id, found in the store by its source
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["text"] == expected["text"]


def test_repull_says_present_without_asking_the_hub(pulled, tmp_path):
    store, _, _ = pulled
    with pointed_at("http://127.0.0.1:9", tmp_path):  # nothing listens there
        result = invoke(store, "pull", REPO)
    assert result.exit_code == 0, result.output
    assert "already in the store" in result.stdout and "--force" in result.stdout


def test_a_folder_of_the_same_name_from_another_repo_is_not_reused(pulled, tmp_path):
    store, _, _ = pulled
    other = "other-org/zephyr-test"  # same store name as REPO, different repo
    with pointed_at("http://127.0.0.1:9", tmp_path):  # refused before any request
        result = invoke(store, "pull", other)
        assert_one_line_error(result, 1, "already holds test-org/zephyr-test@main", "--force")
        result = invoke(store, "pull", REPO, "--revision", "v2")
        assert_one_line_error(result, 1, "already holds test-org/zephyr-test@main", REPO + "@v2")
    with pytest.raises(ModelNotFoundError, match="pulled from other-org/zephyr-test"):
        resolve_model(other, store)
    assert resolve_model(REPO, store) == store / "zephyr-test"


def test_force_downloads_again(pulled, on_hub, tmp_path, model_files):
    store = tmp_path / "store"
    shutil.copytree(pulled[0], store)
    (store / "zephyr-test" / "stale.txt").write_text("from before")
    result = invoke(store, "pull", REPO, "--force")
    assert result.exit_code == 0, result.output
    assert len(on_hub.paths_requested("/model.safetensors")) == 1
    assert sorted(p.name for p in (store / "zephyr-test").iterdir()) == sorted(
        [*model_files, SOURCE_FILE])


def test_progress_callback_counts_every_byte_of_the_pull(on_hub, tmp_path, model_files):
    calls = []
    result = pull.pull(REPO, tmp_path, progress=lambda *call: calls.append(call))
    total = sum(len(data) for data in model_files.values())
    assert result.size_bytes == total + len((result.path / SOURCE_FILE).read_bytes())
    assert calls[-1] == ("model.safetensors", total, total)
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)
    assert {name for name, _, _ in calls} == set(model_files)


# --- interrupted downloads --------------------------------------------------------------


def test_interrupted_pull_resumes_with_a_range_request(on_hub, tmp_path, model_files):
    """Ctrl-C mid-file: no model directory, the part is kept, the next run asks for the rest."""
    store = tmp_path / "store"
    size = len(model_files["model.safetensors"])
    chunk = hf_constants.DOWNLOAD_CHUNK_SIZE  # huggingface_hub writes whole chunks
    on_hub.faults.stall["model.safetensors"] = size - 4096
    written = (size - 4096) // chunk * chunk
    assert written > 0, "the test model must be bigger than one download chunk"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zephyr_local.cli", "--models-dir", str(store), "pull", REPO],
        env=subprocess_env(on_hub.url, tmp_path / "hf"), cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = store / ".partial" / "zephyr-test" / "model.safetensors.incomplete"
    try:
        wait_until(lambda: part.exists() and part.stat().st_size == written)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        on_hub.faults.release.set()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "the same command resumes it" in err
    assert not (store / "zephyr-test").exists()
    assert part.stat().st_size == written
    on_hub.requests.clear()
    result = invoke(store, "pull", REPO)
    assert result.exit_code == 0, result.output
    gets = [(m, r) for m, p, r in on_hub.requests if p.endswith("/model.safetensors")]
    assert gets == [("GET", f"bytes={written}-")]
    assert (store / "zephyr-test" / "model.safetensors").read_bytes() == model_files[
        "model.safetensors"]
    assert not any(p.name.endswith(".incomplete") for p in (store / "zephyr-test").iterdir())


def test_network_loss_fails_cleanly_and_the_next_run_resumes(on_hub, tmp_path, model_files,
                                                             monkeypatch):
    """The connection drops mid-file and stays down through huggingface_hub's retries."""
    store = tmp_path / "store"
    size = len(model_files["model.safetensors"])
    on_hub.faults.drop["model.safetensors"] = (size // 2, 10**6)  # down until cleared
    monkeypatch.setattr(time, "sleep", lambda s: None)  # huggingface_hub waits 1 s per retry
    result = invoke(store, "pull", REPO)
    assert_one_line_error(result, 2, "cannot reach the Hugging Face hub", "resumes it")
    assert not (store / "zephyr-test").exists()
    part = store / ".partial" / "zephyr-test" / "model.safetensors.incomplete"
    kept = part.stat().st_size
    assert 0 < kept < size
    on_hub.faults.drop.clear()  # the network is back
    on_hub.requests.clear()
    result = invoke(store, "pull", REPO)
    assert result.exit_code == 0, result.output
    assert [r for m, p, r in on_hub.requests if p.endswith("/model.safetensors")] == [
        f"bytes={kept}-"]
    assert (store / "zephyr-test" / "model.safetensors").read_bytes() == model_files[
        "model.safetensors"]


def test_partial_download_of_another_commit_is_discarded(on_hub, tmp_path):
    store = tmp_path / "store"
    partial = store / ".partial" / "zephyr-test"
    partial.mkdir(parents=True)
    (partial / "model.safetensors.incomplete").write_bytes(b"bytes of an older commit")
    (store / ".partial" / "zephyr-test.json").write_text(
        json.dumps({"repo_id": REPO, "commit": "0" * 40}))
    result = invoke(store, "pull", REPO)
    assert result.exit_code == 0, result.output
    assert "Discarding a partial download" in result.stderr
    assert all(r is None for _, _, r in on_hub.requests)  # started over, no Range


# --- what bad input gets ------------------------------------------------------------------


def test_unknown_repo(on_hub, tmp_path):
    result = invoke(tmp_path, "pull", "test-org/no-such-model")
    assert_one_line_error(result, 2, "'test-org/no-such-model' not found", "hf auth login")


def test_unknown_revision(on_hub, tmp_path):
    result = invoke(tmp_path, "pull", REPO, "--revision", "v9")
    assert_one_line_error(result, 2, "revision 'v9' not found", REPO)
    assert not (tmp_path / "zephyr-test").exists()


def test_gated_repo_asks_for_login(on_hub, tmp_path):
    result = invoke(tmp_path, "pull", "test-org/gated")
    assert_one_line_error(result, 2, "gated", "hf auth login", "HF_TOKEN")
    assert not (tmp_path / "gated").exists()


def test_pickle_only_repo_is_refused_before_any_download(on_hub, tmp_path):
    result = invoke(tmp_path, "pull", "test-org/pickle-only")
    assert_one_line_error(result, 2, "pickle", "pytorch_model.bin", "safetensors")
    assert on_hub.paths_requested() and not [p for p in on_hub.paths_requested()
                                             if "/resolve/" in p]


def test_unsupported_architecture_is_refused_before_the_weights(on_hub, tmp_path):
    result = invoke(tmp_path, "pull", "test-org/gpt2")
    assert_one_line_error(result, 2, "'gpt2' is not supported")
    assert on_hub.paths_requested("/config.json")
    assert not on_hub.paths_requested(".safetensors")
    assert sorted(p.name for p in (tmp_path / ".partial").iterdir()) == ["gpt2.lock"]
    assert not (tmp_path / "gpt2").exists()


def test_invalid_repo_id(tmp_path):
    assert_one_line_error(invoke(tmp_path, "pull", "not a repo!"), 1, "invalid repo id")


def test_unreachable_hub_fails_with_one_line(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pointed_at(f"http://127.0.0.1:{port}", tmp_path / "hf"):
        result = invoke(tmp_path, "pull", REPO)
    assert_one_line_error(result, 2, "cannot reach the Hugging Face hub", "run again when online")


def test_offline_mode_with_nothing_cached(hub, tmp_path):
    hub.reset()
    proc = subprocess.run(
        [sys.executable, "-m", "zephyr_local.cli", "--models-dir", str(tmp_path), "pull", REPO],
        env=subprocess_env(hub.url, tmp_path / "hf", HF_HUB_OFFLINE="1"), cwd=tmp_path,
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"Error: cannot reach the Hugging Face hub: offline mode is on (HF_HUB_OFFLINE=1) and "
        f"{REPO} is not in the store; run again when online"]
    assert hub.requests == []


def test_not_enough_disk_space_is_refused_up_front(on_hub, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1_000_000))
    result = invoke(tmp_path, "pull", REPO)
    assert_one_line_error(result, 1, "not enough disk space", "1.0 MB is free")
    assert not [p for p in on_hub.paths_requested() if "/resolve/" in p]


def test_disk_full_mid_file_keeps_the_partial_download(on_hub, tmp_path, monkeypatch):
    real_open = download.open_incomplete

    class FullDisk:  # a file that takes 1 MB, then fails the way a full disk does
        def __init__(self, handle):
            self.handle = handle

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            if self.handle.tell() + len(data) > 1_000_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(data)

    def opener(path):
        handle = real_open(path)
        return FullDisk(handle) if path.name.startswith("model.") else handle

    monkeypatch.setattr(download, "open_incomplete", opener)
    result = invoke(tmp_path, "pull", REPO)
    assert_one_line_error(result, 1, "disk full while writing model.safetensors", "resumes it")
    assert not (tmp_path / "zephyr-test").exists()
    assert (tmp_path / ".partial" / "zephyr-test" / "config.json").exists()


def test_corrupt_download_is_rejected(on_hub, tmp_path):
    on_hub.faults.corrupt.add("model.safetensors")
    result = invoke(tmp_path, "pull", REPO)
    assert_one_line_error(result, 1, "model.safetensors: checksum mismatch")
    assert not (tmp_path / "zephyr-test").exists()
    assert not list((tmp_path / ".partial" / "zephyr-test").glob("model.safetensors*"))


# --- the Hugging Face cache ---------------------------------------------------------------


@pytest.mark.parametrize("patterns", ["mlx-lm", "everything"])
def test_resolve_model_finds_a_hub_id_in_the_hf_cache_offline(on_hub, tmp_path, monkeypatch,
                                                              model_files, patterns):
    """A snapshot in the Hugging Face cache, as mlx-lm downloads it or as `hf download` does."""
    from huggingface_hub import snapshot_download
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    allow = DEFAULT_ALLOW_PATTERNS if patterns == "mlx-lm" else None
    snapshot = Path(snapshot_download(REPO, allow_patterns=allow))
    assert Path(hf_constants.HF_HUB_CACHE) in snapshot.parents  # the patched, empty cache
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: (_ for _ in ()).throw(
        OSError(f"test: network access to {address} is not allowed")))
    empty_store = tmp_path / "empty-store"
    empty_store.mkdir()
    assert resolve_model(REPO, empty_store) == snapshot
    assert (snapshot / "model.safetensors").read_bytes() == model_files["model.safetensors"]
