"""Reference log-probs, computed once (float32, dropout off) and cached on disk.

The reference is the policy's own weights with the LoRA contribution switched
off (or, when continuing from an adapter, that starting adapter, frozen): no
second copy of the model. Its log-probs never change during training, so they
are computed before the first step and stored under a key that hashes the model
files, the starting adapter, and the token ids and completion spans of the data
(which covers the data, the tokenizer and the truncation settings).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from zephyr_local.atomic import write_via as atomic_write_bytes

CACHE_VERSION = 1
SAMPLE_BYTES = 1 << 20


def _file_fingerprint(path: Path, h) -> None:
    """Size, and the first and last MiB (safetensors header and tail) of a file."""
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > 2 * SAMPLE_BYTES:
            f.seek(size - SAMPLE_BYTES)
            h.update(f.read())


def model_fingerprint(model_dir: Path, start_adapter: Path | None) -> str:
    """A hash of the model's config and weight files and of the starting adapter."""
    h = hashlib.sha256()
    model_dir = Path(model_dir)
    h.update((model_dir / "config.json").read_bytes())
    for shard in sorted(model_dir.glob("*.safetensors")):
        _file_fingerprint(shard, h)
    if start_adapter is not None:
        h.update((Path(start_adapter) / "adapters.safetensors").read_bytes())
    return h.hexdigest()


def data_fingerprint(seqs) -> str:
    """A hash of every sequence's ids and scored spans, in order."""
    h = hashlib.sha256()
    for s in seqs:
        h.update(np.asarray(s.ids, dtype=np.int32).tobytes())
        h.update(json.dumps(s.spans).encode())
    return h.hexdigest()


def cache_key(model_fp: str, seqs) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{model_fp}:{data_fingerprint(seqs)}".encode())
    return h.hexdigest()[:32]


def reference_logps(model, seqs, model_fp: str, cache_dir: Path, batch_size: int,
                    base_only: bool, progress=None, dist=None) -> tuple[np.ndarray, bool, Path]:
    """Summed completion log-probs of `seqs` under the reference.

    Args:
        model: the policy with LoRA layers, in its starting state.
        seqs: the Sequences to score (chosen then rejected of every pair, say).
        model_fp: model_fingerprint() of the base and starting adapter.
        cache_dir: where cached arrays live.
        batch_size: rows per forward pass.
        base_only: switch the adapters off (a fresh run); False keeps a starting adapter.
        progress: called as `progress(done, total)` after each batch that is computed.
        dist: a distributed.Dist: the ranks split the rows, every rank gets all of
            them, and rank 0 alone reads and writes the cache (its disk holds the run).

    Returns:
        (logps [len(seqs)] float32, whether it came from the cache, the cache file).
    """
    from zephyr_local.train.distributed import Dist, scorer
    from zephyr_local.train.logprobs import adapters_off

    dist = dist or Dist()
    path = Path(cache_dir) / f"{cache_key(model_fp, seqs)}.npy"
    cached = _read_cache(path, len(seqs)) if dist.is_main else None
    if dist.size > 1:
        flag = dist.broadcast(mx.array([float(cached is not None)]), "the reference cache check")
        if flag.item():
            mine = cached if cached is not None else np.zeros(len(seqs), np.float32)
            cached = np.array(dist.broadcast(mx.array(mine), "the reference broadcast"))
    if cached is not None:
        return cached, True, path
    model.eval()  # no dropout in the reference
    score = scorer(dist)
    if base_only:
        with adapters_off(model):
            logps, _ = score(model, seqs, batch_size, progress=progress)
    else:
        logps, _ = score(model, seqs, batch_size, progress=progress)
    logps = logps.astype(np.float32)
    if dist.is_main:
        atomic_write_bytes(path, lambda p: _save_npy(p, logps))
    return logps, False, path


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        cached = np.load(path)
    except (OSError, ValueError):
        return None  # a damaged cache file is recomputed and replaced
    return cached if cached.shape == (n,) else None


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
