"""Load a local model safely: safetensors only, Mistral/Llama only, never the network.

mlx-lm does the loading; this module checks the files first so that every way a
model directory can be wrong becomes a one-line error naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zephyr_local.errors import ModelFormatError, ModelNotFoundError
from zephyr_local.model_config import check_adapter_config, check_model_config
from zephyr_local.safetensors_header import read_header

SUPPORTED_MODEL_TYPES = ("mistral", "llama")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    return data


def _check_tokenizer_files(path: Path) -> None:
    _read_json(path / "tokenizer_config.json")
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer.model").exists():
        raise ModelFormatError(f"{path / 'tokenizer.model'}: missing (and no tokenizer.json)")


def check_model_dir(path: Path) -> dict:
    """Validate a model directory and return its config.

    Raises:
        ModelFormatError: naming the file that is missing, corrupt or unsupported.
    """
    config = _read_json(path / "config.json")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelFormatError(
            f"{path / 'config.json'}: model_type {model_type!r} is not supported "
            f"(zephyr-local runs {' and '.join(SUPPORTED_MODEL_TYPES)} models)"
        )
    if config.get("auto_map"):
        raise ModelFormatError(
            f"{path / 'config.json'}: the model asks for custom code (auto_map); "
            "zephyr-local never runs remote code (trust_remote_code is refused)"
        )
    check_model_config(config, path / "config.json")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelFormatError(
                f"{path / pickles[0]}: pickle checkpoints are refused (they can run code); "
                "use a safetensors copy of the model"
            )
        raise ModelFormatError(f"{path}: no *.safetensors weights")
    for shard in shards:
        read_header(shard)
    _check_tokenizer_files(path)
    return config


def check_adapter_dir(path: Path) -> dict:
    """Validate an mlx-lm adapter directory and return its adapter_config.json."""
    if not path.is_dir():
        raise ModelNotFoundError(f"adapter {str(path)!r} not found: give an adapter directory")
    config = _read_json(path / "adapter_config.json")
    weights = path / "adapters.safetensors"
    if not weights.exists():
        raise ModelFormatError(f"{weights}: missing")
    check_adapter_config(config, path / "adapter_config.json", list(read_header(weights)))
    return config


@dataclass
class LoadedModel:
    """A model and tokenizer in memory, with where they came from."""

    model: Any
    tokenizer: Any  # mlx-lm TokenizerWrapper
    config: dict
    path: Path
    adapter_path: Path | None = None
    extras: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def context_window(self) -> int:
        """Zephyr's attention window: the default context budget."""
        return int(
            self.config.get("sliding_window") or self.config.get("max_position_embeddings") or 4096
        )

    @property
    def quantization(self) -> dict | None:
        return self.config.get("quantization")


def load(path: Path, adapter_path: Path | None = None, lazy: bool = False) -> LoadedModel:
    """Load a checked model directory (and optional LoRA adapter) with mlx-lm, offline."""
    config = check_model_dir(path)
    if adapter_path is not None:
        check_adapter_dir(adapter_path)
    from mlx_lm.utils import load_model

    try:
        model, config = load_model(path, lazy=lazy)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelFormatError(f"{path}: cannot load weights ({_first_line(exc)})") from None
    if adapter_path is not None:
        attach_adapter(model, Path(adapter_path))
    tokenizer = _tokenizer(path, config)
    return LoadedModel(model, tokenizer, config, path, adapter_path)


def attach_adapter(model, path: Path) -> dict:
    """Wrap the model as the adapter says and load its weights (eval mode); returns the
    adapter's config.

    The project's one adapter loader: mlx-lm's `load_adapters` does the wrapping and
    loading, so LoRA and DoRA adapters (`fine_tune_type: dora`) made by mlx-lm load exactly
    as mlx-lm loads them. What it adds: the model is frozen first, so the adapter's matrices
    are its only trainable parameters, and an adapter for another model is refused in one
    line instead of mlx-lm's shape error.

    Raises:
        ModelFormatError: a full fine-tune, or an adapter for another model.
    """
    from mlx_lm.utils import load_adapters

    path = Path(path)
    config = check_adapter_dir(path)
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise ModelFormatError(f"{path}: fine_tune_type {kind!r} is not an adapter "
                               "(only lora and dora adapters load here)")
    try:
        layers = int(config["num_layers"])
        params = config["lora_parameters"]
        int(params["rank"]), float(params["scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{path}: adapter_config.json: missing or bad field ({exc})") \
            from None
    if layers > len(model.layers):
        raise ModelFormatError(f"{path}: the adapter adapts {layers} layers but the base "
                               f"model has {len(model.layers)}: it was trained for another model")
    model.freeze()
    try:
        load_adapters(model, str(path))
    except ValueError as exc:
        raise ModelFormatError(f"{path}: the adapter was trained for another model "
                               f"({_first_line(exc)})") from None
    model.eval()  # ready for inference; the trainer switches dropout back on
    return config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines()]
    if lines[0].endswith(":") and len(lines) > 1:  # a header over a list (mlx-lm's shape errors)
        return " ".join(lines[:3])[:300]
    return lines[0][:300]


def load_tokenizer(path: Path):
    """Only the tokenizer of a model directory (for `tokenize`): no weights read."""
    config = _read_json(path / "config.json")
    _check_tokenizer_files(path)
    return _tokenizer(path, config)


def _tokenizer(path: Path, config: dict):
    """mlx-lm's tokenizer wrapper, from local files only (no hub lookups)."""
    from mlx_lm.utils import load_tokenizer as _load

    try:
        return _load(path, {"local_files_only": True}, eos_token_ids=config.get("eos_token_id"))
    except Exception as exc:  # transformers raises many types for broken files
        raise ModelFormatError(f"{path}: cannot load the tokenizer ({_first_line(exc)})") from None
