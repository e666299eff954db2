"""The Hugging Face cache: `pull` reuses a repo already complete there, `models` lists it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import invoke
from fakehub import FakeHub
from test_pull import PICKLES, REPO, pointed_at

from zephyr_local.store import MODEL_FILE_PATTERNS, NOT_MODEL_FILE_PATTERNS


@pytest.fixture
def cached_repo(test_model, tmp_path):
    """A fake hub serving REPO, and an HF cache into which huggingface_hub itself (as
    mlx-lm does) downloaded it; yields the hub with its request log cleared."""
    from huggingface_hub import snapshot_download

    files = {p.name: p.read_bytes() for p in test_model.iterdir() if p.is_file()}
    with FakeHub() as hub:
        hub.add_repo(REPO, {**files, **PICKLES})
        with pointed_at(hub.url, tmp_path / "hf-cache"):
            snapshot_download(REPO, allow_patterns=["*.safetensors", "*.json", "tokenizer.model"])
            hub.reset()
            yield hub, files


def test_pull_of_a_repo_in_the_hf_cache_downloads_nothing(cached_repo, tmp_path):
    hub, files = cached_repo
    store = tmp_path / "store"
    r = invoke(store, "pull", REPO)
    assert r.exit_code == 0, r.output
    assert "Hugging Face cache" in r.stdout and "no second copy" in r.stdout
    assert hub.requests == []  # not even the file listing
    assert not (store / "zephyr-test").exists()  # no second copy in the store
    g = invoke(store, "generate", "-m", REPO, "--temp", "0", "--max-tokens", "3", "-p", "Hi",
               "--json")
    assert g.exit_code == 0, g.output
    assert hub.requests == []
    listed = json.loads(invoke(store, "models", "--json").stdout)
    cached = [m for m in listed if m["name"] == REPO]
    assert len(cached) == 1 and cached[0]["source"] == "hf-cache"
    assert "/snapshots/" in cached[0]["path"] and cached[0]["size_bytes"] >= sum(
        len(files[n]) for n in files if n.endswith(".safetensors"))


def test_force_still_downloads_into_the_store(cached_repo, tmp_path):
    hub, files = cached_repo
    store = tmp_path / "store"
    r = invoke(store, "pull", REPO, "--force")
    assert r.exit_code == 0, r.output
    assert (store / "zephyr-test" / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert any("/resolve/" in path for path in hub.paths_requested())


def test_a_pulled_model_is_one_copy_that_huggingface_hub_finds(cached_repo, tmp_path):
    """`pull` downloads into the Hugging Face cache's own layout: huggingface_hub (and so
    mlx-lm) finds the repo offline, its scan reports no corruption, and the store's entry
    points at the same bytes instead of holding a second copy."""
    from huggingface_hub import scan_cache_dir, snapshot_download

    from zephyr_local.hfcache import cache_dir

    hub, files = cached_repo
    import shutil

    shutil.rmtree(cache_dir())  # start from an empty cache: this pull must download
    store = tmp_path / "store"
    r = invoke(store, "pull", REPO)
    assert r.exit_code == 0, r.output
    assert any("/resolve/" in p for p in hub.paths_requested())
    snapshot = snapshot_download(REPO, local_files_only=True, allow_patterns=MODEL_FILE_PATTERNS,
                                 ignore_patterns=NOT_MODEL_FILE_PATTERNS)
    model = store / "zephyr-test"
    for name, data in files.items():
        assert (model / name).read_bytes() == data == (Path(snapshot) / name).read_bytes()
        assert (model / name).resolve() == (Path(snapshot) / name).resolve()  # one copy
    info = scan_cache_dir(cache_dir())
    assert not info.warnings and [x.repo_id for x in info.repos] == [REPO]
    assert info.size_on_disk == sum(len(d) for d in files.values())  # nothing twice
    listed = json.loads(invoke(store, "models", "--json").stdout)
    assert [(m["name"], m["source"]) for m in listed] == [("zephyr-test", REPO)]  # not twice
