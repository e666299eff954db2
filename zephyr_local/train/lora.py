"""LoRA layers from mlx-lm on a loaded model, and adapters in mlx-lm's on-disk format."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from zephyr_local.atomic import write_via as atomic_write_bytes
from zephyr_local.errors import ModelFormatError
from zephyr_local.safetensors_header import read_header
from zephyr_local.train.config import TARGET_PATHS, LoRAConfig

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"


def apply_lora(model, cfg: LoRAConfig) -> int:
    """Freeze the model and wrap the target linears of the last `cfg.layers` blocks.

    Returns the number of trainable parameters.
    """
    from mlx_lm.tuner.utils import linear_to_lora_layers

    n_blocks = len(model.layers)
    layers = n_blocks if cfg.layers < 0 else cfg.layers
    if layers == 0 or layers < -1:
        raise ModelFormatError(f"--lora-layers {layers}: give a positive count, or -1 for all")
    if layers > n_blocks:
        raise ModelFormatError(f"--lora-layers {layers}: the model has only {n_blocks} layers")
    unknown = [t for t in cfg.targets if t not in TARGET_PATHS]
    if unknown:
        raise ModelFormatError(f"unknown LoRA target(s) {', '.join(unknown)} "
                               f"(choose from {', '.join(TARGET_PATHS)})")
    model.freeze()
    linear_to_lora_layers(model, layers, mlx_lora_parameters(cfg))
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def mlx_lora_parameters(cfg: LoRAConfig) -> dict:
    return {"rank": cfg.rank, "scale": cfg.scale, "dropout": cfg.dropout,
            "keys": [TARGET_PATHS[t] for t in cfg.targets]}


def adapter_config(cfg: LoRAConfig, n_blocks: int, extra: dict | None = None) -> dict:
    """adapter_config.json as mlx-lm writes it (plus our own fields, which it ignores)."""
    layers = n_blocks if cfg.layers < 0 else cfg.layers
    return {"fine_tune_type": "lora", "num_layers": layers,
            "lora_parameters": mlx_lora_parameters(cfg), "lora_alpha": cfg.alpha,
            **(extra or {})}


def lora_config_from(config: dict) -> LoRAConfig:
    """The LoRAConfig an adapter_config.json describes."""
    p = config.get("lora_parameters") or {}
    try:
        rank = int(p["rank"])
        keys = p.get("keys") or [TARGET_PATHS[t] for t in TARGET_PATHS]
        targets = tuple(k.rsplit(".", 1)[-1] for k in keys)
        alpha = float(config.get("lora_alpha", p["scale"] * rank))
        return LoRAConfig(rank=rank, alpha=alpha, dropout=float(p.get("dropout", 0.0)),
                          layers=int(config["num_layers"]), targets=targets)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"adapter_config.json: missing or bad field ({exc})") from None


def adapter_weights(model) -> dict:
    return dict(tree_flatten(model.trainable_parameters()))


def save_adapter(out: Path, model, config: dict) -> None:
    """adapters.safetensors + adapter_config.json, each written atomically."""
    weights = adapter_weights(model)
    atomic_write_bytes(out / ADAPTER_FILE, lambda p: mx.save_safetensors(p, weights))
    text = json.dumps(config, indent=2)
    atomic_write_bytes(out / CONFIG_FILE, lambda p: Path(p).write_text(text))


def read_adapter_config(path: Path) -> dict:
    from zephyr_local.loading import check_adapter_dir

    return check_adapter_dir(Path(path))


def load_adapter_into(model, path: Path) -> LoRAConfig:
    """loading.attach_adapter (the one adapter loader), and the LoRAConfig it describes.

    Raises:
        ModelFormatError: a full fine-tune, or an adapter for another model.
    """
    from zephyr_local.loading import attach_adapter

    cfg = lora_config_from(read_adapter_config(path))  # a bad field fails before any work
    attach_adapter(model, Path(path))
    return cfg


def check_adapter_shapes(model, weights_file: Path) -> None:
    """Every tensor of the adapter file must exist in the model with the same shape."""
    params = adapter_weights(model)
    for name, info in read_header(weights_file).items():
        shape = tuple(info.get("shape", ()))
        if name not in params:
            raise ModelFormatError(f"{weights_file}: {name} (shape {shape}) has no place in "
                                   "the base model: the adapter was trained for another model")
        if tuple(params[name].shape) != shape:
            raise ModelFormatError(
                f"{weights_file}: {name} has shape {shape} but the base model needs "
                f"{tuple(params[name].shape)}: the adapter was trained for another model")


_CHECKPOINTED: dict = {}


def enable_grad_checkpoint(model) -> None:
    """Recompute each block's activations in the backward pass (less memory, more time).

    mlx-lm's `grad_checkpoint` patches `__call__` on the block *class*, which would
    also slow every other model in the process; this swaps in a subclass per instance.
    """
    for layer in model.layers:
        base = type(layer)
        if base in _CHECKPOINTED.values():
            continue
        if base not in _CHECKPOINTED:
            _CHECKPOINTED[base] = type(f"Checkpointed{base.__name__}", (base,),
                                       {"__call__": _checkpointed(base.__call__)})
        layer.__class__ = _CHECKPOINTED[base]


def _checkpointed(fn):
    def call(self, *args, **kwargs):
        def inner(params, *args, **kwargs):
            self.update(params)
            return fn(self, *args, **kwargs)

        return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

    return call
