"""Find the GGUF behind an `ollama:NAME[:TAG]` reference in ollama's local store, offline.

ollama keeps `$OLLAMA_MODELS` (default `~/.ollama/models`) as a registry mirror: a
JSON manifest per model and tag, whose layer of media type
`application/vnd.ollama.image.model` names the GGUF blob by its sha256.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from zephyr_local.errors import ModelFormatError, ModelNotFoundError

PREFIX = "ollama:"
REGISTRY = "registry.ollama.ai"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def store_root() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def parse(ref: str) -> tuple[str, str]:
    """`ollama:zephyr` -> ("library/zephyr", "latest"); `ollama:me/m:q8` -> ("me/m", "q8")."""
    body = ref.removeprefix(PREFIX)
    name, _, tag = body.partition(":")
    if not _NAME.fullmatch(name) or (tag and not re.fullmatch(r"[A-Za-z0-9._-]+", tag)):
        raise ModelNotFoundError(f"{ref!r} is not an ollama model name (ollama:NAME or NAME:TAG)")
    return (name if "/" in name else f"library/{name}"), (tag or "latest")


def store_name(ref: str) -> str:
    """The name an imported ollama model gets in zephyr-local's store."""
    name, tag = parse(ref)
    base = name.removeprefix("library/").replace("/", "-")
    return base if tag == "latest" else f"{base}-{tag}"


def find_gguf(ref: str, root: Path | None = None) -> Path:
    """The GGUF blob of an ollama model.

    Raises:
        ModelNotFoundError: no such model or tag in the store, or its blob is missing.
        ModelFormatError: a manifest that is not ollama's JSON, or has no model layer.
    """
    root = root or store_root()
    name, tag = parse(ref)
    manifest = root / "manifests" / REGISTRY / name / tag
    if not manifest.is_file():
        raise ModelNotFoundError(
            f"{ref}: not in the ollama store {root} (no {manifest.relative_to(root)}); "
            "`ollama pull` it first, or set OLLAMA_MODELS")
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        digests = [x["digest"] for x in layers if x.get("mediaType") == MODEL_MEDIA_TYPE]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ModelFormatError(f"{manifest}: not an ollama manifest") from None
    if len(digests) != 1:
        raise ModelFormatError(f"{manifest}: {len(digests)} model layers (expected one)")
    algo, _, hexdigest = str(digests[0]).partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise ModelFormatError(f"{manifest}: bad layer digest {digests[0]!r}")
    blob = root / "blobs" / f"sha256-{hexdigest}"
    if not blob.is_file():
        raise ModelNotFoundError(f"{ref}: its model blob {blob} is missing from the ollama store")
    return blob
