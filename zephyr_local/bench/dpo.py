"""DPO step cost: this design (adapters-off reference, cached; one forward pass for
chosen+rejected) against the naive one (a second loaded copy of the model as the
reference, four forward passes per step), on the same model and batch.

`dpo_step_benchmark(model_path)` returns both designs' time per step and peak
memory; the benchmark harness calls it, and `python -m zephyr_local.bench.dpo
MODEL` prints it as JSON.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
from mlx import nn

from zephyr_local import loading
from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult, random_model, ratio
from zephyr_local.train.config import DataConfig, LoRAConfig, TrainConfig
from zephyr_local.train.data import collate, load_dataset
from zephyr_local.train.logprobs import sequence_logps
from zephyr_local.train.lora import apply_lora
from zephyr_local.train.losses import dpo_loss


def _setup(model_path: Path, lora: LoRAConfig, batch_size: int, max_length: int):
    loaded = loading.load(Path(model_path))
    mx.random.seed(0)
    apply_lora(loaded.model, lora)
    ds = load_dataset("example:prefs", "dpo", loaded.tokenizer,
                      DataConfig(max_length=max_length, max_prompt_length=max_length // 2))
    return loaded.model, ds.examples[:batch_size]


def _measure(step, steps: int) -> dict:
    step()  # warm-up: first-call allocations
    times, peaks = [], []
    for _ in range(steps):
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        peaks.append(mx.get_peak_memory())
    # min is the least disturbed by other work on a shared machine; median for context.
    return {"time_per_step_s": statistics.median(times), "best_step_s": min(times),
            "peak_memory_gb": max(peaks) / 1e9}


def ours(model_path, lora, batch_size, max_length, steps) -> dict:
    """This design: reference log-probs computed once (cached), one pass per step."""
    from zephyr_local.train.objectives import DPOObjective
    from zephyr_local.train.reference import reference_logps
    from zephyr_local.train.trainer import make_optimizer, make_plan, train_step

    model, examples = _setup(model_path, lora, batch_size, max_length)
    seqs = [e.chosen for e in examples] + [e.rejected for e in examples]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        ref, _, _ = reference_logps(model, seqs, "bench", Path(cache), batch_size, True)
    precompute = time.perf_counter() - t0
    cfg = TrainConfig(learning_rate=1e-5, batch_size=batch_size, iters=steps + 1, warmup_ratio=0)
    plan = make_plan(cfg, len(examples))
    opt = make_optimizer(cfg, plan)
    objective = DPOObjective(examples, ref.reshape(2, -1), "sigmoid", 0.1, 0.0)
    model.train()
    out = _measure(lambda: train_step(model, objective, opt, plan, 0, cfg), steps)
    return {**out, "reference_precompute_s": precompute, "forward_passes_per_step": 1}


def naive(model_path, lora, batch_size, max_length, steps) -> dict:
    """The naive design: a second model copy as reference, four forward passes per step."""
    model, examples = _setup(model_path, lora, batch_size, max_length)
    reference = loading.load(Path(model_path)).model  # the second copy of the weights
    reference.eval()
    c_tok, c_mask = (mx.array(a) for a in collate([e.chosen for e in examples]))
    r_tok, r_mask = (mx.array(a) for a in collate([e.rejected for e in examples]))
    opt = optim.AdamW(learning_rate=1e-5)

    def loss_fn():
        pw, nw = sequence_logps(model, c_tok, c_mask)
        pl, nl = sequence_logps(model, r_tok, r_mask)
        rw = mx.stop_gradient(sequence_logps(reference, c_tok, c_mask)[0])
        rl = mx.stop_gradient(sequence_logps(reference, r_tok, r_mask)[0])
        return dpo_loss("sigmoid", pw, pl, rw, rl, nw, nl, 0.1)[0]

    value_and_grad = nn.value_and_grad(model, loss_fn)

    def step():
        loss, grads = value_and_grad()
        opt.update(model, grads)
        mx.eval(loss, model.trainable_parameters(), opt.state)

    model.train()
    return {**_measure(step, steps), "forward_passes_per_step": 4}


def dpo_step_benchmark(model_path, batch_size: int = 2, max_length: int = 256, steps: int = 3,
                       lora: LoRAConfig | None = None) -> dict:
    """Time per step and peak memory of both designs on the same model and batch.

    Returns:
        {"ours": {...}, "naive": {...}, "settings": {...}}; peak memory counts every
        live array (weights included), from mx.get_peak_memory.
    """
    lora = lora or LoRAConfig(rank=16, alpha=16, dropout=0.0, layers=-1)
    result = {"settings": {"model": str(model_path), "batch_pairs": batch_size,
                           "max_length": max_length, "steps": steps, "lora_rank": lora.rank,
                           "device": str(mx.default_device())}}
    for name, fn in (("ours", ours), ("naive", naive)):
        gc.collect()
        mx.clear_cache()
        result[name] = fn(model_path, lora, batch_size, max_length, steps)
        gc.collect()
        mx.clear_cache()
    return result


def dpo_case(model_path, steps: int = 3, max_length: int = 256, batch_size: int = 2,
             label: str | None = None):
    """The comparison as a benchmark-harness case (ratios > 1 favour this design).

    Goals: at most 0.6x the naive peak memory where weights dominate memory, and a
    faster step. `label` names the model measured in each metric (default: its
    directory name). Skipped, saying why, when the naive design's second copy of the
    weights would not fit in memory.
    """
    label = label or Path(model_path).name
    too_big = _does_not_fit(Path(model_path))
    if too_big:
        return CaseResult("dpo", skipped=f"{label}: {too_big}", details={"model": str(model_path)})
    d = dpo_step_benchmark(model_path, batch_size, max_length, steps)
    d["model"] = str(model_path)
    ours_, naive_ = d["ours"], d["naive"]
    base = "naive DPO (second model copy, 4 forward passes)"
    return CaseResult("dpo", [
        ratio("dpo", f"peak memory of a step, {label}", ours_["peak_memory_gb"],
              naive_["peak_memory_gb"], base, higher_is_better=False, goal=round(1 / 0.6, 3),
              unit="GB"),
        ratio("dpo", f"time per step (best), {label}", ours_["best_step_s"],
              naive_["best_step_s"], base, higher_is_better=False, goal=1.0, unit="s"),
    ], details=d)


def run_dpo(ctx: Context) -> CaseResult:
    """On -m MODEL when given; else on a random model large enough that weights
    dominate memory (`dpo_dims`), named so in the metrics."""
    s = ctx.settings
    steps = (s["dpo_steps"], s["dpo_max_length"], s["dpo_batch_pairs"])
    if ctx.model_given:
        return dpo_case(ctx.model, *steps)
    with tempfile.TemporaryDirectory() as tmp:
        path, label = random_model(Path(tmp) / "dpo-model", s["dpo_dims"])
        result = dpo_case(path, *steps, label=label)
    result.details["model_dims"] = s["dpo_dims"]
    return result


def _does_not_fit(model_path: Path) -> str | None:
    """Why two copies of the weights plus activations would not fit, or None."""
    from zephyr_local.backend import device_info

    weights = sum(f.stat().st_size for f in model_path.glob("*.safetensors"))
    memory = device_info().get("memory_bytes")
    if memory and 2.5 * weights > memory:  # two copies, gradients of LoRA, activations
        return (f"the naive design holds two copies of its {weights / 1e9:.1f} GB of weights; "
                f"{memory / 1e9:.0f} GB of memory is too little")
    return None


if __name__ == "__main__":

    print(json.dumps(dpo_step_benchmark(Path(sys.argv[1]),
                                        batch_size=int(sys.argv[2]) if len(sys.argv) > 2 else 2),
                     indent=2))
