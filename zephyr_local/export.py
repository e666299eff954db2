"""`export-peft`: an mlx-lm LoRA adapter in Hugging Face PEFT's format.

mlx-lm's `LoRALinear` computes `y = x W^T + scale * (x @ lora_a) @ lora_b` with
`lora_a` [in, r] and `lora_b` [r, out]; PEFT computes `y = x W^T + (alpha / r) *
x A^T B^T` with `A` [r, in] and `B` [out, r]. So `A = lora_a^T`, `B = lora_b^T`
and `alpha = scale * r`: the weight delta `B @ A * alpha / r` is the same matrix.
Neither library converts between the two, hence this module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from zephyr_local.atomic import atomic_dir
from zephyr_local.errors import ModelFormatError

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
# mlx-lm's module path of one adapted linear: model.layers.N.<block path>.lora_a|lora_b
_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(lora_a|lora_b)$")


def peft_name(mlx_name: str) -> str:
    """`model.layers.3.self_attn.q_proj.lora_a` ->
    `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (PeftModel's keys)."""
    m = _NAME.match(mlx_name)
    if m is None:
        raise ModelFormatError(f"adapter tensor {mlx_name!r} is not a LoRA matrix of a layer")
    layer, module, which = m.groups()
    return f"base_model.model.model.layers.{layer}.{module}.lora_{which[-1].upper()}.weight"


def peft_config(adapter_config: dict, weights: dict, base_model: str) -> dict:
    """PEFT's adapter_config.json for an mlx-lm adapter config and its weights."""
    if adapter_config.get("fine_tune_type", "lora") != "lora":
        raise ModelFormatError(
            f"fine_tune_type {adapter_config.get('fine_tune_type')!r}: only LoRA adapters "
            "export to PEFT (a DoRA adapter can be fused instead: `zephyr-local fuse`)")
    params = adapter_config.get("lora_parameters") or {}
    try:
        rank, scale = int(params["rank"]), float(params["scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"adapter_config.json: missing or bad field ({exc})") from None
    alpha = scale * rank  # what mlx-lm applies, whatever lora_alpha a config also records
    matches = [_NAME.match(n) for n in weights]
    layers = sorted({int(m.group(1)) for m in matches if m})
    targets = sorted({m.group(2).rsplit(".", 1)[-1] for m in matches if m})
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": int(alpha) if alpha == int(alpha) else alpha,
        "lora_dropout": float(params.get("dropout", 0.0)), "target_modules": targets,
        "layers_to_transform": layers, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "revision": None,
    }


def export_peft(adapter: Path, out: Path, base_model: str | None = None,
                force: bool = False) -> Path:
    """Write `adapter` (mlx-lm format) as a PEFT adapter directory at `out`.

    Args:
        adapter: a directory with adapters.safetensors and adapter_config.json.
        out: the PEFT directory to write (adapter_model.safetensors, adapter_config.json).
        base_model: the hub id for `base_model_name_or_path` (default: traced back
            from the adapter's base model, else its recorded path).
        force: replace `out` if it exists.

    Raises:
        ModelFormatError: not a LoRA adapter, or tensors that are not LoRA matrices.
        ZephyrError: `out` exists without `force`.
    """
    import mlx.core as mx

    from zephyr_local.cards import hub_id
    from zephyr_local.errors import ZephyrError
    from zephyr_local.loading import check_adapter_dir

    adapter, out = Path(adapter), Path(out).expanduser()
    if out.exists() and not force:
        raise ZephyrError(f"{out} already exists: pass --force to replace it")
    config = check_adapter_dir(adapter)
    weights = mx.load(str(adapter / "adapters.safetensors"))
    recorded = config.get("base_model")
    base = base_model or (hub_id(recorded) if recorded else None) or recorded or ""
    peft = peft_config(config, weights, base)
    # [in, r] -> A [r, in]; [r, out] -> B [out, r]: PEFT stores nn.Linear weights (out, in).
    tensors = {peft_name(n): mx.contiguous(w.T) for n, w in weights.items()}
    with atomic_dir(out) as tmp:
        mx.save_safetensors(str(tmp / PEFT_WEIGHTS), tensors, metadata={"format": "pt"})
        (tmp / PEFT_CONFIG).write_text(json.dumps(peft, indent=2) + "\n", encoding="utf-8")
    return out
