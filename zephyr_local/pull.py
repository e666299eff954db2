"""`zephyr-local pull`: download a Hugging Face model into the store, safetensors only.

huggingface_hub does the talking to the hub: the file listing with sizes and hashes,
auth headers, error types, and ranged GETs that retry within a run. This module adds
what it lacks for a 15 GB download: resuming a half-downloaded file in a later run
(huggingface_hub 2.x deletes partial files on failure), a store directory that only
appears once complete and verified, and one-line errors for the CLI.

Layout while downloading: `<store>/.partial/<name>/` holds finished files and
`<file>.incomplete` ones; `<store>/.partial/<name>.json` records the commit they
belong to. At the end the directory is renamed to `<store>/<name>` in one step.
"""

from __future__ import annotations

import errno
import fcntl
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from zephyr_local import hfcache, loading
from zephyr_local.atomic import dir_size, file_size, human_bytes, replace_dir, write_text
from zephyr_local.download import ProgressFn, RemoteFile, Tracker, download_file, part_path
from zephyr_local.errors import ModelFormatError, ModelNotFoundError, ZephyrError
from zephyr_local.store import (
    MODEL_FILE_PATTERNS,
    NOT_MODEL_FILE_PATTERNS,
    SOURCE_FILE,
    read_source,
    store_name,
)

PARTIAL_DIR = ".partial"


class HubUnreachableError(ZephyrError):
    """The hub cannot be reached (offline, no network, or HF_HUB_OFFLINE=1)."""

    exit_code = 2


@dataclass
class PullResult:
    """What `pull` did."""

    path: Path
    repo_id: str
    commit: str | None
    size_bytes: int
    already_present: bool = False
    downloaded_bytes: int = 0
    from_hf_cache: bool = False  # found complete in the Hugging Face cache: nothing copied


def pull(
    repo_id: str,
    store: Path,
    revision: str | None = None,
    force: bool = False,
    notify: Callable[[str], None] | None = None,
    progress: ProgressFn | None = None,
) -> PullResult:
    """Download `repo_id` into `store/<name>`, resuming an earlier partial download.

    Args:
        repo_id: the hub id, e.g. "HuggingFaceH4/zephyr-7b-beta".
        store: the model store directory.
        revision: branch, tag or commit (default: the repo's main branch).
        force: download again even if the model is already in the store.
        notify: called with one line of news at each stage.
        progress: called as bytes arrive, with the file name and the pull's bytes
            done and total (resumed bytes count as done).

    Raises:
        ModelNotFoundError: unknown repo or revision, or a gated repo without access.
        ModelFormatError: no safetensors weights (pickle checkpoints are refused), or
            a model that zephyr-local cannot run.
        HubUnreachableError: offline, or the hub cannot be reached.
        ZephyrError: disk full, or a download that failed its checksum.
    """
    notify = notify or (lambda line: None)
    _validate_repo_id(repo_id)
    target = store / store_name(repo_id)
    if target.exists() and not force:
        return _already_present(target, repo_id, revision)
    cached = None if force else _from_hf_cache(repo_id, revision)
    if cached is not None:
        return cached
    partial_root = store / PARTIAL_DIR
    partial_root.mkdir(parents=True, exist_ok=True)
    with _exclusive(partial_root / f"{target.name}.lock", repo_id):
        return _download_into(partial_root, target, repo_id, revision, notify, progress)


def _already_present(target: Path, repo_id: str, revision: str | None) -> PullResult:
    """The store entry, if it holds this repo (and revision); refused if it holds another."""
    source = read_source(target)
    if source.get("repo_id") != repo_id or revision not in (None, source.get("revision")):
        held = f"{source.get('repo_id')}@{source.get('revision')}" if source else "another model"
        raise ZephyrError(
            f"{target} already holds {held}, not {repo_id}@{revision or 'main'}: "
            "pass --force to replace it, or move it away first"
        )
    return PullResult(target, repo_id, source.get("commit"), dir_size(target),
                      already_present=True)


