"""metrics.jsonl: one JSON object per optimizer step (and per evaluation), appended."""

from __future__ import annotations

import json
import os
from pathlib import Path

from zephyr_local.atomic import write_via as atomic_write_bytes
from zephyr_local.atomic import writing
from zephyr_local.errors import ZephyrError


class MetricsLog:
    """An append-only JSONL log that a resumed run trims back to its checkpoint."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a symlink planted as metrics.jsonl must not redirect the appends
            # out of the run directory (truncate_after replaces it instead of following it).
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError:
                if self.path.is_symlink():
                    raise ZephyrError(f"{self.path}: is a symlink; refusing to append through "
                                      "it (remove it)") from None
                raise
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        return records

    def truncate_after(self, step: int) -> None:
        """Keep only records up to `step` (atomically)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write_bytes(self.path, lambda p: Path(p).write_text(text, encoding="utf-8"))
