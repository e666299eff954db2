"""Check the fields of config.json and adapter_config.json that mlx-lm reads, before it does.

mlx-lm builds the model from config.json with a dataclass (`llama.ModelArgs`, used for
Mistral too) and the LoRA layers from adapter_config.json with no type checks: a
missing `hidden_size` is a TypeError, `"256"` or null a failure deep in a matmul,
zero heads a ZeroDivisionError, and `fine_tune_type: dora` over LoRA weights loads a
different model without a word. Each is refused here, naming the file and the key.
"""

from __future__ import annotations

import math
from pathlib import Path

from zephyr_local.errors import ModelFormatError

# key -> (required, kind) for what llama.ModelArgs reads; kind "count" is an int >= 1.
MODEL_KEYS = {
    "hidden_size": (True, "count"),
    "num_hidden_layers": (True, "count"),
    "intermediate_size": (True, "count"),
    "num_attention_heads": (True, "count"),
    "vocab_size": (True, "count"),
    "rms_norm_eps": (True, "positive"),
    "num_key_value_heads": (False, "count"),
    "head_dim": (False, "count"),
    "max_position_embeddings": (False, "count"),
    "sliding_window": (False, "count"),
    "rope_theta": (False, "positive"),
    "tie_word_embeddings": (False, "bool"),
}
ADAPTER_TYPES = ("lora", "dora")


def _bad(path: Path, key: str, value, rule: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: {key} is {value!r}: expected {rule}")


def _check(path: Path, key: str, value, kind: str) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "count" and not (isinstance(value, int) and not isinstance(value, bool)
                                and value >= 1):
        raise _bad(path, key, value, "a whole number >= 1")
    if kind == "positive" and not (is_number and math.isfinite(value) and value > 0):
        raise _bad(path, key, value, "a number > 0")
    if kind == "bool" and not isinstance(value, bool):
        raise _bad(path, key, value, "true or false")


def check_model_config(config: dict, path: Path) -> None:
    """Every field mlx-lm reads from a Llama/Mistral config.json, and how they fit together."""
    for key, (required, kind) in MODEL_KEYS.items():
        if key not in config or config[key] is None:
            if required:
                raise ModelFormatError(f"{path}: missing key {key!r}")
            continue
        _check(path, key, config[key], kind)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise ModelFormatError(f"{path}: num_attention_heads {heads} is not a multiple of "
                               f"num_key_value_heads {kv_heads}")
    if not config.get("head_dim") and config["hidden_size"] % heads:
        raise ModelFormatError(f"{path}: hidden_size {config['hidden_size']} is not a "
                               f"multiple of num_attention_heads {heads} (and no head_dim)")
    quant = config.get("quantization")
    if quant is not None:
        if not isinstance(quant, dict):
            raise _bad(path, "quantization", quant, "an object with bits and group_size")
        for key in ("bits", "group_size"):
            _check(path, f"quantization.{key}", quant.get(key), "count")


def check_adapter_config(config: dict, path: Path, weight_names: list[str]) -> None:
    """What mlx-lm's `load_adapters` reads, and that the weights are of the type it names.

    Args:
        weight_names: the tensor names in adapters.safetensors.
    """
    kind = config.get("fine_tune_type", "lora")
    if kind not in ADAPTER_TYPES:
        raise _bad(path, "fine_tune_type", kind, f"one of {', '.join(ADAPTER_TYPES)}")
    _check(path, "num_layers", config.get("num_layers"), "count")
    params = config.get("lora_parameters")
    if not isinstance(params, dict):
        raise ModelFormatError(f"{path}: missing key 'lora_parameters' (an object with rank "
                               "and scale)")
    _check(path, "lora_parameters.rank", params.get("rank"), "count")
    scale = params.get("scale")
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool)
            and math.isfinite(scale)):
        raise _bad(path, "lora_parameters.scale", scale, "a finite number")
    dropout = params.get("dropout", 0.0)
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise _bad(path, "lora_parameters.dropout", dropout, "a number in [0, 1)")
    keys = params.get("keys")
    if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise _bad(path, "lora_parameters.keys", keys, "a list of module names")
    has_magnitude = any(name.endswith(".m") for name in weight_names)
    if kind == "dora" and not has_magnitude:
        raise ModelFormatError(f"{path}: fine_tune_type is 'dora' but the weights are LoRA "
                               "weights (no magnitude vectors .m): set it to 'lora'")
    if kind == "lora" and has_magnitude:
        raise ModelFormatError(f"{path}: fine_tune_type is 'lora' but the weights hold DoRA "
                               "magnitude vectors (.m): set it to 'dora'")
