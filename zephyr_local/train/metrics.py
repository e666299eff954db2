"""metrics.jsonl: one JSON object per optimizer step (and per evaluation), appended."""

from __future__ import annotations

import json
from pathlib import Path

from zephyr_local.atomic import write_via as atomic_write_bytes


class MetricsLog:
    """An append-only JSONL log that a resumed run trims back to its checkpoint."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
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
