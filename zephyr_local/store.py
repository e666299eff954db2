"""The model store: where models live, how a model argument is resolved, what is there.

A model argument is a local directory, a name under the store, or a Hugging Face
id that was already downloaded (by `pull`, or into the Hugging Face cache). Nothing
here touches the network.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from zephyr_local.atomic import dir_size
from zephyr_local.errors import ModelNotFoundError
from zephyr_local.safetensors_header import read_header

DEFAULT_REPO = "HuggingFaceH4/zephyr-7b-beta"
DEFAULT_MODEL = "zephyr-7b-beta-4bit"  # what `quantize` makes of DEFAULT_REPO
SOURCE_FILE = ".zephyr-local-source.json"  # written by `pull`: repo id and revision
# The files of a hub repo that make a model here (what `pull` downloads): never pickles.
MODEL_FILE_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "*.jinja"]
NOT_MODEL_FILE_PATTERNS = ["*.bin.index.json", "*/*"]  # the index of pickle shards; subfolders
_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def home_dir() -> Path:
    """The data directory: `ZEPHYR_LOCAL_HOME`, else the checkout, else ~/.local/share."""
    env = os.environ.get("ZEPHYR_LOCAL_HOME")
    if env:
        return Path(env).expanduser()
    if (_CHECKOUT_ROOT / "pyproject.toml").exists() and (_CHECKOUT_ROOT / "models").is_dir():
        return _CHECKOUT_ROOT
    return Path.home() / ".local" / "share" / "zephyr-local"


def models_dir(override: str | os.PathLike | None = None) -> Path:
    """The model store: `override` (the `--models-dir` flag), else `<home>/models`."""
    return Path(override).expanduser() if override else home_dir() / "models"


def store_name(repo_id: str) -> str:
    """The folder name a hub repo gets in the store: its last path component."""
    return repo_id.rstrip("/").split("/")[-1]


def _hf_cache_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """A complete snapshot of `repo_id` in the Hugging Face cache, found offline."""
    try:
        from huggingface_hub import snapshot_download

        # Only the files a model needs: without patterns, huggingface_hub calls a snapshot
        # downloaded without the repo's pickle files (as mlx-lm and `pull` do) incomplete.
        path = snapshot_download(repo_id, revision=revision, local_files_only=True,
                                 allow_patterns=MODEL_FILE_PATTERNS,
                                 ignore_patterns=NOT_MODEL_FILE_PATTERNS)
    except Exception:  # not cached, or an invalid id: both mean "not here"
        return None
    return Path(path) if (Path(path) / "config.json").exists() else None


def resolve_model(arg: str | os.PathLike | None, store: Path | None = None) -> Path:
    """The local directory for a model argument (None means the default model).

    Raises:
        ModelNotFoundError: naming every place tried and the command that fetches it.
    """
    store = store or models_dir()
    arg = str(arg) if arg else DEFAULT_MODEL
    tried = []
    direct = Path(arg).expanduser()
    if direct.is_dir():
        return direct
    tried.append(str(direct.resolve()))
    named = store / arg
    if named.is_dir():
        return named
    tried.append(str(named))
    if "/" in arg and not direct.is_absolute() and arg.count("/") == 1:
        for entry in _store_entries(store):
            if read_source(entry).get("repo_id") == arg:
                return entry
        # A folder of the same name that came from another repo is not this model.
        tried.append(f"{store / store_name(arg)} (pulled from {arg})")
        cached = _hf_cache_snapshot(arg)
        if cached:
            return cached
        tried.append("the Hugging Face cache")
    if arg == DEFAULT_MODEL:
        hint = "run `zephyr-local pull` then `zephyr-local quantize --bits 4`"
    elif "/" in arg and arg.count("/") == 1 and not arg.startswith((".", "/", "~")):
        hint = f"run `zephyr-local pull {arg}`"
    else:
        hint = "check the path, or list local models with `zephyr-local models`"
    raise ModelNotFoundError(f"model {arg!r} not found (tried {', '.join(tried)}): {hint}")


def _store_entries(store: Path) -> list[Path]:
    if not store.is_dir():
        return []
    return sorted(
        p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")
        and (p / "config.json").exists()
    )


def read_source(path: Path) -> dict:
    """The source record `pull` wrote in a model directory ({} when there is none)."""
    try:
        data = json.loads((path / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class ModelInfo:
    """What `models` shows of one local model."""

    name: str
    path: Path
    size_bytes: int
    dtype: str  # dtype of the unquantized tensors
    bits: int | None = None
    group_size: int | None = None
    bits_per_weight: float | None = None
    source: str | None = None
    error: str | None = None


def model_info(path: Path) -> ModelInfo:
    """Size, dtype and quantization of a model directory, read from headers only."""
    size = dir_size(path)
    record = read_source(path)
    source = record.get("repo_id") or record.get("imported_from")
    info = ModelInfo(path.name, path, size, "?", source=str(source) if source else None)
    try:
        config = json.loads((path / "config.json").read_text())
        quant = config.get("quantization") or {}
        info.bits, info.group_size = quant.get("bits"), quant.get("group_size")
        dtypes: Counter = Counter()
        weight_bytes = logical = 0
        for shard in sorted(path.glob("*.safetensors")):
            header = read_header(shard)
            for name, entry in header.items():
                shape, dtype = entry["shape"], entry["dtype"]
                nbytes = entry["data_offsets"][1] - entry["data_offsets"][0]
                weight_bytes += nbytes
                count = 1
                for d in shape:
                    count *= d
                if dtype == "U32" and info.bits:  # packed quantized weight
                    layer = quant.get(name.rsplit(".", 1)[0])  # per-layer bits (--head-bits)
                    bits = layer.get("bits", info.bits) if isinstance(layer, dict) else info.bits
                    count = count * 32 // bits
                if not name.endswith((".scales", ".biases")):
                    logical += count
                    dtypes[dtype] += count
        info.dtype = dtypes.most_common(1)[0][0] if dtypes else "?"
        if info.dtype == "U32":
            info.dtype = (sorted(d for d in dtypes if d != "U32") or ["?"])[0]
        if logical:
            info.bits_per_weight = round(8 * weight_bytes / logical, 3)
    except Exception as exc:  # a broken model still gets a row, with the reason
        info.error = str(exc).splitlines()[0]
    return info


def list_models(store: Path | None = None) -> list[ModelInfo]:
    """Every model directory in the store."""
    return [model_info(p) for p in _store_entries(store or models_dir())]
