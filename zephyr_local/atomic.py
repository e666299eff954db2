"""Atomic writes of files and directories, and sizes for humans.

Models, adapters, checkpoints, reports and exports are written to a temporary
path beside the target and renamed into place, so a crash or Ctrl-C never leaves
a half-written file or a directory that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask (reading it means setting it: done under a lock, put back)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_via(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it over `path`.

    The file gets the mode a plain `open()` would give it (0644 under the usual umask),
    not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_via(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished directory `tmp` to `out`; an existing `out` is removed only afterwards."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:  # put the previous one back
            (old / out.name).rename(out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; when the block succeeds it replaces `out`.

    On any exception (Ctrl-C included) the temporary directory is removed and `out`,
    if it existed, is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp's 0700 would make the result private to this user
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def dir_size(path: Path) -> int:
    """Bytes of every file below `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as disk sizes are sold)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
