"""One hub file into a local directory: resumable across runs, verified, then renamed.

huggingface_hub's `http_get` does the ranged GET with its in-run retries. What it
lacks, and this adds: the part file survives a failed or interrupted run (its own
`hf_hub_download` deletes it), so the next run asks only for the missing bytes; and
the content is checked against the hash the hub listed before it takes its name.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zephyr_local.errors import ZephyrError

INCOMPLETE = ".incomplete"

ProgressFn = Callable[[str, int, int], None]  # (file name, bytes done, bytes total)


@dataclass
class RemoteFile:
    """One file of the repo, as the hub lists it."""

    name: str
    size: int | None
    sha256: str | None = None  # LFS files: sha256 of the content
    blob_id: str | None = None  # other files: the git blob id of the content


@dataclass
class Tracker:
    """Bytes done over a whole pull, reported to the caller's callback."""

    total: int
    callback: ProgressFn | None = None
    done: int = 0

    def add(self, name: str, n: int) -> None:
        self.done += n
        if self.callback:
            self.callback(name, max(0, min(self.done, self.total)), self.total)


def part_path(directory: Path, remote: RemoteFile) -> Path:
    """Where the unfinished bytes of `remote` live until it is complete."""
    return directory / (remote.name + INCOMPLETE)


def download_file(url: str, directory: Path, remote: RemoteFile, tracker: Tracker) -> Path:
    """Fetch `url` into `directory/remote.name`, continuing its part file with a Range request.

    Raises:
        ZephyrError: the content does not match the hub's hash (the part is deleted).
        OSError: from the disk (ENOSPC) or huggingface_hub (a short download); the
            part file is kept for the next run.
    """
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    part = part_path(directory, remote)
    if remote.size is not None and part.exists() and part.stat().st_size > remote.size:
        part.unlink()  # longer than the file: not ours
    with open_incomplete(part) as handle:
        http_get(url, handle, resume_size=handle.tell(), headers=build_hf_headers(),
                 expected_size=remote.size, displayed_filename=remote.name,
                 tqdm_class=functools.partial(_FileProgress, tracker, remote.name))
    if not verify(part, remote):
        part.unlink()
        raise ZephyrError(f"{remote.name}: checksum mismatch with the hub (the corrupt copy "
                          "was deleted); run the same command again")
    dest = directory / remote.name
    os.replace(part, dest)
    return dest


def open_incomplete(path: Path):
    """Open a part file for appending (a seam for tests that simulate a full disk)."""
    return open(path, "ab")


def verify(path: Path, remote: RemoteFile) -> bool:
    """The file's content matches the hash the hub listed (sha256 for LFS, git blob id else)."""
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    if remote.size is not None and path.stat().st_size != remote.size:
        return False
    if remote.sha256:
        with open(path, "rb") as handle:
            return sha_fileobj(handle).hex() == remote.sha256
    if remote.blob_id:
        return git_hash(path.read_bytes()) == remote.blob_id
    return True


class _FileProgress:
    """The part of tqdm's interface that `http_get` drives, fed into one Tracker:
    the library reports through a callback and the CLI draws the bar."""

    def __init__(self, tracker: Tracker, name: str, **tqdm_kwargs) -> None:
        self.tracker, self.name = tracker, name

    def __enter__(self) -> _FileProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int | float | None = 1) -> None:
        self.tracker.add(self.name, int(n or 0))

    def close(self) -> None:
        return None
