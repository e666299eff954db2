"""The training loop shared by SFT and DPO: AdamW, schedule, accumulation, checkpoints.

Determinism for resume: micro-batch k of the run always holds the same rows
(epoch e's order is numpy's default_rng([seed, e]).permutation), and the dropout
RNG is reseeded from (seed, step, rank) before every step, so a resumed run replays
exactly the steps an uninterrupted run would take. On N ranks each micro-batch is
split N ways, so without dropout an N-rank run is the 1-rank run up to float32
reduction order; dropout masks are drawn per rank (same distribution, other draws).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from zephyr_local.errors import ZephyrError
from zephyr_local.train.config import TrainConfig
from zephyr_local.train.distributed import Dist


class TrainingError(ZephyrError):
    """Training could not go on (the message says at which step and what was kept).

    Every rank of a distributed run sees the same reduced loss, so all raise it.
    """

    exit_code = 1
    collective = True


@dataclass
class Plan:
    """How many optimizer steps, and the micro-batch stream behind them."""

    n_rows: int
    batch_size: int
    accumulation: int
    total_steps: int
    warmup_steps: int
    seed: int

    @property
    def per_epoch(self) -> int:
        return math.ceil(self.n_rows / self.batch_size)

    def micro_batch(self, k: int) -> np.ndarray:
        """Row indices of the k-th micro-batch of the run (epochs follow each other)."""
        epoch, i = divmod(k, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
        return order[i * self.batch_size: (i + 1) * self.batch_size]

    def epoch_of(self, step: int) -> float:
        return step * self.accumulation / self.per_epoch


def make_plan(cfg: TrainConfig, n_rows: int) -> Plan:
    per_epoch = math.ceil(n_rows / cfg.batch_size)
    steps = cfg.iters or math.ceil(cfg.epochs * per_epoch / cfg.grad_accumulation)
    warmup = math.ceil(cfg.warmup_ratio * steps)
    return Plan(n_rows, cfg.batch_size, cfg.grad_accumulation, steps, warmup, cfg.seed)


def make_optimizer(cfg: TrainConfig, plan: Plan) -> optim.Optimizer:
    """AdamW with linear warmup from 0, then linear or cosine decay to 0 (as HF does)."""
    decay_steps = max(1, plan.total_steps - plan.warmup_steps)
    if cfg.schedule == "cosine":
        decay = optim.cosine_decay(cfg.learning_rate, decay_steps)
    else:
        decay = optim.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
    if plan.warmup_steps:
        warm = optim.linear_schedule(0.0, cfg.learning_rate, plan.warmup_steps)
        schedule = optim.join_schedules([warm, decay], [plan.warmup_steps])
    else:
        schedule = decay
    return optim.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def train_step(model, objective, optimizer, plan: Plan, step: int, cfg: TrainConfig,
               dist: Dist | None = None) -> dict:
    """One optimizer step over `accumulation` global micro-batches; returns its metrics.

    In a distributed run each rank computes its slice of every micro-batch, its loss
    weighted by that slice's share of the step, so the sum of the ranks' gradients is
    the gradient of the whole step and every rank applies the same update.

    Raises TrainingError, leaving the weights untouched, if loss or gradients
    are not finite (every rank sees the same reduced values, so all raise it).
    """
    dist = dist or Dist()
    mx.random.seed((cfg.seed * 1_000_003 + step) * dist.size + dist.rank)  # dropout, replayable
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    batches = [plan.micro_batch(step * plan.accumulation + j) for j in range(plan.accumulation)]
    batches = [b for b in batches if len(b)]
    total = sum(objective.size(b) for b in batches)
    value_and_grad = nn.value_and_grad(model, partial(objective.forward, model))
    grads, outputs, sizes = None, [], np.zeros(dist.size, dtype=int)
    for idx in batches:
        sizes += dist.sizes(len(idx))
        mine = dist.shard(idx)
        if not len(mine):  # fewer rows than ranks: this rank adds zero gradients
            continue
        out, g = value_and_grad(*objective.inputs(mine, objective.size(mine) / total))
        grads = g if grads is None else nn.utils.tree_map(mx.add, grads, g)
        mx.eval(out, grads)
        outputs.append(out)
    if grads is None:
        grads = nn.utils.tree_map(mx.zeros_like, model.trainable_parameters())
    grads = dist.sum_gradients(grads, f"the gradient all_sum of step {step + 1}")
    rows = dist.gather_rows(objective.rows(outputs), list(sizes), f"the metrics of step {step + 1}")
    metrics = objective.metrics(rows, total)
    if cfg.max_grad_norm > 0:
        grads, norm = optim.clip_grad_norm(grads, cfg.max_grad_norm)
    else:
        _, norm = optim.clip_grad_norm(grads, float("inf"))
    loss, grad_norm = metrics["loss"], float(norm.item())
    if not _finite(loss, grad_norm):
        raise TrainingError(
            f"the loss became {loss} (gradient norm {grad_norm}) at step {step + 1}")
    optimizer.update(model, grads)
    mx.eval(model.trainable_parameters(), optimizer.state)
    dt = time.perf_counter() - t0
    peak = dist.gather_rows(np.array([mx.get_peak_memory() / 1e9], np.float32), [1] * dist.size,
                            f"the memory report of step {step + 1}")
    tokens = sum(objective.n_tokens(b) for b in batches)  # the whole job's, every rank's
    return {"step": step + 1, "epoch": round(plan.epoch_of(step + 1), 4), **metrics,
            "grad_norm": grad_norm, "learning_rate": float(optimizer.learning_rate.item()),
            "num_tokens": tokens,  # this step's; the recorder makes it cumulative
            "tokens_per_second": tokens / max(dt, 1e-9), "peak_memory_gb": float(peak.max())}


@contextmanager
def recorded_sigint():
    """Record Ctrl-C instead of raising it (main thread only); yields the record.

    The loop stops at the next step boundary: a step interrupted after the optimizer
    update but before it is counted would be applied twice on resume.
    """
    caught: list = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def run_loop(model, objective, optimizer, plan: Plan, cfg: TrainConfig, start: int,
             hooks: Hooks, dist: Dist | None = None) -> int:
    """Steps start..total; checkpoints on schedule, on Ctrl-C and before a bad step.

    A Ctrl-C on any rank is voted on at each step boundary, so every rank stops
    after the same step. Returns the number of completed steps.
    """
    dist = dist or Dist()
    done = start
    try:
        with recorded_sigint() as caught:
            for step in range(start, plan.total_steps):
                if dist.any(bool(caught), f"the stop vote before step {step + 1}"):
                    raise KeyboardInterrupt
                model.train()
                try:
                    record = train_step(model, objective, optimizer, plan, step, cfg, dist=dist)
                except TrainingError as exc:
                    where = hooks.checkpoint(done)
                    raise TrainingError(f"{exc}; stopped. The last good checkpoint (step {done})"
                                        f" is in {where}: lower --learning-rate and --resume"
                                        ) from None
                hooks.step(record)
                done = step + 1
                if cfg.eval_every and done % cfg.eval_every == 0 and done < plan.total_steps:
                    hooks.evaluate(done)
                if cfg.save_every and done % cfg.save_every == 0 and done < plan.total_steps:
                    hooks.checkpoint(done)
    except KeyboardInterrupt:
        hooks.checkpoint(done)
        raise
    return done


@dataclass
class Hooks:
    """What the loop calls back: step records, evaluation, checkpointing."""

    step: Callable[[dict], None]
    evaluate: Callable[[int], None]
    checkpoint: Callable[[int], object]
