"""The model-store commands: models, create-test-model, pull, quantize and import.

Only click is imported at module level so that `zephyr-local --help` stays instant;
each command imports its library module (store, testmodel, pull, quantize,
gguf_import) when it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from zephyr_local import backend
from zephyr_local.atomic import human_bytes
from zephyr_local.cli_common import store_dir
from zephyr_local.params import SEED
from zephyr_local.quantize import ALLOWED_BITS, ALLOWED_GROUP_SIZES, QuantizeOptions


def _one_of(values) -> str:
    """2, 3, 4 or 8."""
    *rest, last = [str(v) for v in values]
    return f"{', '.join(rest)} or {last}"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_context
def models(ctx, as_json: bool) -> None:
    """List local models: name, path, size, dtype and quantization.

    Directories in the store that cannot be loaded are named on stderr, with why.

    Example: zephyr-local models
    """
    from zephyr_local import display, store
    from zephyr_local.hfcache import cached_models

    rows = store.list_models(store_dir(ctx))
    rows += cached_models(exclude={r.source for r in rows if r.source})
    if as_json:
        click.echo(json.dumps([{**r.__dict__, "path": str(r.path)} for r in rows], indent=2))
        return
    usable = [r for r in rows if not r.error]
    if not usable:
        click.echo(f"No models in {store_dir(ctx)}. Try `zephyr-local pull` or "
                   "`zephyr-local create-test-model`.")
    else:
        display.print_models(usable, f"Models in {store_dir(ctx)} and the Hugging Face cache")
    for r in rows:
        if r.error:
            click.echo(f"not usable: {r.name}: {r.error}", err=True)


@click.command("create-test-model")
@click.argument("out_dir", required=False, type=click.Path(file_okay=False))
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(backend.COMPUTE_DTYPES), default=None,
              help="float32 is fastest on CPUs (default; bfloat16 with --full-size).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--full-size", is_flag=True,
              help="Zephyr-7B's real shape (~14.5 GB in bf16), written shard by shard, "
                   "for measuring quantize and memory (default OUT_DIR: zephyr-test-7b).")
@click.pass_context
def create_test_model_cmd(ctx, out_dir, seed, dtype, force, full_size) -> None:
    """Write a tiny random-weight Zephyr-architecture model with the real tokenizer.

    OUT_DIR defaults to `zephyr-test` in the model store. Every command works on
    it offline (its replies are gibberish).

    Example: zephyr-local create-test-model && zephyr-local generate -m zephyr-test -p Hi
    """
    from zephyr_local.testmodel import create_full_size_test_model, create_test_model

    if full_size:
        out = Path(out_dir) if out_dir else store_dir(ctx) / "zephyr-test-7b"
        path = create_full_size_test_model(
            out, seed=seed, dtype=dtype or "bfloat16", force=force,
            progress=lambda done, total: click.echo(f"shard {done}/{total} written", err=True))
    else:
        out = Path(out_dir) if out_dir else store_dir(ctx) / "zephyr-test"
        path = create_test_model(out, seed=seed, dtype=dtype or "float32", force=force)
    click.echo(f"Wrote {path}")


@click.command("pull")
@click.argument("repo_id", required=False)
@click.option("--revision", default=None, help="Branch, tag or commit (default: main).")
@click.option("--force", is_flag=True, help="Download again even if the model is in the store.")
@click.pass_context
def pull_cmd(ctx, repo_id: str | None, revision: str | None, force: bool) -> None:
    """Download a model from the Hugging Face hub into the store (default: Zephyr-7B-beta).

    Only safetensors weights and the config/tokenizer files are fetched; pickle
    checkpoints are refused. An interrupted pull resumes where it stopped when run again.

    Example: zephyr-local pull HuggingFaceH4/zephyr-7b-beta
    """
    from zephyr_local import display, pull, store

    repo_id = repo_id or store.DEFAULT_REPO
    try:
        with display.DownloadBar() as bar:
            result = pull.pull(repo_id, store_dir(ctx), revision=revision, force=force,
                               notify=bar.note, progress=bar.update)
    except KeyboardInterrupt:
        click.echo("The partial download is kept: the same command resumes it.", err=True)
        raise
    size = human_bytes(result.size_bytes)
    if result.from_hf_cache:
        click.echo(f"{repo_id} is already complete in the Hugging Face cache: {result.path} "
                   f"({size}); using it there (no second copy). --force downloads it into "
                   "the store.")
        return
    if result.already_present:
        click.echo(f"{repo_id} is already in the store: {result.path} ({size}). "
                   "Use --force to download it again.")
        return
    click.echo(f"Pulled {repo_id} @ {result.commit[:12]} into {result.path} ({size}).")
    click.echo(f"Next: zephyr-local quantize {repo_id} --bits 4")


@click.command("quantize")
@click.argument("model", required=False)
@click.option("--model", "-m", "model_opt", default=None, metavar="MODEL",
              help="The same as the MODEL argument (as every other command takes it).")
@click.option("--bits", type=int, default=QuantizeOptions.bits, show_default=True,
              help=f"{_one_of(ALLOWED_BITS)}.")
@click.option("--group-size", type=int, default=QuantizeOptions.group_size, show_default=True,
              help=f"Weights per scale and bias: {_one_of(ALLOWED_GROUP_SIZES)}.")
@click.option("--dtype", default=None,
              help="Scales, biases and unquantized parameters: "
                   f"{', '.join(backend.COMPUTE_DTYPES)} "
                   f"(default: the backend's fastest, {backend.default_dtypes_text()}).")
@click.option("--head-bits", type=int, default=None,
              help="Bits for the embedding and output head (default: --bits).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: <store>/<name>-<bits>bit).")
@click.option("--force", is_flag=True, help="Replace the output if it exists.")
@click.option("--no-eval", is_flag=True, help="Skip the perplexity/KL quality report.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def quantize_cmd(ctx, model, model_opt, bits, group_size, dtype, head_bits, out, force, no_eval,
             as_json) -> None:
    """Quantize MODEL (hub id, store name or directory) and report what it cost.

    The report (sizes, bits per weight, time, peak memory, perplexity and KL
    divergence against the source on a built-in text) is printed and saved as
    quantization_report.json beside the model, with a model card.

    Example: zephyr-local quantize HuggingFaceH4/zephyr-7b-beta --bits 4
    """
    from zephyr_local import display, store
    from zephyr_local import quantize as q

    if model and model_opt and model != model_opt:
        raise click.UsageError(f"two models given ({model!r} and --model {model_opt!r})")
    model = model or model_opt
    opts = q.QuantizeOptions(bits=bits, group_size=group_size, dtype=dtype,
                             head_bits=head_bits, force=force, evaluate=not no_eval).validate()
    arg = model or store.DEFAULT_REPO
    source = _quantize_source(arg, store_dir(ctx))
    # a hub id names the output (a Hugging Face cache snapshot dir is a commit hash)
    name = store.store_name(arg) if "/" in arg and not Path(arg).is_dir() else source.name
    target = Path(out) if out else store_dir(ctx) / q.output_name(name, opts)
    with display.ProgressBars() as bars:
        report = q.quantize(source, target, opts, bars("Quantizing"), bars("Evaluating"))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        display.print_quantize_report(report)


def _quantize_source(arg: str, store_path: Path) -> Path:
    """The source directory; a hub id that is not here yet is pulled first."""
    from zephyr_local import store
    from zephyr_local.errors import ModelNotFoundError

    try:
        return store.resolve_model(arg, store_path)
    except ModelNotFoundError:
        if arg.count("/") != 1 or arg.startswith((".", "/", "~")):
            raise
        from zephyr_local.pull import pull

        click.echo(f"{arg} is not in the store: pulling it first.", err=True)
        return pull(arg, store_path, notify=lambda line: click.echo(line, err=True)).path


@click.command("import")
@click.argument("source")
@click.option("--name", default=None, help="Name in the model store (default: from SOURCE).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory instead of the store.")
@click.option("--dtype", type=click.Choice(backend.COMPUTE_DTYPES), default=None,
              help="Scales, biases and float weights (default: the backend's fastest, "
                   f"{backend.default_dtypes_text()}).")
@click.option("--dequantize", is_flag=True,
              help="Write every tensor as float (a source for `quantize` at other bits).")
@click.option("--force", is_flag=True, help="Replace the output if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
@click.pass_context
def import_cmd(ctx, source, name, out, dtype, dequantize, force, as_json) -> None:
    """Import a llama/mistral GGUF (a .gguf file, or ollama:NAME[:TAG]) into the store.

    Q4_0, Q4_1 and Q8_0 tensors stay quantized (exactly); F32/F16/BF16 stay float;
    other types (K-quants, IQ) are dequantized to float. Nothing is downloaded.

    Example: zephyr-local import ollama:zephyr   (or: zephyr-local import model.Q4_0.gguf)
    """
    from zephyr_local import backend, display, gguf_import, ollama_store

    if name and out:
        raise click.UsageError("give --name or --out, not both")
    if source.startswith(ollama_store.PREFIX):
        path, default = ollama_store.find_gguf(source), ollama_store.store_name(source)
    else:
        path = Path(source).expanduser()
        default = gguf_import.default_name(path)
    target = Path(out) if out else store_dir(ctx) / (name or default)
    with display.ProgressBars() as bars:
        report = gguf_import.import_gguf(
            path, target, dtype=dtype or backend.default_dtype(), force=force,
            dequantize=dequantize, origin=source, progress=bars("Importing"))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    kept = f"{report.kept_quantized} tensors kept {report.bits}-bit" if report.bits else "float"
    click.echo(f"Imported {source} into {target}: {report.architecture}, "
               f"{report.parameters / 1e6:.0f}M parameters, {kept}, {report.dtype}; "
               f"{human_bytes(report.output_bytes)} in {report.seconds:.1f} s "
               f"(peak {report.peak_memory_gb:.2f} GB).")
    for note in report.notes:
        click.echo(f"Note: {note}.", err=True)
    if report.chat_template == "other":
        click.echo("Note: the GGUF's own chat template is kept in tokenizer_config.json; "
                   "zephyr-local chats and trains in Zephyr's (run `sft` first to teach it).",
                   err=True)
    click.echo(f"Next: zephyr-local chat -m {target.name if not out else target}")


COMMANDS = (models, create_test_model_cmd, pull_cmd, quantize_cmd, import_cmd)
