"""GGUF tensors as MLX arrays, one at a time from the memory-mapped file.

Q4_0, Q4_1 and Q8_0 are exactly MLX's affine quantization with group size 32:
each 32-weight block holds a float16 scale d (and for Q4_1 a minimum m) and its
integers, and MLX computes w = scale * q + bias. Q4_0 is w = d*(q - 8), so
bias = -8d; Q4_1 is w = d*q + m; Q8_0 is w = d*q with signed q, which becomes
unsigned q + 128 with bias = -128d. Only the bit packing differs: a GGUF 4-bit
block stores weight j in the low nibble of byte j and weight j+16 in its high
nibble, while MLX packs consecutive weights, low bits first, into uint32 words.

`mx.load` reads GGUF too, but fails on a whole file when any tensor has another
type (K-quants) and holds every tensor in memory at once; here each tensor is
converted from the `gguf` package's memory map and written out shard by shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zephyr_local.errors import ModelFormatError

GROUP_SIZE = 32
# type -> (bits, bytes per block, offset of the integers, has a stored minimum)
LAYOUT = {"Q4_0": (4, 18, 2, False), "Q4_1": (4, 20, 4, True), "Q8_0": (8, 34, 2, False)}
FLOAT_TYPES = ("F32", "F16")


def _halves(blocks: np.ndarray, start: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)[..., 0]


def repack(data: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A GGUF Q4_0/Q4_1/Q8_0 tensor's bytes [rows, row_bytes] -> MLX (weight, scales, biases).

    Returns uint32 weights [rows, cols * bits / 32] and float32 scales and biases
    [rows, cols / 32].
    """
    bits, block_bytes, offset, has_min = LAYOUT[kind]
    rows = data.shape[0]
    blocks = data.reshape(rows, -1, block_bytes)  # [rows, blocks, bytes]
    d = _halves(blocks, 0).astype(np.float32)
    ints = blocks[..., offset:]
    if bits == 4:
        q = np.concatenate([ints & 0x0F, ints >> 4], axis=-1)  # [rows, blocks, 32], in order
        packed = q[..., 0::2] | (q[..., 1::2] << 4)  # two weights a byte, low nibble first
        biases = _halves(blocks, 2).astype(np.float32) if has_min else -8.0 * d
    else:
        packed = (ints.view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        biases = -128.0 * d
    weight = np.ascontiguousarray(packed, dtype=np.uint8).reshape(rows, -1).view(np.uint32)
    return weight, d, biases


def to_float(tensor) -> np.ndarray:
    """Any GGUF tensor as float32 [rows, cols] (K-quants, IQ, BF16 through the `gguf` package)."""
    kind = tensor.tensor_type.name
    if kind in FLOAT_TYPES:
        return np.asarray(tensor.data, dtype=np.float32)
    from gguf.quants import dequantize

    try:
        return dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    except NotImplementedError:
        raise ModelFormatError(
            f"tensor {tensor.name}: type {kind} cannot be read by the installed `gguf` "
            "package (upgrade it, or convert the file to Q8_0/F16 with llama.cpp)") from None


class ShardWriter:
    """Collects MLX arrays and writes safetensors shards of at most `shard_bytes`."""

    def __init__(self, dst: Path, shard_bytes: int = 2 << 30):
        self.dst, self.shard_bytes = dst, shard_bytes
        self.pending: dict = {}
        self.size = 0
        self.shards: list[dict] = []  # name -> nbytes, per written shard

    def add(self, name: str, array) -> None:
        if self.pending and self.size + array.nbytes > self.shard_bytes:
            self._flush()
        self.pending[name] = array
        self.size += array.nbytes

    def _flush(self) -> None:
        import mlx.core as mx

        index = len(self.shards)
        mx.save_safetensors(str(self.dst / f"part-{index}.safetensors"), self.pending,
                            metadata={"format": "mlx"})
        self.shards.append({n: a.nbytes for n, a in self.pending.items()})
        self.pending, self.size = {}, 0

    def close(self) -> None:
        """Flush, then name the shards as Hugging Face does (and index them if several)."""
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        if n == 1:
            (self.dst / "part-0.safetensors").rename(self.dst / "model.safetensors")
            return
        weight_map, total = {}, 0
        for i, names in enumerate(self.shards):
            shard = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.dst / f"part-{i}.safetensors").rename(self.dst / shard)
            weight_map.update({name: shard for name in names})
            total += sum(names.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
