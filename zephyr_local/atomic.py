"""Atomic writes of files and directories, and sizes for humans.

Models, adapters, checkpoints, reports and exports are written to a temporary
path beside the target and renamed into place, so a crash or Ctrl-C never leaves
a half-written file or a directory that looks complete. A failed write becomes one
WriteError naming the target and the cause; the temporary directories that a
kill -9 leaves behind carry their owner's pid and are removed by the next writer.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from zephyr_local.errors import ZephyrError, describe_os_error, first_line

# MLX reports a failed write as RuntimeError("[write] Unable to write N bytes to file."),
# naming neither the file nor the cause.
_MLX_WRITE_ERRORS = ("[write]", "[save", "[save_safetensors]")
_LOW_SPACE = 16 * 2**20  # bytes free below which a failed write is put down to a full disk
_LEGACY_STALE_S = 3600  # temp dirs from before pids were in their names: this old is stale


_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask (reading it means setting it: done under a lock, put back)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


class WriteError(ZephyrError):
    """An output that cannot be written: unwritable location, full disk, ..."""


@contextmanager
def writing(target: Path) -> Iterator[None]:
    """Turn an OS or MLX write failure inside the block into a WriteError naming `target`."""
    try:
        yield
    except OSError as exc:
        cause = exc.strerror or first_line(exc)
        if exc.filename is not None and Path(exc.filename) != Path(target):
            cause = describe_os_error(exc)
        raise WriteError(f"{target}: cannot write ({cause})") from None
    except RuntimeError as exc:
        if not str(exc).startswith(_MLX_WRITE_ERRORS):
            raise
        free = _free_bytes(Path(target))
        cause = ("no space left on the device" if free is not None and free < _LOW_SPACE
                 else first_line(exc))
        raise WriteError(f"{target}: cannot write ({cause})") from None


def _free_bytes(path: Path) -> int | None:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check_writable(path: Path) -> None:
    """Refuse, before any long work, an output path that cannot be created or written.

    Creates nothing: a file is made and removed in `path`, or in its nearest existing
    ancestor when `path` does not exist yet.
    """
    path = Path(path).expanduser()
    probe_dir = path
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise WriteError(f"{path}: cannot write ({probe_dir} is not a directory)")
    with writing(path):
        fd, probe = tempfile.mkstemp(prefix=".zephyr-local-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)


def write_via(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it over `path`.

    The file gets the mode a plain `open()` would give it (0644 under the usual umask),
    not mkstemp's private 0600.
    """
    path = Path(path)
    tmp = None
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix,
                                       dir=path.parent)
            os.close(fd)
            write(tmp)
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
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
    tmp = temp_dir(out)
    try:
        with writing(out):
            yield tmp
            replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def temp_dir(out: Path) -> Path:
    """A new hidden directory beside `out` to build it in: `.NAME.tmp-PID-XXXX`.

    Those that earlier writers of `out` left behind (killed before they could remove
    them: 4 GB for a 7B model) are removed first, unless their process still runs.
    """
    out = Path(out)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        tmp.chmod(0o777 & ~umask())  # mkdtemp's 0700 would make the result private to this user
    return tmp


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the `.NAME.tmp-*` directories of `out` whose owning process is gone."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.tmp-(?:(\d+)-)?")
    for entry in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        match = pattern.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        if match.group(1):
            if _alive(int(match.group(1))):
                continue
        elif time.time() - entry.stat().st_mtime < _LEGACY_STALE_S:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def file_size(path: Path) -> int:
    """Bytes of a file; 0 if it is gone (or cannot be read) by now."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


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
