"""Saved KV caches: conversations that resume without re-reading their history.

mlx-lm writes a prompt cache to a safetensors file and reads it back
(`save_prompt_cache`, `load_prompt_cache`), but its chat and server keep caches
in memory only. This module adds what makes a cache safe to reuse in a later run:
each file records the model (path and a fingerprint of its config, tokenizer and
weight headers), the adapter (a hash of its weights), the chat template (a hash of
a probe conversation's token ids), the KV quantization, and the exact token ids
the cache holds. A cache is used only if every field matches and its header
describes exactly the tensors this model's cache would have; a corrupt, truncated
or foreign file is ignored (and replaced on the next save), never trusted.

Files live in `kv-cache/` beside the history database, written atomically, one per
chat conversation (`<history>-<id>`), or content-addressed for `generate --messages`
(`gen-<hash>`: found again as the saved cache sharing the longest token prefix with
the new prompt). All of them together stay under a size cap, least recently used
evicted first.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zephyr_local.atomic import file_size, write_via
from zephyr_local.errors import ZephyrError
from zephyr_local.kv_layout import check_loaded, check_tables, compact, head_dim

DIR_NAME = "kv-cache"
SUFFIX = ".safetensors"
FORMAT = "zephyr-local-kv-1"
MAX_GB_ENV = "ZEPHYR_LOCAL_KV_CACHE_MAX_GB"
DEFAULT_MAX_GB = 4.0
KV_BITS = (4, 8)
KV_GROUP_SIZE = 64  # mlx-lm's default; 32 for heads narrower than 64 (the random test model)
IDENTITY_FIELDS = ("model", "model_fingerprint", "adapter", "adapter_fingerprint", "template",
                   "kv_bits", "kv_group_size")
# A conversation with every role: its token ids change whenever the template or tokenizer does.
_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
          {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]


def max_bytes(max_gb: float | None = None) -> int:
    """The cap on all saved caches: `max_gb`, else $ZEPHYR_LOCAL_KV_CACHE_MAX_GB, else 4 GB.

    0 turns saving (and loading) off.
    """
    if max_gb is None:
        raw = os.environ.get(MAX_GB_ENV)
        if raw is None or not raw.strip():
            max_gb = DEFAULT_MAX_GB
        else:
            try:
                max_gb = float(raw)
            except ValueError:
                raise ZephyrError(f"{MAX_GB_ENV}={raw!r}: not a number of gigabytes") from None
    if not max_gb >= 0 or max_gb == float("inf"):
        raise ZephyrError(f"KV cache cap {max_gb!r} GB: give a number >= 0 (0 turns it off)")
    return int(max_gb * 1e9)


def group_size_for(config: dict, kv_bits: int | None) -> int:
    """The quantization group of a KV cache: 64, or 32 when the head is narrower."""
    if kv_bits is None:
        return 0
    if kv_bits not in KV_BITS:
        raise ZephyrError(f"--kv-bits {kv_bits}: choose {' or '.join(map(str, KV_BITS))}")
    width = head_dim(config)
    for group in (KV_GROUP_SIZE, 32):
        if width % group == 0:
            return group
    raise ZephyrError(f"--kv-bits needs a head size divisible by 32 (this model's is {width})")


# -- identity ------------------------------------------------------------------


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:32]


def model_fingerprint(path: Path) -> str:
    """A hash of the config, tokenizer files and each weight file's header, size and mtime."""
    parts = []
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        f = path / name
        parts.append(f.read_bytes() if f.exists() else b"-")
    for shard in sorted(path.glob("*.safetensors")):
        st = shard.stat()
        with open(shard, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = fh.read(min(n, 100 * 2**20))
        parts += [shard.name.encode(), f"{st.st_size}:{st.st_mtime_ns}".encode(), header]
    return _digest(*parts)


def adapter_fingerprint(path: Path | None) -> str:
    """A hash of an adapter's config and weights ("" without one)."""
    if path is None:
        return ""
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapters.safetensors"):
        with open(Path(path) / name, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:32]


def template_fingerprint(tokenizer) -> str:
    """A hash of the token ids the template gives a probe conversation."""
    from zephyr_local.template import encode

    return _digest(json.dumps(encode(tokenizer, _PROBE)).encode())


def identity(loaded, kv_bits: int | None = None) -> dict[str, str]:
    """What a saved cache must have been made with to be reused by `loaded` (a LoadedModel)."""
    adapter = loaded.adapter_path
    return {
        "model": str(Path(loaded.path).resolve()),
        "model_fingerprint": model_fingerprint(Path(loaded.path)),
        "adapter": str(Path(adapter).resolve()) if adapter else "",
        "adapter_fingerprint": adapter_fingerprint(adapter),
        "template": template_fingerprint(loaded.tokenizer),
        "kv_bits": str(kv_bits or ""),
        "kv_group_size": str(group_size_for(loaded.config, kv_bits)),
    }


def conversation_key(history_path: str | Path | None, conversation_id: int) -> str:
    """A chat conversation's file: the database's name and the conversation's id."""
    from zephyr_local.history import default_path

    return f"{Path(history_path or default_path()).stem}-{conversation_id}"


def tokens_key(ident: dict[str, str], tokens: list[int]) -> str:
    """The content address of a cache: `gen-` and a hash of its identity and tokens."""
    return "gen-" + _digest(json.dumps(ident, sort_keys=True).encode(),
                            json.dumps(tokens).encode())[:24]


# -- the store -------------------------------------------------------------------


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids `a` and `b` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Candidate:
    """A saved cache that fits: where it is, the tokens it holds, how many match the prompt."""

    path: Path
    tokens: list[int]
    common: int


class KVStore:
    """The saved caches in one directory, under one size cap."""

    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.rejected: list[tuple[Path, str]] = []  # the last files ignored, and why

    @classmethod
    def beside(cls, history_path: str | Path | None, max_gb: float | None = None) -> KVStore:
        """The store next to a history database (None: the default database)."""
        from zephyr_local.history import default_path

        db = Path(history_path) if history_path else default_path()
        return cls(db.expanduser().parent / DIR_NAME, max_bytes(max_gb))

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}{SUFFIX}"

    def entries(self) -> list[Path]:
        """Saved cache files, least recently used first."""
        if not self.root.is_dir():
            return []
        files = [p for p in self.root.glob(f"*{SUFFIX}") if not p.name.startswith(".")]
        return sorted(files, key=_mtime)

    def total_bytes(self) -> int:
        return sum(file_size(p) for p in self.entries())

    def remove(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def _reject(self, path: Path, reason: str, delete: bool = False) -> None:
        self.rejected = [*self.rejected[-31:], (path, reason)]
        if delete:
            path.unlink(missing_ok=True)

    def read(self, path: Path, ident: dict[str, str], num_layers: int,
             config: dict) -> list[int] | None:
        """The token ids a saved cache holds, if it is whole and made for `ident`; else None."""
        from zephyr_local.safetensors_header import read_header_and_metadata

        try:
            table, meta = read_header_and_metadata(path)
        except (ZephyrError, OSError) as exc:
            self._reject(path, f"unreadable: {exc}", delete=isinstance(exc, ZephyrError))
            return None
        own = {k[2:]: v for k, v in meta.items() if k.startswith("0.")}
        if own.get("format") != FORMAT:
            self._reject(path, "not a zephyr-local KV cache", delete=True)
            return None
        wrong = [f for f in IDENTITY_FIELDS if own.get(f) != ident[f]]
        if wrong:
            self._reject(path, f"made for another {', '.join(wrong)}")
            return None
        try:
            tokens = json.loads(own["tokens"])
            if not (isinstance(tokens, list) and all(type(t) is int for t in tokens)):
                raise ValueError("token ids are not integers")
            check_tables(table, meta, len(tokens), num_layers, config, ident)
        except (KeyError, ValueError) as exc:
            self._reject(path, f"corrupt: {exc}", delete=True)
            return None
        return tokens

    def find(self, ident: dict[str, str], ids: list[int], num_layers: int, config: dict,
             key: str | None = None) -> Candidate | None:
        """The saved cache sharing the longest token prefix with `ids`.

        With `key`, only that conversation's own file is considered; without, every
        file (content-addressed lookup, ties go to the smaller file).
        """
        paths = [self.path(key)] if key is not None else self.entries()
        best = None
        for path in paths:
            if not path.exists():
                continue
            tokens = self.read(path, ident, num_layers, config)
            if not tokens:
                continue
            common = common_prefix_len(tokens, ids)
            if best is None or (common, -len(tokens)) > (best.common, -len(best.tokens)):
                best = Candidate(path, tokens, common)
        return best if best is not None and best.common > 0 else None

    def load(self, candidate: Candidate, ident: dict[str, str], config: dict):
        """mlx-lm's load_prompt_cache on a checked file; None (file dropped) if it fails.

        Runs on the MLX thread.
        """
        from mlx_lm.models.cache import load_prompt_cache

        try:
            cache = load_prompt_cache(str(candidate.path))
            check_loaded(cache, len(candidate.tokens), ident)
        except Exception as exc:  # mlx reports a bad file as a bare RuntimeError or ValueError
            self._reject(candidate.path, f"cannot load: {exc}", delete=True)
            return None
        _touch(candidate.path)
        return cache

    def save(self, key: str, cache, tokens: list[int], ident: dict[str, str]) -> Path | None:
        """Write `cache` (holding `tokens`) as `key`, then evict to the cap.

        Runs on the MLX thread. Returns the path, or None when it could not be kept
        (a cache bigger than the cap alone, or a failed write: nothing is left behind).
        """
        from mlx_lm.models.cache import save_prompt_cache

        if not self.enabled or not tokens:
            return None
        path = self.path(key)
        meta = {"format": FORMAT, **ident, "tokens": json.dumps(tokens),
                "saved_at": f"{time.time():.3f}"}
        try:
            write_via(path, lambda tmp: save_prompt_cache(tmp, compact(cache), meta))
        except (ZephyrError, OSError):
            return None
        self.evict(keep=path)
        return path if path.exists() else None

    def drop_superseded(self, old: Candidate, new: Path | None) -> None:
        """Delete the content-addressed file that `new` grew from.

        The new file starts with everything of the old one that its prompt shared; what
        it lacks is the old reply as sampled, which a conversation replayed from its
        text re-tokenizes and so never matches again. One file per conversation remains.
        """
        if new is not None and old.path != new and old.path.name.startswith("gen-"):
            old.path.unlink(missing_ok=True)

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete the least recently used files until all fit the cap (`keep` goes last)."""
        files = self.entries()
        if keep is not None and keep in files:
            files.remove(keep)
            files.append(keep)
        total = sum(file_size(p) for p in files)
        removed = []
        for path in files:
            if total <= self.max_bytes:
                break
            total -= file_size(path)
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _touch(path: Path) -> None:
    """Mark a file as just used (eviction goes by modification time)."""
    try:
        os.utime(path)
    except OSError:
        pass
