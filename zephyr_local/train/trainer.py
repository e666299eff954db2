"""The training loop shared by SFT and DPO: AdamW, schedule, accumulation, checkpoints.

Determinism for resume: micro-batch k of the run always holds the same rows
(epoch e's order is numpy's default_rng([seed, e]).permutation), and the dropout
RNG is reseeded from (seed, step) before every step, so a resumed run replays
exactly the steps an uninterrupted run would take.
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


class TrainingError(ZephyrError):
    """Training could not go on (the message says at which step and what was kept)."""

    exit_code = 1


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


def train_step(model, objective, optimizer, plan: Plan, step: int, cfg: TrainConfig) -> dict:
    """One optimizer step over `accumulation` micro-batches; returns its metrics.

    Raises TrainingError, leaving the weights untouched, if loss or gradients
    are not finite.
    """
    mx.random.seed(cfg.seed * 1_000_003 + step)  # dropout, replayable on resume
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    batches = [plan.micro_batch(step * plan.accumulation + j) for j in range(plan.accumulation)]
    batches = [b for b in batches if len(b)]
    total = sum(objective.size(b) for b in batches)
    value_and_grad = nn.value_and_grad(model, partial(objective.forward, model))
    grads, outputs, tokens = None, [], 0
    for idx in batches:
        args = objective.inputs(idx, objective.size(idx) / total)
        out, g = value_and_grad(*args)
        grads = g if grads is None else nn.utils.tree_map(mx.add, grads, g)
        mx.eval(out, grads)
        outputs.append(out)
        tokens += objective.n_tokens(idx)
    loss = sum(float(o[0].item()) for o in outputs)
    if cfg.max_grad_norm > 0:
        grads, norm = optim.clip_grad_norm(grads, cfg.max_grad_norm)
    else:
        _, norm = optim.clip_grad_norm(grads, float("inf"))
    grad_norm = float(norm.item())
    if not _finite(loss, grad_norm):
        raise TrainingError(f"the loss became {loss} (gradient norm {grad_norm}) at step {step + 1}")
    optimizer.update(model, grads)
    mx.eval(model.trainable_parameters(), optimizer.state)
    dt = time.perf_counter() - t0
    record = {"step": step + 1, "epoch": round(plan.epoch_of(step + 1), 4),
              **objective.metrics(outputs, total), "grad_norm": grad_norm,
              "learning_rate": float(optimizer.learning_rate.item()),
              "num_tokens": tokens,  # this step's; the recorder makes it cumulative
              "tokens_per_second": tokens / max(dt, 1e-9),
              "peak_memory_gb": mx.get_peak_memory() / 1e9}
    return record


@contextmanager
def deferred_sigint():
    """Hold Ctrl-C until the block ends, then raise it (main thread only).

    A step interrupted after the optimizer update but before it is counted would
    be applied twice on resume; deferring the signal keeps checkpoints exact.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if caught and previous is not signal.SIG_IGN:
        raise KeyboardInterrupt


def run_loop(model, objective, optimizer, plan: Plan, cfg: TrainConfig, start: int,
             hooks: Hooks) -> int:
    """Steps start..total; checkpoints on schedule, on Ctrl-C and before a bad step.

    Returns the number of completed steps.
    """
    done = start
    try:
        for step in range(start, plan.total_steps):
            model.train()
            try:
                with deferred_sigint():  # a step, its log line and `done` change together
                    record = train_step(model, objective, optimizer, plan, step, cfg)
                    hooks.step(record)
                    done = step + 1
            except TrainingError as exc:
                where = hooks.checkpoint(done)
                raise TrainingError(f"{exc}; stopped. The last good checkpoint (step {done}) "
                                    f"is in {where}: lower --learning-rate and --resume") from None
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
