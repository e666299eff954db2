"""The `sft`, `dpo`, `evaluate` and `fuse` commands, registered on the CLI group.

Only click is imported at module level so that `zephyr-local --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from zephyr_local.errors import ZephyrError
from zephyr_local.params import SEED, Finite

# Flag -> TrainConfig field (dotted for nested dataclasses).
FIELDS = {
    "model": "model", "data": "data", "eval_data": "eval_data", "out": "out",
    "resume_adapter": "resume_adapter", "loss": "loss", "beta": "beta",
    "label_smoothing": "label_smoothing", "rpo_alpha": "rpo_alpha",
    "learning_rate": "learning_rate",
    "schedule": "schedule", "warmup_ratio": "warmup_ratio", "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm", "batch_size": "batch_size",
    "grad_accumulation": "grad_accumulation", "grad_checkpoint": "grad_checkpoint",
    "epochs": "epochs", "iters": "iters", "seed": "seed", "eval_every": "eval_every",
    "save_every": "save_every", "lora_rank": "lora.rank", "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout", "lora_layers": "lora.layers", "lora_targets": "lora.targets",
    "max_length": "data_config.max_length", "max_prompt_length": "data_config.max_prompt_length",
    "strict": "data_config.strict",
}


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, last, value)


def _targets(value: str) -> tuple:
    return tuple(t.strip() for t in value.split(",") if t.strip())


def data_options(f):
    """--max-length, --max-prompt-length, --strict (shared by training and evaluate)."""
    for option in reversed([
        click.option("--max-length", type=click.IntRange(min=2), default=1024, show_default=True,
                     help="Longest prompt+reply in tokens; longer replies are cut (counted)."),
        click.option("--max-prompt-length", type=click.IntRange(min=1), default=512,
                     show_default=True, help="Rows whose prompt alone is longer are dropped (counted)."),
        click.option("--strict", is_flag=True, help="Fail on the first bad row (default: skip and count)."),
    ]):
        f = option(f)
    return f


def train_options(kind: str):
    """The flags of `sft` and `dpo` (defaults: the handbook's LoRA recipes)."""
    lr, schedule, dropout = (2e-4, "cosine", 0.05) if kind == "sft" else (5e-6, "linear", 0.0)

    def deco(f):
        options = [
            click.option("--model", "-m", "model", default=None, help="Base model: directory, store name or hub id (default: zephyr-7b-beta-4bit)."),
            click.option("--data", default=None, help="JSONL file, directory with train.jsonl/valid.jsonl, hub dataset id owner/name[:split], or the bundled example:sft / example:prefs."),
            click.option("--eval-data", default=None, help="Evaluation data (default: valid.jsonl beside train.jsonl)."),
            click.option("--out", required=True, type=click.Path(file_okay=False), help="Adapter directory to write."),
            click.option("--resume", is_flag=True, help="Continue the stopped run in --out from its last checkpoint."),
            click.option("--resume-adapter", default=None, type=click.Path(file_okay=False), help="Start from this adapter (frozen copy = the DPO reference)."),
            click.option("--lora-rank", type=click.IntRange(min=1), default=16, show_default=True),
            click.option("--lora-alpha", type=Finite(min=0, min_open=True), default=16.0, show_default=True, help="Scale = alpha / rank."),
            click.option("--lora-scale", type=Finite(min=0, min_open=True), default=None, help="Set the scale directly (overrides --lora-alpha)."),
            click.option("--lora-dropout", type=Finite(0, 1, max_open=True), default=dropout, show_default=True, help="DPO defaults to 0, as TRL's disable_dropout: the policy must equal the reference at step 0."),
            click.option("--lora-layers", type=int, default=-1, show_default=True, help="Adapt the last N blocks; -1 for all."),
            click.option("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", show_default=True, help="Comma-separated linear layers."),
            click.option("--learning-rate", "--lr", "learning_rate", type=Finite(min=0, min_open=True), default=lr, show_default=True),
            click.option("--schedule", type=click.Choice(["linear", "cosine"]), default=schedule, show_default=True),
            click.option("--warmup-ratio", type=Finite(0, 1), default=0.1, show_default=True),
            click.option("--weight-decay", type=Finite(min=0), default=0.0, show_default=True),
            click.option("--max-grad-norm", type=Finite(min=0), default=1.0, show_default=True, help="Clip gradients; 0 disables."),
            click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True, help="Rows (pairs for DPO) per micro-batch, of the whole job: mlx.launch ranks split it."),
            click.option("--grad-accumulation", type=click.IntRange(min=1), default=1, show_default=True),
            click.option("--grad-checkpoint", is_flag=True, help="Recompute activations in the backward pass (less memory)."),
            click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True),
            click.option("--iters", type=click.IntRange(min=1), default=None, help="Optimizer steps (overrides --epochs)."),
            click.option("--seed", type=SEED, default=0, show_default=True),
            click.option("--eval-every", type=click.IntRange(min=0), default=0, show_default=True, help="Evaluate every N steps (always at the end)."),
            click.option("--save-every", type=click.IntRange(min=1), default=50, show_default=True),
            click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary on stdout (progress stays on stderr)."),
        ]
        if kind == "dpo":
            options += [
                click.option("--loss", type=click.Choice(["sigmoid", "ipo", "hinge", "robust"]), default="sigmoid", show_default=True),
                click.option("--beta", type=Finite(min=0, min_open=True), default=0.1, show_default=True),
                click.option("--label-smoothing", type=Finite(0, 0.5, max_open=True), default=0.0, show_default=True, help="eps of the robust loss."),
                click.option("--rpo-alpha", type=Finite(min=0), default=0.0, show_default=True, help="Add alpha x the chosen reply's mean NLL per token (RPO, TRL's rpo_alpha): keeps chosen replies and their EOS likely."),
            ]
        f = data_options(f)  # listed after the options above
        for option in reversed(options):
            f = option(f)
        return f

    return deco


