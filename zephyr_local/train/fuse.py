"""Merge a LoRA adapter into the base weights, optionally quantize, and save a model dir.

mlx-lm does the merging (`LoRALinear.fuse`), the quantization (`quantize_model`)
and the saving (`save`); this adds the adapter check, atomic output, and
`--bits` on a base that is already quantized (dequantized first, then requantized).
"""

from __future__ import annotations

import json
from pathlib import Path

from mlx.utils import tree_unflatten

from zephyr_local import loading
from zephyr_local.atomic import atomic_dir
from zephyr_local.backend import COMPUTE_DTYPES, default_dtype
from zephyr_local.errors import ZephyrError
from zephyr_local.quantize import ALLOWED_BITS, cast_floating
from zephyr_local.train.lora import load_adapter_into

FUSE_FILE = ".zephyr-local-fused.json"


def fuse(model_path: Path, adapter: Path, out: Path, bits: int | None = None,
         group_size: int = 64, force: bool = False, dtype: str | None = None) -> Path:
    """Write base + adapter as a plain model directory at `out` (built beside it, renamed).

    `dtype` casts the float parameters (with `bits`: the scales and biases too); None
    keeps the base's, except with `bits`, where it is the backend's fastest.

    Raises:
        ZephyrError: out exists (without force), bad bits or dtype, or an adapter for
            another model.
    """
    from mlx_lm.utils import dequantize_model, quantize_model, save

    out = Path(out).expanduser()
    if out.exists() and not force:
        raise ZephyrError(f"{out} already exists: pass --force to replace it")
    if bits is not None and bits not in ALLOWED_BITS:
        raise ZephyrError(f"--bits {bits}: choose {', '.join(map(str, ALLOWED_BITS))}")
    if dtype is None and bits is not None:
        dtype = default_dtype()
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise ZephyrError(f"--dtype {dtype}: choose {', '.join(COMPUTE_DTYPES)}")
    loaded = loading.load(Path(model_path))
    model, config = loaded.model, dict(loaded.config)
    load_adapter_into(model, Path(adapter))
    requantize = bits is not None and config.get("quantization")
    fused = [(n, m.fuse(dequantize=bool(requantize))) for n, m in model.named_modules()
             if hasattr(m, "fuse")]
    model.update_modules(tree_unflatten(fused))
    if requantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    if dtype is not None:
        cast_floating(model, dtype)
        config["torch_dtype"] = dtype
    if bits is not None:
        model, config = quantize_model(model, config, group_size, bits)
    with atomic_dir(out) as tmp:
        save(tmp, str(model_path), model, loaded.tokenizer, config, donate_model=False)
        record = {"base_model": str(model_path), "adapter": str(adapter), "bits": bits}
        (tmp / FUSE_FILE).write_text(json.dumps(record, indent=2))
        loading.check_model_dir(tmp)
    return out
