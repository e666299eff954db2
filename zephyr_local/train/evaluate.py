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
    with open(path, encoding="utf-8") as f:
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


class _Stages:
    """One progress scale over tokenizing, the reference pass and the policy pass: each
    stage starts where the previous ended, so the bar never jumps back to zero."""

    def __init__(self, progress):
        self.progress, self.done, self.total = progress, 0, 0

    def stage(self, what: str, total_after=None):
        """A (done, total) callback; `total_after(total)` re-plans the whole scale."""
        start = self.done

        def update(done: int, total: int) -> None:
            if total_after is not None:
                self.total = total_after(total)
            self.done = start + done
            if self.progress is not None:
                self.progress(self.done, max(self.total, self.done), what)
        return update

    def end_stage(self, start: int, size: int, remaining: int) -> None:
        self.done, self.total = start + size, start + size + remaining


def trl_names(metrics: dict) -> dict:
    """TRL's evaluation names (`eval_loss`, `eval_rewards/accuracies`, `eval_logits/chosen`)
    for the metrics; counts such as pairs, rows and tokens keep their names."""
    keep = {"pairs", "rows", "tokens"}
    return {k if k in keep else f"eval_{k}": v for k, v in metrics.items()}


def evaluate(model_path: Path, data: str, adapter: Path | None = None, *,
             reference_adapter: Path | None = None, loss: str = "sigmoid",
             beta: float | None = None, label_smoothing: float = 0.0, batch_size: int = 4,
             data_config: DataConfig | None = None, cache_dir: Path | None = None,
             split: str = "valid", progress=None) -> dict:
    """Metrics of `adapter` (or the base) on preference or SFT data, with TRL's eval names.

    Preference data: pairs, loss, rewards/accuracies (per pair), margins, chosen,
    rejected, logps and logits, against the reference (the base with adapters off, or
    the adapter the run started from). SFT data: loss and perplexity over assistant
    tokens. `progress(done, total, what)` follows all stages on one scale.
    """
    from zephyr_local.train.config import LoRAConfig
    from zephyr_local.train.lora import apply_lora
    from zephyr_local.train.run import default_cache_dir

    dc = data_config or DataConfig()
    path = resolve_source(data, split)
    kind = detect_kind(path)
    loaded = loading.load(Path(model_path))
    model = loaded.model
    stages = _Stages(progress)
    passes = 4 if kind == "dpo" else 1  # sequence passes per kept row after tokenizing
    ds = load_dataset(str(path), kind, loaded.tokenizer, dc, split,
                      progress=stages.stage("tokenizing", lambda t: t * (1 + passes)))
    n = len(ds.examples)
    stages.end_stage(stages.done, 0, passes * n)
    if adapter is not None:
        load_adapter_into(model, Path(adapter))
    else:
        apply_lora(model, LoRAConfig(rank=1, dropout=0.0))  # B = 0: exactly the base
    model.eval()
    result = {"data": str(path), "kind": kind, "adapter": str(adapter) if adapter else None,
              "summary": ds.summary.as_dict()}
    if kind == "sft":
        return {**result, **trl_names(sft_eval(model, ds.examples, batch_size,
                                               stages.stage("scoring")))}
    if beta is None:
        beta = (read_adapter_config(adapter).get("zephyr_local") or {}).get("beta", 0.1) \
            if adapter else 0.1
    start = stages.done
    ref = _dpo_reference(model, ds, model_path, adapter, reference_adapter, batch_size,
                         cache_dir or default_cache_dir(), stages.stage("reference"))
    stages.end_stage(start, 2 * n, 2 * n)  # a cached reference skips its stage
    result["reference"] = str(ref[1]) if ref[1] else "base"
    metrics = dpo_eval(model, ds.examples, ref[0], loss, beta, label_smoothing, batch_size,
                       progress=stages.stage("policy"))
    return {**result, "loss_type": loss, "beta": beta, **trl_names(metrics)}


def _dpo_reference(model, ds, model_path, adapter, reference_adapter, batch_size, cache_dir,
                   progress=None):
    """[2, N] reference log-probs: base (adapters off) or a reference adapter's weights."""
    seqs = [e.chosen for e in ds.examples] + [e.rejected for e in ds.examples]
    ref_adapter = _reference_adapter(Path(adapter) if adapter else None, reference_adapter)
    fp = model_fingerprint(Path(model_path), ref_adapter)
    if ref_adapter is None:
        logps, _, _ = reference_logps(model, seqs, fp, cache_dir, batch_size, base_only=True,
                                      progress=progress)
    else:  # swap the reference adapter's weights in, score, swap the policy's back
        from zephyr_local.train.lora import check_adapter_shapes

        check_adapter_shapes(model, Path(ref_adapter) / ADAPTER_FILE)
        model.load_weights(str(Path(ref_adapter) / ADAPTER_FILE), strict=False)
        logps, _, _ = reference_logps(model, seqs, fp, cache_dir, batch_size, base_only=False,
                                      progress=progress)
        model.load_weights(str(Path(adapter) / ADAPTER_FILE), strict=False)
    return logps.reshape(2, len(ds.examples)), ref_adapter