def _download_into(partial_root: Path, target: Path, repo_id: str, revision: str | None,
                   notify, progress) -> PullResult:
    """The download itself, under the pull's lock: resume the partial, check, publish."""
    commit, files = list_files(repo_id, revision)
    partial = partial_root / target.name
    _prepare_partial(partial, repo_id, commit, notify)
    todo = [f for f in files if not (partial / f.name).is_file()]
    _check_disk_space(partial, todo)
    tracker = Tracker(sum(f.size or 0 for f in files), progress)
    tracker.done = tracker.total - sum(f.size or 0 for f in todo) + sum(
        file_size(part_path(partial, f)) for f in todo)
    notify(f"Pulling {repo_id} @ {commit[:12]}: {len(files)} files, {human_bytes(tracker.total)}"
           f" ({len(files) - len(todo)} already here)")
    downloaded = _download_all(repo_id, commit, partial, todo, tracker)
    loading.check_model_dir(partial)
    # One copy on disk, in the Hugging Face cache where mlx-lm finds it by hub id too.
    shared = hfcache.adopt(partial, repo_id, commit, revision, files)
    _finish(partial, target, {
        "repo_id": repo_id, "revision": revision or "main", "commit": commit,
        "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hf_cache": str(hfcache.cache_dir()) if shared else None,
    })
    _state_path(partial).unlink(missing_ok=True)
    return PullResult(target, repo_id, commit, dir_size(target), downloaded_bytes=downloaded)


def _from_hf_cache(repo_id: str, revision: str | None) -> PullResult | None:
    """The repo, complete in the Hugging Face cache (mlx-lm's download, say): used where
    it is, since every command resolves the hub id to it; no request, no second copy."""
    path = hfcache.usable_snapshot(repo_id, revision)
    if path is None:
        return None
    return PullResult(path, repo_id, path.name, dir_size(path), already_present=True,
                      from_hf_cache=True)


