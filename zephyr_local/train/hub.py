"""Hugging Face dataset ids as training data: fetched once, converted to JSONL, then offline.

huggingface_hub downloads the split's files (parquet or JSONL); pyarrow reads
parquet. The converted JSONL lives in <home>/cache/datasets and is what every
later run reads, with no network.
"""

from __future__ import annotations

import json
from pathlib import Path

from zephyr_local import store
from zephyr_local.atomic import write_via as atomic_write_bytes
from zephyr_local.train.rows import DataError

PATTERNS = ("data/{split}-*.parquet", "data/{split}.parquet", "{split}-*.parquet",
            "data/{split}.jsonl", "{split}.jsonl", "{split}/*.parquet")


def parse_spec(spec: str, split: str) -> tuple[str, str]:
    """("owner/name", split) from "owner/name[:split]"; `split` is the default."""
    repo, _, given = spec.partition(":")
    return repo, given or split


def cache_path(repo: str, split: str) -> Path:
    return store.home_dir() / "cache" / "datasets" / repo.replace("/", "__") / f"{split}.jsonl"


def _snapshot(repo: str, split: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = [p.format(split=split) for p in PATTERNS]
    try:
        return Path(snapshot_download(repo, repo_type="dataset", allow_patterns=patterns,
                                      local_files_only=True))
    except Exception:  # not cached yet: download
        pass
    try:
        return Path(snapshot_download(repo, repo_type="dataset", allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated...
        raise DataError(f"dataset {repo!r}: cannot download ({str(exc).splitlines()[0][:200]})"
                        ) from None


def _rows(files: list[Path]):
    for f in files:
        if f.suffix == ".jsonl":
            yield from (json.loads(line) for line in f.read_text().splitlines() if line.strip())
            continue
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError("reading parquet datasets needs pyarrow: pip install pyarrow") from None
        yield from pq.read_table(f).to_pylist()


def dataset_file(spec: str, split: str = "train") -> Path:
    """The local JSONL of a hub dataset split, downloading and converting it the first time.

    Raises:
        DataError: the split does not exist, or the download failed.
    """
    repo, split = parse_spec(spec, split)
    out = cache_path(repo, split)
    if out.exists():
        return out
    snap = _snapshot(repo, split)
    files = sorted({f for p in PATTERNS for f in snap.glob(p.format(split=split))})
    if not files:
        found = sorted({f.name.split("-")[0].split(".")[0] for f in snap.rglob("*.parquet")})
        hint = f" (found: {', '.join(found)})" if found else ""
        raise DataError(f"dataset {repo!r} has no split {split!r}{hint}: name one as {repo}:SPLIT")

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in _rows(files):
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    atomic_write_bytes(out, write)
    return out