def build_config(ctx: click.Context, kind: str, kw: dict, dist=None):
    """A TrainConfig from the flags; with --resume, the saved one (changed flags refused).

    In a distributed run the saved config is rank 0's (its disk holds the run).
    """
    from zephyr_local import store
    from zephyr_local.train.config import TrainConfig
    from zephyr_local.train.run import load_run_config

    kw = dict(kw)
    if kw.get("lora_scale") is not None:
        kw["lora_alpha"] = kw["lora_scale"] * kw["lora_rank"]
    kw["lora_targets"] = _targets(kw["lora_targets"])
    resume = kw.pop("resume")
    models = store.models_dir(ctx.obj.get("models_dir") if ctx.obj else None)
    if kw.get("model") is not None or not resume:
        kw["model"] = str(store.resolve_model(kw["model"], models).resolve())
    for key in ("data", "eval_data", "resume_adapter", "out"):
        if kw.get(key) and Path(kw[key]).expanduser().exists():
            kw[key] = str(Path(kw[key]).expanduser().resolve())
    cfg = TrainConfig(kind=kind)
    for name, dotted in FIELDS.items():
        if name in kw:
            _set(cfg, dotted, kw[name])
    if not resume:
        if not cfg.data:
            raise click.UsageError("--data is required (unless --resume)")
        return cfg, False
    if dist is not None and dist.size > 1:
        saved = dist.broadcast_json(load_run_config(Path(cfg.out)) if dist.is_main else None,
                                    "the run config broadcast")
    else:
        saved = load_run_config(Path(cfg.out))
    saved = TrainConfig.from_dict(saved)
    for name, dotted in FIELDS.items():
        given = ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        if name in kw and given and name != "out" and _get(saved, dotted) != _get(cfg, dotted):
            raise ZephyrError(f"--{name.replace('_', '-')} {_get(cfg, dotted)!r} differs from "
                              f"the run being resumed ({_get(saved, dotted)!r}): leave it out")
    saved.out = cfg.out
    return saved, True


