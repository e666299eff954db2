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
                    base_only: bool, progress=None) -> tuple[np.ndarray, bool, Path]:
    """Summed completion log-probs of `seqs` under the reference.

    Args:
        model: the policy with LoRA layers, in its starting state.
        seqs: the Sequences to score (chosen then rejected of every pair, say).
        model_fp: model_fingerprint() of the base and starting adapter.
        cache_dir: where cached arrays live.
        batch_size: rows per forward pass.
        base_only: switch the adapters off (a fresh run); False keeps a starting adapter.
        progress: called as `progress(done, total)` after each batch that is computed.

    Returns:
        (logps [len(seqs)] float32, whether it came from the cache, the cache file).
    """
    from zephyr_local.train.logprobs import adapters_off, batched_logps

    path = Path(cache_dir) / f"{cache_key(model_fp, seqs)}.npy"
    if path.exists():
        try:
            cached = np.load(path)
            if cached.shape == (len(seqs),):
                return cached, True, path
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed and replaced
    model.eval()  # no dropout in the reference
    if base_only:
        with adapters_off(model):
            logps, _ = batched_logps(model, seqs, batch_size, progress=progress)
    else:
        logps, _ = batched_logps(model, seqs, batch_size, progress=progress)
    logps = logps.astype(np.float32)
    atomic_write_bytes(path, lambda p: _save_npy(p, logps))
    return logps, False, path


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
