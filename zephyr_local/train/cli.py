"""The adapter commands: `sft`, `dpo`, `evaluate`, `fuse` and `export-peft`.

Each is a module-level click command; `zephyr_local/cli.py` adds them to the group.
Only click is imported at module level so that `zephyr-local --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from zephyr_local.backend import COMPUTE_DTYPES, default_dtypes_text
from zephyr_local.cli_common import store_dir
from zephyr_local.errors import ZephyrError
from zephyr_local.quantize import ALLOWED_BITS, ALLOWED_GROUP_SIZES
from zephyr_local.train.config import TrainConfig, get_dotted, set_dotted
from zephyr_local.train.options import FIELDS, config_option, data_options, train_options


def _targets(value: str) -> tuple:
    return tuple(t.strip() for t in value.split(",") if t.strip())


def build_config(ctx: click.Context, kind: str, kw: dict, dist=None):
    """A TrainConfig from the flags; with --resume, the saved one (changed flags refused).

    In a distributed run the saved config is rank 0's (its disk holds the run).
    """
    from zephyr_local import store
    from zephyr_local.train.run import load_run_config

    kw = dict(kw)
    if kw.get("lora_scale") is not None:
        kw["lora_alpha"] = kw["lora_scale"] * kw["lora_rank"]
    kw["lora_targets"] = _targets(kw["lora_targets"])
    resume = kw.pop("resume")
    models = store_dir(ctx)
    if kw.get("model") is not None or not resume:
        kw["model"] = str(store.resolve_model(kw["model"], models).resolve())
    for key in ("data", "eval_data", "resume_adapter", "out"):
        if kw.get(key) and Path(kw[key]).expanduser().exists():
            kw[key] = str(Path(kw[key]).expanduser().resolve())
    cfg = TrainConfig.for_kind(kind)
    for name, dotted in FIELDS.items():
        if name in kw:
            set_dotted(cfg, dotted, kw[name])
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
        if name not in kw or not given or name == "out":
            continue
        old, new = get_dotted(saved, dotted), get_dotted(cfg, dotted)
        if old != new:
            raise ZephyrError(f"--{name.replace('_', '-')} {new!r} differs from "
                              f"the run being resumed ({old!r}): leave it out")
    saved.out = cfg.out
    return saved, True


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
    from zephyr_local import display
    from zephyr_local.train.run import run

    as_json = kw.pop("as_json", False)
    cfg, resume = build_config(ctx, kind, kw, dist)
    if dist.is_main and dist.size > cfg.batch_size:
        click.echo(f"Warning: each micro-batch of {cfg.batch_size} row(s) is split across "
                   f"{dist.size} ranks, so some ranks idle: raise --batch-size and lower "
                   "--grad-accumulation by the same factor (the same global batch).", err=True)
    on_event, progress = display.training_progress(kind)
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


@click.command()
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


@click.command()
@train_options("sft")
@click.pass_context
def sft(ctx, **kw):
    """Supervised fine-tuning of a LoRA adapter (loss on assistant turns, EOS included).

    Example: zephyr-local sft -m zephyr-test --data example:sft --out adapters/sft
    """
    run_training(ctx, "sft", kw)


@click.command()
@click.option("--model", "-m", "model", default=None,
              help="Base model (default: zephyr-7b-beta-4bit).")
@click.option("--adapter", default=None, type=click.Path(file_okay=False),
              help="Adapter to evaluate (default: the base alone).")
@click.option("--data", required=True,
              help="Preference or SFT JSONL (a directory: its valid.jsonl).")
@click.option("--reference-adapter", default=None, type=click.Path(file_okay=False),
              help="DPO reference (default: the adapter the run started from, else the base).")
@config_option("loss")
@config_option("beta", default=None, show_default=False,
               help=f"Default: the adapter's training beta, else {TrainConfig().beta}.")
@config_option("label_smoothing", help=None, show_default=False)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@data_options
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (the default when stdout is not a terminal).")
@click.pass_context
def evaluate(ctx, model, adapter, data, reference_adapter, loss, beta, label_smoothing,
             batch_size, max_length, max_prompt_length, strict, as_json):
    """Print an adapter's metrics on held-out data: a table, or JSON when piped.

    Metric names are TRL's evaluation names (eval_loss, eval_rewards/accuracies, ...).

    Preference data: pairs, loss, rewards/accuracies (per pair), rewards/margins.
    SFT data: loss and perplexity over assistant tokens.

    Example: zephyr-local evaluate -m zephyr-test --adapter adapters/dpo --data example:prefs
    """
    from zephyr_local import store
    from zephyr_local.train.config import DataConfig
    from zephyr_local.train.evaluate import evaluate as run_eval

    models = store_dir(ctx)
    path = store.resolve_model(model, models)
    dc = DataConfig(max_length=max_length, max_prompt_length=max_prompt_length, strict=strict)
    from zephyr_local import display

    with display.ProgressBars() as bars:
        result = run_eval(path, data, Path(adapter) if adapter else None,
                          reference_adapter=Path(reference_adapter) if reference_adapter else None,
                          loss=loss, beta=beta, label_smoothing=label_smoothing,
                          batch_size=batch_size, data_config=dc, progress=bars("Evaluating"))
    if as_json or not display.stdout_is_terminal():
        click.echo(json.dumps(result, indent=2))
    else:
        display.print_metrics_table(result)


@click.command()
@click.option("--model", "-m", "model", default=None,
              help="Base model (default: zephyr-7b-beta-4bit).")
@click.option("--adapter", required=True, type=click.Path(file_okay=False),
              help="Adapter directory.")
@click.option("--out", required=True,
              help="Output directory; a bare name goes into the model store.")
@click.option("--bits", type=click.Choice([str(b) for b in ALLOWED_BITS]), default=None,
              help="Quantize the fused model.")
@click.option("--group-size", type=click.Choice([str(g) for g in ALLOWED_GROUP_SIZES]),
              default="64", show_default=True)
@click.option("--dtype", type=click.Choice(COMPUTE_DTYPES), default=None,
              help="Float parameters (and with --bits the scales and biases); default: the "
                   "base's, with --bits the backend's fastest "
                   f"({default_dtypes_text()}).")
@click.option("--dequantize", is_flag=True,
              help="Write float16 weights even from a quantized base.")
@click.option("--export-gguf", is_flag=True,
              help="Also write a float16 GGUF (llama.cpp, ollama) and an ollama Modelfile "
                   "into --out.")
@click.option("--gguf-path", default="ggml-model-f16.gguf", show_default=True,
              help="File name of the GGUF inside --out.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.pass_context
def fuse(ctx, model, adapter, out, bits, group_size, dtype, dequantize, export_gguf,
         gguf_path, force):
    """Merge an adapter into the base weights (optionally quantized) as a new model.

    With --export-gguf, also a float16 GGUF and a Modelfile: `ollama create NAME -f
    OUT/Modelfile`. Tokenizer files are copied byte for byte.

    Example: zephyr-local fuse -m zephyr-test --adapter adapters/dpo --out zephyr-test-dpo
    """
    from zephyr_local import display, store
    from zephyr_local.train.fuse import FuseOptions
    from zephyr_local.train.fuse import fuse as run_fuse

    models = store_dir(ctx)
    path = store.resolve_model(model, models)
    target = Path(out).expanduser()
    if "/" not in out and not out.startswith("."):
        target = models / out
    opts = FuseOptions(bits=int(bits) if bits else None, group_size=int(group_size),
                       dequantize=dequantize, export_gguf=export_gguf, gguf_name=gguf_path,
                       force=force, dtype=dtype).validate()
    with display.ProgressBars() as bars:
        written = run_fuse(path, Path(adapter), target, opts, bars("Fusing"))
    click.echo(f"Wrote {written}")
    if export_gguf:
        click.echo(f"GGUF: {written / gguf_path}; ollama: "
                   f"`ollama create {written.name} -f {written / 'Modelfile'}`")


@click.command("export-peft")
@click.argument("adapter", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="PEFT adapter directory to write.")
@click.option("--base-model", default=None,
              help="Hub id for base_model_name_or_path (default: traced from the adapter).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def export_peft(adapter, out, base_model, force) -> None:
    """Write an adapter in Hugging Face PEFT's format, for PeftModel.from_pretrained.

    Example: zephyr-local export-peft adapters/dpo --out adapters/dpo-peft
    """
    from zephyr_local.export import PEFT_CONFIG
    from zephyr_local.export import export_peft as run_export

    written = run_export(Path(adapter), Path(out), base_model, force)
    config = json.loads((written / PEFT_CONFIG).read_text())
    click.echo(f"Wrote {written} (PEFT LoRA r={config['r']}, "
               f"lora_alpha={config['lora_alpha']}, "
               f"base {config['base_model_name_or_path']!r})")


# What zephyr_local/cli.py adds to the command group.
COMMANDS = (sft, dpo, evaluate, fuse, export_peft)
