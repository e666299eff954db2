"""The `evaluate` and `fuse` commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from zephyr_local.backend import COMPUTE_DTYPES, default_dtypes_text
from zephyr_local.params import Finite


def register_more(cli: click.Group) -> None:
    from zephyr_local.train.commands import data_options

    @cli.command()
    @click.option("--model", "-m", "model", default=None, help="Base model (default: zephyr-7b-beta-4bit).")
    @click.option("--adapter", default=None, type=click.Path(file_okay=False), help="Adapter to evaluate (default: the base alone).")
    @click.option("--data", required=True, help="Preference or SFT JSONL (a directory: its valid.jsonl).")
    @click.option("--reference-adapter", default=None, type=click.Path(file_okay=False), help="DPO reference (default: the adapter the run started from, else the base).")
    @click.option("--loss", type=click.Choice(["sigmoid", "ipo", "hinge", "robust"]), default="sigmoid", show_default=True)
    @click.option("--beta", type=Finite(min=0, min_open=True), default=None, help="Default: the adapter's training beta, else 0.1.")
    @click.option("--label-smoothing", type=Finite(0, 0.5, max_open=True), default=0.0)
    @click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
    @data_options
    @click.option("--json", "as_json", is_flag=True, help="Print JSON (the default when stdout is not a terminal).")
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

        models = store.models_dir(ctx.obj.get("models_dir") if ctx.obj else None)
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

    @cli.command()
    @click.option("--model", "-m", "model", default=None, help="Base model (default: zephyr-7b-beta-4bit).")
    @click.option("--adapter", required=True, type=click.Path(file_okay=False), help="Adapter directory.")
    @click.option("--out", required=True, help="Output directory; a bare name goes into the model store.")
    @click.option("--bits", type=click.Choice(["2", "3", "4", "5", "6", "8"]), default=None, help="Quantize the fused model.")
    @click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True)
    @click.option("--dtype", type=click.Choice(COMPUTE_DTYPES), default=None,
                  help="Float parameters (and with --bits the scales and biases); default: the "
                       "base's, with --bits the backend's fastest "
                       f"({default_dtypes_text()}).")
    @click.option("--dequantize", is_flag=True, help="Write float16 weights even from a quantized base.")
    @click.option("--export-gguf", is_flag=True, help="Also write a float16 GGUF (llama.cpp, ollama) and an ollama Modelfile into --out.")
    @click.option("--gguf-path", default="ggml-model-f16.gguf", show_default=True, help="File name of the GGUF inside --out.")
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

        models = store.models_dir(ctx.obj.get("models_dir") if ctx.obj else None)
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