def _progress(kind: str):
    """A rich progress bar fed by the run's events; returns (callback, progress)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                        console=_console())
    state = {"work": {}}

    def on_event(event: str, payload) -> None:
        if event == "work":  # tokenizing, the reference pass: before the first step
            if not progress.live.is_started:
                progress.start()
            tasks = state["work"]
            if payload["what"] not in tasks:
                tasks[payload["what"]] = progress.add_task(payload["what"], total=payload["total"],
                                                           info="")
            progress.update(tasks[payload["what"]], completed=payload["done"],
                            total=payload["total"], description=payload["what"])
        elif event == "data":
            for tag, ds in (("train", payload["train"]), ("eval", payload["eval"])):
                if ds is not None:
                    progress.console.print(f"[bold]{tag} data[/] {ds.source}: {ds.summary.line()}")
                    for err in ds.summary.first_errors:
                        progress.console.print(f"  [yellow]{err}[/]")
        elif event == "reference":
            how = "loaded from cache" if payload["cached"] else "computed and cached"
            progress.console.print(f"reference log-probs ({payload['data']}, {payload['rows']} "
                                   f"sequences): {how} {payload['path']}")
        elif event == "start":
            if not progress.live.is_started:
                progress.start()
            state["task"] = progress.add_task(kind, total=payload["total"],
                                              completed=payload["start"], info="")
        elif event == "step":
            progress.update(state["task"], completed=payload["step"], info=_step_info(payload))
        elif event == "eval":
            info = " ".join(f"{k}={v:.4g}" for k, v in payload.items()
                            if k != "step" and isinstance(v, float))
            progress.console.print(f"step {payload['step']} {info}")

    return on_event, progress


def _step_info(r: dict) -> str:
    keys = [("loss", "loss"), ("rewards/accuracies", "acc"), ("rewards/margins", "margin"),
            ("learning_rate", "lr"), ("tokens_per_second", "tok/s"), ("peak_memory_gb", "GB")]
    return " ".join(f"{short} {r[k]:.4g}" for k, short in keys if k in r)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def run_training(ctx: click.Context, kind: str, kw: dict) -> None:
    from zephyr_local.train import distributed

    dist = distributed.init()
    try:
        _train(ctx, kind, kw, dist)
    except ZephyrError as exc:
        if dist.size > 1:
            if getattr(exc, "collective", False) and not dist.is_main:
                ctx.exit(exc.exit_code)  # every rank hit it; rank 0 says so
            if not getattr(exc, "collective", False):
                exc.args = (f"{distributed.rank_name(dist.rank)}: {exc}",)
        raise
    finally:
        dist.close()


def _train(ctx: click.Context, kind: str, kw: dict, dist) -> None:
    from zephyr_local.train.run import run

    as_json = kw.pop("as_json", False)
    cfg, resume = build_config(ctx, kind, kw, dist)
    if dist.is_main and dist.size > cfg.batch_size:
        click.echo(f"Warning: each micro-batch of {cfg.batch_size} row(s) is split across "
                   f"{dist.size} ranks, so some ranks idle: raise --batch-size and lower "
                   "--grad-accumulation by the same factor (the same global batch).", err=True)
    on_event, progress = _progress(kind)
    try:
        result = run(cfg, resume=resume, on_event=on_event if dist.is_main else None, dist=dist)
    except KeyboardInterrupt:
        progress.stop()
        if dist.is_main:
            click.echo(f"Interrupted: the last checkpoint is in {cfg.out}/checkpoints; continue "
                       f"with `zephyr-local {kind} --out {cfg.out} --resume`.", err=True)
        ctx.exit(130)
    finally:
        progress.stop()
    if not dist.is_main:
        return
    if as_json:
        click.echo(json.dumps(summary(kind, result)))
        return
    click.echo(f"Wrote adapter {result.out} ({result.steps} steps); metrics "
               f"{result.out / 'metrics.jsonl'}, curves {result.plot}")
    if result.last:
        click.echo(json.dumps(result.last))
    if result.eval:
        click.echo(json.dumps(result.eval))


def summary(kind: str, result) -> dict:
    """`--json`: what the run wrote, its last step and its final evaluation (TRL names)."""
    return {"kind": kind, "adapter": str(result.out), "steps": result.steps,
            "total_steps": result.total_steps, "metrics": str(result.out / "metrics.jsonl"),
            "plot": str(result.plot) if result.plot else None,
            "reference_from_cache": result.reference_from_cache,
            "train_data": result.train_summary, "last_step": result.last, "eval": result.eval}


def register(cli: click.Group) -> None:
    """Add sft, dpo, evaluate and fuse to the command group."""

    @cli.command()
    @train_options("dpo")
    @click.pass_context
    def dpo(ctx, **kw):
        """Train a LoRA adapter with Direct Preference Optimization.

        The reference is the same weights with the adapter off (no second model
        copy); its log-probs are computed once and cached. Metrics go to
        OUT/metrics.jsonl (TRL names) and OUT/metrics.png.

        Example: zephyr-local dpo -m zephyr-test --data example:prefs --out adapters/dpo
        """
        run_training(ctx, "dpo", kw)

    @cli.command()
    @train_options("sft")
    @click.pass_context
    def sft(ctx, **kw):
        """Supervised fine-tuning of a LoRA adapter (loss on assistant turns, EOS included).

        Example: zephyr-local sft -m zephyr-test --data example:sft --out adapters/sft
        """
        run_training(ctx, "sft", kw)

    from zephyr_local.train.cli_more import register_more

    register_more(cli)