def list_files(repo_id: str, revision: str | None = None) -> tuple[str, list[RemoteFile]]:
    """The commit `revision` points at, and the files `pull` takes from it.

    Raises:
        ModelFormatError: the repo has no safetensors weights or no config.json.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import filter_repo_objects

    with hub_errors(repo_id, revision):
        # One request: commit sha plus every file's size and hash (`blobs=true`).
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True,
                                  timeout=constants.HF_HUB_ETAG_TIMEOUT)
    siblings = info.siblings or []
    names = [s.rfilename for s in siblings]
    keep = set(filter_repo_objects(names, allow_patterns=MODEL_FILE_PATTERNS,
                                   ignore_patterns=NOT_MODEL_FILE_PATTERNS))
    files = [
        RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None,
                   None if s.lfs else s.blob_id)
        for s in siblings if s.rfilename in keep
    ]
    if not any(f.name.endswith(".safetensors") for f in files):
        pickles = [n for n in names if n.endswith(loading.PICKLE_SUFFIXES)]
        what = f"only pickle checkpoints ({pickles[0]})" if pickles else "no weights"
        raise ModelFormatError(
            f"{repo_id} has {what} and no *.safetensors: zephyr-local only downloads "
            "safetensors (pickle checkpoints can run code); look for a safetensors copy"
        )
    if "config.json" not in keep:
        raise ModelFormatError(f"{repo_id} has no config.json: it is not a transformers model")
    # Small files first, so a bad config.json is caught before gigabytes of weights.
    files.sort(key=lambda f: (f.name.endswith(".safetensors"), f.size or 0, f.name))
    return info.sha, files


@contextmanager
def hub_errors(repo_id: str, revision: str | None, resume_hint: str = "") -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into one-line ZephyrErrors."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    login = "run `hf auth login` or set HF_TOKEN"
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubUnreachableError(
            f"cannot reach the Hugging Face hub: offline mode is on (HF_HUB_OFFLINE=1) and "
            f"{repo_id} is not in the store; run again when online{resume_hint}") from None
    except (httpx2.TransportError, httpx2.StreamError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HubUnreachableError(
            f"cannot reach the Hugging Face hub at {endpoint} ({reason}); "
            f"run again when online{resume_hint}") from None
    except GatedRepoError:  # a subclass of RepositoryNotFoundError: test it first
        raise ModelNotFoundError(
            f"{repo_id} is gated: accept its terms at {endpoint}/{repo_id}, then {login}") from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(
            f"revision {revision!r} not found in {repo_id} (give a branch, tag or commit)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"repository {repo_id!r} not found on {endpoint} (if it is private, {login})"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = login if status in (401, 403) else f"try again later{resume_hint}"
        raise ZephyrError(f"the hub refused {repo_id} (HTTP {status}): {hint}") from None


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ZephyrError(f"invalid repo id {repo_id!r}: expected owner/name, "
                          "e.g. HuggingFaceH4/zephyr-7b-beta") from None


@contextmanager
def _exclusive(lock_path: Path, repo_id: str) -> Iterator[None]:
    """One pull per model at a time: two would append to the same partial files."""
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ZephyrError(f"another `zephyr-local pull` of {repo_id} is running") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _state_path(partial: Path) -> Path:
    """Beside the partial directory, so that it never ends up in the model directory."""
    return partial.parent / f"{partial.name}.json"


def _prepare_partial(partial: Path, repo_id: str, commit: str,
                     notify: Callable[[str], None]) -> None:
    """Keep a partial download of the same commit; discard one of another commit."""
    state = _state_path(partial)
    old = _read_json(state)
    if partial.exists() and (old.get("repo_id"), old.get("commit")) != (repo_id, commit):
        notify(f"Discarding a partial download of {old.get('repo_id')} @ "
               f"{str(old.get('commit'))[:12]} (now at {commit[:12]})")
        shutil.rmtree(partial)
    elif partial.exists():
        notify(f"Resuming the partial download in {partial}")
    partial.mkdir(parents=True, exist_ok=True)
    write_text(state, _json({"repo_id": repo_id, "commit": commit}))


def _check_disk_space(partial: Path, todo: list[RemoteFile]) -> None:
    need = sum((f.size or 0) - file_size(part_path(partial, f)) for f in todo)
    free = shutil.disk_usage(partial).free
    if need > free:
        raise ZephyrError(
            f"not enough disk space in {partial.parent.parent}: the download needs "
            f"{human_bytes(need)} more, {human_bytes(free)} is free"
        )


def _download_all(repo_id: str, commit: str, partial: Path, todo: list[RemoteFile],
                  tracker: Tracker) -> int:
    """Download each missing file; returns the bytes fetched."""
    from huggingface_hub import hf_hub_url

    resume = f" (the partial download in {partial} is kept: the same command resumes it)"
    before = sum(file_size(part_path(partial, f)) for f in todo)
    checked = False
    for remote in todo:
        if remote.name.endswith(".safetensors") and not checked:
            _check_config(partial, repo_id)
            checked = True
        try:
            with hub_errors(repo_id, commit, resume):
                url = hf_hub_url(repo_id, remote.name, revision=commit)
                download_file(url, partial, remote, tracker)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ZephyrError(f"disk full while writing {remote.name}: free some space, "
                                  f"then run the same command{resume}") from None
            raise ZephyrError(f"{remote.name}: {str(exc).splitlines()[0]}{resume}") from None
    return sum(f.size or 0 for f in todo) - before


def _check_config(partial: Path, repo_id: str) -> None:
    """Refuse a model zephyr-local cannot run before downloading its weights."""
    config = _read_json(partial / "config.json")
    if config.get("model_type") not in loading.SUPPORTED_MODEL_TYPES or config.get("auto_map"):
        shutil.rmtree(partial)
        _state_path(partial).unlink(missing_ok=True)
        raise ModelFormatError(
            f"{repo_id}/config.json: model_type {config.get('model_type')!r}"
            f"{' with custom code (auto_map)' if config.get('auto_map') else ''} is not supported "
            f"(zephyr-local runs {' and '.join(loading.SUPPORTED_MODEL_TYPES)} models); "
            "nothing was kept"
        )


def _finish(partial: Path, target: Path, source: dict) -> None:
    """Check the complete download, record its source, and move it into place in one rename."""
    loading.check_model_dir(partial)
    write_text(partial / SOURCE_FILE, _json(source))
    replace_dir(partial, target)  # --force: `target` is never a half-written model


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _json(data: dict) -> str:
    return json.dumps(data, indent=2) + "\n"
