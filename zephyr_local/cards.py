"""Where a model came from, and the Hugging Face Hub's YAML header for its model card.

A model here is often several steps from the hub: pulled, then quantized, then
fused with an adapter. The Hub (and PEFT's `base_model_name_or_path`) wants the
original repo id, not a local path, so the chain of records each step writes is
followed back to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from zephyr_local.store import read_source

QUANT_REPORT = "quantization_report.json"
FUSE_FILE = ".zephyr-local-fused.json"


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def hub_id(model_dir: Path | str, _depth: int = 0) -> str | None:
    """The hub repo id behind a local model directory, or None if it has none.

    Follows `pull`'s source record, a quantization report's or a fused model's
    base, and the Hugging Face cache layout (`models--owner--name/snapshots/sha`).
    """
    path = Path(model_dir)
    if _depth > 8:  # records never loop in practice; this guards a hand-edited one
        return None
    if repo := read_source(path).get("repo_id"):
        return repo
    for record, key in ((QUANT_REPORT, "source"), (FUSE_FILE, "base_model")):
        base = _json(path / record).get(key)
        if base:
            if "/" in base and not Path(base).exists() and base.count("/") == 1:
                return base  # already a repo id
            found = hub_id(Path(base), _depth + 1)
            if found:
                return found
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/", 1)
    return None


def yaml_header(base_model: str | None, tags: list[str]) -> str:
    """The `---` block the Hub reads: base_model, library_name: mlx, tags."""
    lines = ["---"]
    if base_model:
        lines.append(f"base_model: {json.dumps(base_model)}")
    lines.append("library_name: mlx")
    lines.append("tags:")
    lines += [f"- {json.dumps(t)}" for t in tags]
    lines.append("---")
    return "\n".join(lines) + "\n"
