"""`evaluate`: the DPO metrics of an adapter against its reference, or SFT loss/perplexity."""

from __future__ import annotations

import json
from pathlib import Path

from zephyr_local import loading
from zephyr_local.train.config import DataConfig
from zephyr_local.train.data import load_dataset, resolve_source
from zephyr_local.train.lora import ADAPTER_FILE, load_adapter_into, read_adapter_config
from zephyr_local.train.objectives import dpo_eval, sft_eval
from zephyr_local.train.reference import model_fingerprint, reference_logps
from zephyr_local.train.rows import DataError


def detect_kind(path: Path) -> str:
    """"dpo" if the first parseable row has chosen/rejected, else "sft"."""
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                return "dpo" if "chosen" in row and "rejected" in row else "sft"
    raise DataError(f"{path}: no JSON rows")


def _reference_adapter(adapter: Path | None, given: Path | None) -> Path | None:
    """The adapter the DPO reference used: given, else the one the run started from."""
    if given is not None or adapter is None:
        return given
    start = (read_adapter_config(adapter).get("zephyr_local") or {}).get("resume_adapter")
    return Path(start) if start and (Path(start) / ADAPTER_FILE).exists() else None


def evaluate(model_path: Path, data: str, adapter: Path | None = None, *,
             reference_adapter: Path | None = None, loss: str = "sigmoid",
             beta: float | None = None, label_smoothing: float = 0.0, batch_size: int = 4,
             data_config: DataConfig | None = None, cache_dir: Path | None = None,
             split: str = "valid") -> dict:
    """Metrics of `adapter` (or the base) on preference or SFT data.

    Preference data: pairs, loss, rewards/accuracies (per pair), margins, chosen,
    rejected and logps, against the reference (the base with adapters off, or the
    adapter the run started from). SFT data: loss and perplexity over assistant tokens.
    """
    from zephyr_local.train.config import LoRAConfig
    from zephyr_local.train.lora import apply_lora
    from zephyr_local.train.run import default_cache_dir

    dc = data_config or DataConfig()
    path = resolve_source(data, split)
    kind = detect_kind(path)
    loaded = loading.load(Path(model_path))
    model = loaded.model
    ds = load_dataset(str(path), kind, loaded.tokenizer, dc, split)
    if adapter is not None:
        load_adapter_into(model, Path(adapter))
    else:
        apply_lora(model, LoRAConfig(rank=1, dropout=0.0))  # B = 0: exactly the base
    model.eval()
    result = {"data": str(path), "kind": kind, "adapter": str(adapter) if adapter else None,
              "summary": ds.summary.as_dict()}
    if kind == "sft":
        return {**result, **sft_eval(model, ds.examples, batch_size)}
    if beta is None:
        beta = (read_adapter_config(adapter).get("zephyr_local") or {}).get("beta", 0.1) \
            if adapter else 0.1
    ref = _dpo_reference(model, ds, model_path, adapter, reference_adapter, batch_size,
                         cache_dir or default_cache_dir())
    result["reference"] = str(ref[1]) if ref[1] else "base"
    metrics = dpo_eval(model, ds.examples, ref[0], loss, beta, label_smoothing, batch_size)
    return {**result, "loss_type": loss, "beta": beta, **metrics}


def _dpo_reference(model, ds, model_path, adapter, reference_adapter, batch_size, cache_dir):
    """[2, N] reference log-probs: base (adapters off) or a reference adapter's weights."""
    seqs = [e.chosen for e in ds.examples] + [e.rejected for e in ds.examples]
    ref_adapter = _reference_adapter(Path(adapter) if adapter else None, reference_adapter)
    fp = model_fingerprint(Path(model_path), ref_adapter)
    if ref_adapter is None:
        logps, _, _ = reference_logps(model, seqs, fp, cache_dir, batch_size, base_only=True)
    else:  # swap the reference adapter's weights in, score, swap the policy's back
        from zephyr_local.train.lora import check_adapter_shapes

        check_adapter_shapes(model, Path(ref_adapter) / ADAPTER_FILE)
        model.load_weights(str(Path(ref_adapter) / ADAPTER_FILE), strict=False)
        logps, _, _ = reference_logps(model, seqs, fp, cache_dir, batch_size, base_only=False)
        model.load_weights(str(Path(adapter) / ADAPTER_FILE), strict=False)
    return logps.reshape(2, len(ds.examples)), ref_adapter
