"""Resumable checkpoints: adapter, optimizer state, step, data order and RNG scheme.

Each checkpoint is a directory `checkpoints/step-NNNNNN` built under a temporary
name and renamed into place; `checkpoints/latest.json` is then replaced
atomically. A failure while writing (disk full, Ctrl-C) leaves the previous
checkpoint and pointer intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map_with_path

from zephyr_local.atomic import atomic_dir
from zephyr_local.atomic import write_via as atomic_write_bytes
from zephyr_local.errors import ZephyrError
from zephyr_local.train.lora import ADAPTER_FILE, adapter_weights

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
KEEP = 2  # checkpoints kept on disk


def checkpoints_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def save_checkpoint(out: Path, model, optimizer, state: dict) -> Path:
    """Write a checkpoint for `state["step"]` and point latest.json at it."""
    root = checkpoints_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:06d}"
    with atomic_dir(final) as tmp:
        mx.save_safetensors(str(tmp / ADAPTER_FILE), adapter_weights(model))
        opt = {k: v for k, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)}
        mx.save_safetensors(str(tmp / OPTIMIZER_FILE), opt)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    pointer = json.dumps({"checkpoint": final.name, "step": state["step"]})
    atomic_write_bytes(root / "latest.json", lambda p: Path(p).write_text(pointer))
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The directory latest.json points at, or None if the run has no checkpoint."""
    pointer = checkpoints_dir(out) / "latest.json"
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError):
        raise ZephyrError(f"{pointer}: corrupt checkpoint pointer") from None
    path = checkpoints_dir(out) / name
    if not (path / STATE_FILE).exists():
        raise ZephyrError(f"{path}: checkpoint is incomplete")
    return path


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore adapter weights and optimizer state in place; return the saved state."""
    model.load_weights(str(path / ADAPTER_FILE), strict=False)
    saved = mx.load(str(path / OPTIMIZER_FILE))
    optimizer.init(model.trainable_parameters())
    optimizer.state = tree_map_with_path(
        lambda p, v: saved.get(p, v) if isinstance(v, mx.array) else v, optimizer.state
    )
    if "step" in saved:
        optimizer.state["step"] = saved["step"]
    return json.loads((path / STATE_FILE).read_text())
