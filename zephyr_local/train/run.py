"""One SFT or DPO run end to end: load, validate data, reference, train, save, plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from zephyr_local import loading, store
from zephyr_local.atomic import check_writable
from zephyr_local.errors import ZephyrError
from zephyr_local.train import checkpoint as ckpt
from zephyr_local.train.config import TrainConfig
from zephyr_local.train.data import Dataset, default_eval_source, load_dataset
from zephyr_local.train.distributed import Dist, scorer
from zephyr_local.train.logprobs import lora_layers
from zephyr_local.train.lora import (
    adapter_config,
    apply_lora,
    atomic_write_bytes,
    enable_grad_checkpoint,
    load_adapter_into,
    save_adapter,
)
from zephyr_local.train.metrics import MetricsLog
from zephyr_local.train.objectives import DPOObjective, SFTObjective, dpo_eval, sft_eval
from zephyr_local.train.reference import data_fingerprint, model_fingerprint, reference_logps
from zephyr_local.train.trainer import Hooks, make_optimizer, make_plan, run_loop

RUN_CONFIG = "run_config.json"
# Where files sit may differ between hosts; their contents are compared by hash instead.
PATH_FIELDS = ("model", "data", "eval_data", "out", "resume_adapter")


@dataclass
class RunResult:
    """What a run did."""

    out: Path
    steps: int
    total_steps: int
    last: dict | None = None
    eval: dict | None = None
    reference_from_cache: bool | None = None
    plot: Path | None = None
    train_summary: dict = field(default_factory=dict)


def default_cache_dir() -> Path:
    return store.home_dir() / "cache" / "reference"


def _eval_source(cfg: TrainConfig) -> str | None:
    return cfg.eval_data or default_eval_source(cfg.data)


class _Run:
    """The state of one run, built step by step by `run`."""

    def __init__(self, cfg: TrainConfig, models_dir, cache_dir, on_event, dist: Dist):
        self.cfg, self.dist = cfg, dist
        quiet = on_event is None or not dist.is_main  # rank 0 alone reports
        self.emit = (lambda kind, payload: None) if quiet else on_event
        self.out = Path(cfg.out).expanduser()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.model_path = store.resolve_model(cfg.model, store.models_dir(models_dir))
        self.loaded = loading.load(self.model_path)
        self.model = self.loaded.model
        tok, dc = self.loaded.tokenizer, cfg.data_config
        self.train = load_dataset(cfg.data, cfg.kind, tok, dc, "train",
                                  progress=self.work("tokenizing train data"))
        src = _eval_source(cfg)
        self.valid = load_dataset(src, cfg.kind, tok, dc, "valid",
                                  progress=self.work("tokenizing eval data")) if src else None
        self.emit("data", {"train": self.train, "eval": self.valid})

    def work(self, what: str):
        """A (done, total) callback that reports a long step before training starts."""
        return lambda done, total: self.emit("work", {"what": what, "done": done,
                                                      "total": total})

    def check_ranks(self) -> None:
        """Every rank must train on the same model files, data and settings."""
        if self.dist.size == 1:
            return
        settings = {k: v for k, v in self.cfg.to_dict().items() if k not in PATH_FIELDS}
        start = Path(self.cfg.resume_adapter) if self.cfg.resume_adapter else None
        self.dist.check_same({
            "model files": model_fingerprint(self.model_path, start),
            "training data": data_fingerprint(_sequences(self.train)),
            "evaluation data": data_fingerprint(_sequences(self.valid)) if self.valid else "-",
            "settings": json.dumps(settings, sort_keys=True)})

    def attach_lora(self) -> None:
        mx.random.seed(self.cfg.seed)  # LoRA A init
        if self.cfg.resume_adapter:
            # The adapter fixes the shape (rank, scale, layers); dropout is this run's choice.
            dropout = self.cfg.lora.dropout
            self.cfg.lora = load_adapter_into(self.model, Path(self.cfg.resume_adapter))
            self.cfg.lora.dropout = dropout
            for layer in lora_layers(self.model):
                layer.dropout = nn.Dropout(p=dropout)
        else:
            apply_lora(self.model, self.cfg.lora)
        if self.cfg.grad_checkpoint:
            enable_grad_checkpoint(self.model)

    def objective_for(self, ds: Dataset, tag: str):
        if self.cfg.kind == "sft":
            return SFTObjective(ds.examples), None
        seqs = [e.chosen for e in ds.examples] + [e.rejected for e in ds.examples]
        start = Path(self.cfg.resume_adapter) if self.cfg.resume_adapter else None
        fp = model_fingerprint(self.model_path, start)
        ref, hit, path = reference_logps(self.model, seqs, fp, self.cache_dir,
                                         self.cfg.batch_size * 2, base_only=start is None,
                                         progress=self.work(f"reference log-probs ({tag})"),
                                         dist=self.dist)
        self.emit("reference", {"data": tag, "cached": hit, "path": str(path), "rows": len(seqs)})
        ref = ref.reshape(2, len(ds.examples))
        c = self.cfg
        return DPOObjective(ds.examples, ref, c.loss, c.beta, c.label_smoothing,
                            c.rpo_alpha), hit

    def evaluate(self, objective) -> dict:
        c = self.cfg
        if c.kind == "dpo":
            m = dpo_eval(self.model, objective.examples, objective.ref, c.loss, c.beta,
                         c.label_smoothing, c.batch_size * 2, score=scorer(self.dist),
                         rpo_alpha=c.rpo_alpha)
        else:
            m = sft_eval(self.model, objective.examples, c.batch_size, score=scorer(self.dist))
        self.model.train()
        return m

    def adapter_config(self, steps: int) -> dict:
        extra = {"base_model": str(self.model_path), "zephyr_local": {
            "kind": self.cfg.kind, "steps": steps, "loss": self.cfg.loss, "beta": self.cfg.beta,
            "resume_adapter": self.cfg.resume_adapter}}
        return adapter_config(self.cfg.lora, len(self.model.layers), extra)


def _sequences(ds: Dataset) -> list:
    if ds.examples and hasattr(ds.examples[0], "chosen"):
        return [e.chosen for e in ds.examples] + [e.rejected for e in ds.examples]
    return list(ds.examples)


def _prepare_out(out: Path, resume: bool) -> None:
    """Refuse an unwritable --out, or one holding a run to continue, before any work.

    Nothing is created here: a run that fails on its data leaves no empty directory.
    """
    check_writable(out)
    if resume or ckpt.latest_checkpoint(out) is None:
        return  # a run stopped before its first checkpoint has nothing to keep: start over
    raise ZephyrError(f"{out} already holds a training run: pass --resume to continue it, "
                      "or choose another --out")


def load_run_config(out: Path) -> dict:
    """The config a run in `out` was started with (for --resume)."""
    path = Path(out).expanduser() / RUN_CONFIG
    if not path.exists():
        raise ZephyrError(f"{path}: missing: {out} holds no run to resume")
    return json.loads(path.read_text())


class _Recorder:
    """The loop's hooks: log each step and evaluation, write checkpoints and the adapter.

    Every rank evaluates (its share of the rows); rank 0 alone logs and writes.
    """

    def __init__(self, r: _Run, optimizer, plan, log: MetricsLog, result: RunResult, eval_obj):
        self.r, self.optimizer, self.plan, self.log = r, optimizer, plan, log
        self.result, self.eval_obj = result, eval_obj
        # TRL's num_tokens: input tokens seen since the run began (a resumed run goes on
        # from its log, which holds exactly the steps up to the checkpoint).
        self.num_tokens = next((r["num_tokens"] for r in reversed(log.read())
                                if "num_tokens" in r), 0)

    def step(self, record: dict) -> None:
        if not self.r.dist.is_main:
            return
        self.num_tokens += record.get("num_tokens", 0)
        record["num_tokens"] = self.num_tokens
        self.log.append(record)
        self.result.last = record
        self.r.emit("step", record)

    def evaluate(self, step: int) -> None:
        if self.eval_obj is None:
            return
        metrics = self.r.evaluate(self.eval_obj)
        if not self.r.dist.is_main:
            return
        # Named as TRL's Trainer names evaluation metrics: eval_loss, eval_rewards/accuracies.
        record = {"step": step, **{f"eval_{k}": v for k, v in metrics.items()}}
        self.log.append(record)
        self.result.eval = record
        self.r.emit("eval", record)

    def checkpoint(self, step: int) -> Path:
        cfg = self.r.cfg
        if not self.r.dist.is_main:
            return ckpt.checkpoints_dir(self.r.out)
        state = {"step": step, "kind": cfg.kind, "config": cfg.to_dict(),
                 "data_order": {"scheme": "numpy default_rng([seed, epoch]).permutation",
                                "next_micro_batch": step * self.plan.accumulation},
                 "rng": {"scheme": "mx.random.seed(seed * 1000003 + step) before each step",
                         "seed": cfg.seed}}
        path = ckpt.save_checkpoint(self.r.out, self.r.model, self.optimizer, state)
        save_adapter(self.r.out, self.r.model, self.r.adapter_config(step))
        self.r.emit("checkpoint", {"step": step, "path": str(path)})
        return path


def run(cfg: TrainConfig, *, resume: bool = False, models_dir=None, cache_dir=None,
        on_event: Callable[[str, object], None] | None = None,
        dist: Dist | None = None) -> RunResult:
    """Train an adapter (SFT or DPO) as `cfg` says; see the `sft` / `dpo` commands.

    `dist` (distributed.init()) makes this process one rank of a data-parallel run:
    `cfg.batch_size` stays the global batch, so N ranks train what one would.

    Raises:
        ZephyrError: bad model, data or adapter; TrainingError on a non-finite loss.
        KeyboardInterrupt: after writing a checkpoint.
    """
    dist = dist or Dist()
    out = Path(cfg.out).expanduser()
    if dist.is_main:
        _prepare_out(out, resume)
    r = _Run(cfg, models_dir, cache_dir, on_event, dist)
    r.check_ranks()
    r.attach_lora()
    objective, hit = r.objective_for(r.train, "train")
    eval_obj = r.objective_for(r.valid, "eval")[0] if r.valid else None
    plan = make_plan(cfg, len(r.train))
    optimizer = make_optimizer(cfg, plan)
    log = MetricsLog(out / "metrics.jsonl")
    start = _restore(r, optimizer, log) if resume else 0
    if not resume and dist.is_main:
        log.truncate_after(0)  # the steps of a run stopped before its first checkpoint
        text = json.dumps(cfg.to_dict(), indent=2)
        atomic_write_bytes(out / RUN_CONFIG, lambda p: Path(p).write_text(text))
    result = RunResult(out, start, plan.total_steps, reference_from_cache=hit,
                       train_summary=r.train.summary.as_dict())
    r.emit("start", {"total": plan.total_steps, "start": start, "plan": plan})
    rec = _Recorder(r, optimizer, plan, log, result, eval_obj)
    hooks = Hooks(rec.step, rec.evaluate, rec.checkpoint)
    result.steps = run_loop(r.model, objective, optimizer, plan, cfg, start, hooks, dist)
    rec.evaluate(result.steps)
    rec.checkpoint(result.steps)
    result.plot = _plot(out, log) if dist.is_main else None
    r.emit("done", result)
    return result


def _restore(r: _Run, optimizer, log: MetricsLog) -> int:
    """Rank 0 reads the checkpoint (its disk holds the run) and hands it to the others."""
    step = 0
    if r.dist.is_main:
        path = ckpt.latest_checkpoint(r.out)
        if path is None:  # stopped before its first checkpoint: the same run from step 0
            log.truncate_after(0)
            optimizer.init(r.model.trainable_parameters())
        else:
            state = ckpt.load_checkpoint(path, r.model, optimizer)
            total = make_plan(r.cfg, len(r.train)).total_steps
            if state["step"] >= total:
                raise ZephyrError(f"{r.out}: the run already finished ({state['step']} of "
                                  f"{total} steps)")
            log.truncate_after(state["step"])  # steps logged after the checkpoint are replayed
            step = int(state["step"])
    else:
        optimizer.init(r.model.trainable_parameters())
    if r.dist.size > 1:
        what = "the checkpoint broadcast"
        step = int(r.dist.broadcast(mx.array([step], mx.int32), what).item())
        r.model.update(r.dist.broadcast(r.model.trainable_parameters(), what))
        optimizer.state = r.dist.broadcast(optimizer.state, what)
    return step


def _plot(out: Path, log: MetricsLog) -> Path | None:
    from zephyr_local.train.plot import plot_metrics

    records = log.read()
    if not records:
        return None
    path = out / "metrics.png"
    plot_metrics(records, path)
    return path
