"""Read and check safetensors headers without loading tensors.

mlx can load a safetensors file but reports a truncated or corrupt one with a
bare C++ error; reading the header first lets us name the file and the problem.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from zephyr_local.errors import ModelFormatError

MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_header(path: str | os.PathLike) -> dict:
    """The tensor table of a safetensors file (without `__metadata__`).

    Raises:
        ModelFormatError: the file is not safetensors, or is truncated.
    """
    return read_header_and_metadata(path)[0]


def read_header_and_metadata(path: str | os.PathLike) -> tuple[dict, dict]:
    """The tensor table of a safetensors file and its `__metadata__` (string to string).

    Raises:
        ModelFormatError: the file is not safetensors, or is truncated.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ModelFormatError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise ModelFormatError(f"{path}: corrupt or truncated safetensors header")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelFormatError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: corrupt safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ModelFormatError(f"{path}: corrupt safetensors metadata")
    end = 0
    for name, entry in header.items():
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise ModelFormatError(f"{path}: corrupt safetensors entry for {name!r}") from None
    if 8 + n + end > size:
        raise ModelFormatError(
            f"{path}: truncated: the header promises {8 + n + end} bytes, the file has {size}"
            " (re-download it with `zephyr-local pull`)"
        )
    return header, metadata
