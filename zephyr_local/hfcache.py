"""The Hugging Face cache, shared with mlx-lm and transformers: found and listed offline.

A model that mlx-lm (or transformers) already downloaded sits complete in the cache
(`$HF_HUB_CACHE`, by default ~/.cache/huggingface/hub); `pull` reuses it rather
than downloading a second 14.5 GB copy, and `models` lists it beside the store's.
What `pull` downloads itself ends up there too (`adopt`), so mlx-lm finds it by hub id.
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


def cached_models(exclude: set[str] = frozenset()) -> list[ModelInfo]:
    """Every model in the Hugging Face cache that zephyr-local can load, by repo id,
    except the repo ids in `exclude` (the store's own entries for them, made by `pull`)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir())
    except (CacheNotFound, OSError):
        return []
    rows = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or repo.repo_id in exclude:
            continue
        path = usable_snapshot(repo.repo_id)
        if path is None:
            continue
        row = model_info(path)
        row.name, row.source = repo.repo_id, HF_CACHE_MARK
        rows.append(row)
    return rows


def _etag(remote) -> str | None:
    """The blob name huggingface_hub gives a file: sha256 for LFS files, else the git blob id."""
    return remote.sha256 or remote.blob_id


def adopt(partial: Path, repo_id: str, commit: str, revision: str | None, files: list) -> bool:
    """Move a complete, verified download into the Hugging Face cache layout, leaving in
    `partial` a symlink per file to the cache's snapshot: one copy on disk, which mlx-lm
    and transformers find by hub id and zephyr-local's store lists by name.

    The layout is huggingface_hub's own: `blobs/<etag>`, `snapshots/<commit>/<file>` (a
    relative symlink to the blob) and `refs/<revision>`. Returns False, leaving the files
    where they are, when the cache cannot be written (read-only, or another filesystem
    that refuses symlinks).
    """
    import os
    import shutil

    from huggingface_hub.file_download import repo_folder_name

    repo = cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / commit
    try:
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        snapshot.mkdir(parents=True, exist_ok=True)
        for remote in files:
            etag, here = _etag(remote), partial / remote.name
            if etag is None or here.is_symlink():
                continue
            blob = repo / "blobs" / etag
            if blob.exists():
                here.unlink()  # the cache already holds these bytes
            else:
                shutil.move(here, blob)  # a rename on one filesystem
            link = snapshot / remote.name
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(blob, link.parent))
            here.symlink_to(link)
        if revision != commit:
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / (revision or "main")).write_text(commit)
    except OSError:
        return False
    return True
