"""The Hugging Face cache, shared with mlx-lm and transformers: found and listed offline.

A model that mlx-lm (or transformers) already downloaded sits complete in the cache
(`$HF_HUB_CACHE`, by default ~/.cache/huggingface/hub); `pull` reuses it rather
than downloading a second 14.5 GB copy, and `models` lists it beside the store's.
"""

from __future__ import annotations

from pathlib import Path

from zephyr_local.errors import ZephyrError
from zephyr_local.store import ModelInfo, _hf_cache_snapshot, model_info

HF_CACHE_MARK = "hf-cache"  # ModelInfo.source of a model listed from the cache


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def usable_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cache's complete snapshot of `repo_id` if zephyr-local can run it, else None."""
    from zephyr_local.loading import check_model_dir

    path = _hf_cache_snapshot(repo_id, revision)
    if path is None:
        return None
    try:
        check_model_dir(path)
    except ZephyrError:  # not a Mistral/Llama safetensors model: not ours to use
        return None
    return path


def cached_models() -> list[ModelInfo]:
    """Every model in the Hugging Face cache that zephyr-local can load, by repo id."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir())
    except (CacheNotFound, OSError):
        return []
    rows = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        path = usable_snapshot(repo.repo_id)
        if path is None:
            continue
        row = model_info(path)
        row.name, row.source = repo.repo_id, HF_CACHE_MARK
        rows.append(row)
    return rows
