"""The `zephyr-local` command group. Each command parses, validates and calls the library.

mlx, mlx-lm and textual are imported inside the commands so that `--help` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

import click

from zephyr_local import flags as _flags
from zephyr_local import store_cli
from zephyr_local.bench import cli as bench_cli
from zephyr_local.cli_common import model_option, store_dir
from zephyr_local.errors import ZephyrError, describe_os_error, first_line
from zephyr_local.params import SEED, Finite
from zephyr_local.train import cli as train_cli


class _Group(click.Group):
    """The one error boundary: library errors and operating-system faults become one line
    on stderr and a non-zero exit code; no tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZephyrError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except OSError as exc:  # unwritable output, a full disk, a file where a dir should be
            _fail(ctx, describe_os_error(exc), 1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # a bug: still one line, the traceback on request
            if os.environ.get("ZEPHYR_LOCAL_DEBUG"):
                raise
            _fail(ctx, f"unexpected {type(exc).__name__}: {first_line(exc)} (a bug; "
                  "ZEPHYR_LOCAL_DEBUG=1 shows the traceback)", 70)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    click.secho(f"Error: {message}", err=True, fg="red")
    ctx.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zephyr-local")
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Model store (default: $ZEPHYR_LOCAL_HOME/models, or models/ in the checkout).",
)
@click.pass_context
def cli(ctx: click.Context, models_dir: str | None) -> None:
    """Zephyr-7B on your laptop: pull, quantize, chat and fine-tune, offline, with MLX."""
    ctx.obj = {"models_dir": models_dir}


# The store commands live in store_cli.py; the adapter commands (sft, dpo, evaluate, fuse,
# export-peft) in train/cli.py.
for _command in (*store_cli.COMMANDS, *train_cli.COMMANDS, *bench_cli.COMMANDS):
    cli.add_command(_command)


def sampling_options(f):
    """The sampling flags shared by `generate` and `chat` (defaults: the model card's)."""
    options = [
        click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Longest reply, in tokens."),
        click.option("--temp", type=Finite(min=0), default=0.7, show_default=True,
                     help="Temperature; 0 is greedy and deterministic."),
        click.option("--top-p", type=Finite(0, 1, min_open=True), default=0.95,
                     show_default=True, help="Nucleus sampling mass, in (0, 1]."),
        click.option("--top-k", type=click.IntRange(min=0), default=50, show_default=True,
                     help="Sample from the k likeliest tokens; 0 disables."),
        click.option("--min-p", type=Finite(0, 1, max_open=True), default=0.0,
                     show_default=True, help="Drop tokens below min-p x the top probability."),
        click.option("--repetition-penalty", type=Finite(min=0, min_open=True),
                     default=1.0, show_default=True, help="1.0 disables."),
        click.option("--seed", type=SEED, default=None, help="Seed for reproducible sampling."),
        click.option("--context-budget", type=click.IntRange(min=16), default=None,
                     help="Context budget in tokens (default: the model's 4096 window)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def lookup_options(f):
    """The prompt-lookup flags shared by `generate` and `chat`."""
    from zephyr_local.backend import NUM_DRAFT_TOKENS

    per_backend = ", ".join(f"{k} {v}" for k, v in NUM_DRAFT_TOKENS.items())
    f = click.option("--num-draft-tokens", type=click.IntRange(min=1), default=None,
                     help=f"Most tokens proposed per verify pass (default: {per_backend}).")(f)
    return click.option("--no-prompt-lookup", "no_prompt_lookup", is_flag=True,
                        help="Decode one token per pass (no speculation from the "
                             "conversation's own tokens).")(f)


def kv_cache_options(f):
    """The KV-cache flags shared by `generate` and `chat`."""
    from zephyr_local.kv_store import DEFAULT_MAX_GB, KV_BITS, KV_GROUP_SIZE, MAX_GB_ENV

    f = click.option("--kv-cache-max-gb", type=Finite(min=0), default=None,
                     help=f"Cap on all saved KV caches, least recently used evicted first "
                          f"(default: ${MAX_GB_ENV}, else {DEFAULT_MAX_GB:g}); 0 saves none.")(f)
    return click.option("--kv-bits", type=click.Choice([str(b) for b in KV_BITS]), default=None,
                        help="Quantize the KV cache (mlx-lm's QuantizedKVCache, group "
                             f"{KV_GROUP_SIZE}): smaller saved caches, less memory for long "
                             "chats.")(f)


def kv_cache_from(kwargs: dict) -> tuple[int | None, float | None]:
    """(kv_bits, kv_cache_max_gb) from the flags; the cap is checked here (env var too)."""
    from zephyr_local.kv_store import max_bytes

    bits, cap = kwargs.pop("kv_bits"), kwargs.pop("kv_cache_max_gb")
    max_bytes(cap)
    return (int(bits) if bits else None), cap


def lookup_from(kwargs: dict):
    from zephyr_local.lookup import LookupOptions

    return LookupOptions(enabled=not kwargs.pop("no_prompt_lookup"),
                         num_draft_tokens=kwargs.pop("num_draft_tokens"))


def sampling_from(kwargs: dict):
    from zephyr_local.sampling import SamplingOptions

    return SamplingOptions(
        temperature=kwargs.pop("temp"), top_p=kwargs.pop("top_p"), top_k=kwargs.pop("top_k"),
        min_p=kwargs.pop("min_p"), repetition_penalty=kwargs.pop("repetition_penalty"),
        seed=kwargs.pop("seed"), max_tokens=kwargs.pop("max_tokens"),
    ).validate()


def read_messages(source: str) -> list[dict]:
    """A conversation from a JSON file (or `-` for stdin): a list of {"role", "content"},
    or an object with a "messages" list (the chat export format)."""
    from zephyr_local.inputs import read_text
    from zephyr_local.template import validate

    name, text = read_text(source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ZephyrError(f"{name}: invalid JSON ({exc})") from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    try:
        return validate(data)
    except ZephyrError as exc:
        raise type(exc)(f"{name}: {exc}") from None


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def info(ctx: click.Context, as_json: bool) -> None:
    """Show the OS, Python, package versions, backend, device, BLAS, paths and offline state.

    The output is a fenced block to paste into a bug report as it is.

    Example: zephyr-local info
    """
    from zephyr_local import report
    from zephyr_local.train.distributed import describe as describe_group

    data = report.gather(store_dir(ctx))
    data["distributed"] = describe_group()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(report.block(data))


@cli.command()
@model_option
@click.option("--messages", "messages_file", default=None, metavar="FILE.json",
              help='A JSON list of {"role", "content"} messages; - reads stdin.')
@click.option("--text", default=None, help="Plain text to encode (BOS added).")
@click.option("--no-generation-prompt", is_flag=True, help="Leave out the trailing <|assistant|>.")
@click.pass_context
def tokenize(ctx, model, messages_file, text, no_generation_prompt) -> None:
    """Print the token ids of a conversation (Zephyr template) or text, as a JSON array.

    Example: zephyr-local tokenize -m zephyr-test --messages chat.json
    """
    from zephyr_local import loading, store, template
    from zephyr_local.inputs import check_text

    if (messages_file is None) == (text is None):
        raise click.UsageError("give exactly one of --messages or --text")
    messages = read_messages(messages_file) if messages_file is not None else None
    tokenizer = loading.load_tokenizer(store.resolve_model(model, store_dir(ctx)))
    if messages is not None:
        ids = template.encode(tokenizer, messages, not no_generation_prompt)
    else:
        ids = list(tokenizer.encode(check_text(text, "--text")))
    click.echo(json.dumps(ids))


@cli.command()
@model_option
@click.option("--adapter", default=None, type=click.Path(), help="LoRA adapter directory.")
@click.option("--prompt", "-p", default=None, help="The user message.")
@click.argument("stdin_prompt", required=False, metavar="[-]")
@click.option("--messages", "messages_file", default=None, metavar="FILE.json",
              help="Reply to a whole conversation instead of one prompt.")
@click.option("--system", default=None, help="System prompt.")
@click.option("--attach", "attach", multiple=True, metavar="FILE",
              help="A text document to answer from (repeatable): whole if it fits, else the "
                   "best passages.")
@sampling_options
@lookup_options
@kv_cache_options
@click.option("--json", "as_json", is_flag=True,
              help="Print only JSON on stdout: one object with the text and statistics.")
@click.option("--json-stream", is_flag=True,
              help="Print only JSON on stdout: one object per chunk, then the final one.")
@click.pass_context
def generate(ctx, model, adapter, prompt, stdin_prompt, messages_file, system, context_budget,
             attach, as_json, json_stream, **kwargs) -> None:
    """Stream Zephyr's reply to a prompt; `-` (or `--prompt -`) reads the prompt from stdin.

    With --messages the KV cache is saved after the reply, and the saved cache that
    shares the longest start with the conversation is reused: only new tokens are read.

    Example: zephyr-local generate -m zephyr-test --temp 0 --prompt "Write a haiku"
    """
    options, lookup = sampling_from(kwargs), lookup_from(kwargs)
    kv_bits, kv_cap = kv_cache_from(kwargs)
    messages = _prompt_messages(prompt, stdin_prompt, messages_file, system)
    from zephyr_local.engine import Engine
    from zephyr_local.kv_store import KVStore
    from zephyr_local.template import uses_own_template

    engine = Engine.load(model, adapter, store_dir(ctx).as_posix())
    notice = uses_own_template(engine.tokenizer)
    if notice:
        click.secho(f"Note: {notice}.", err=True, dim=True)
    parts, last, record = [], None, {}
    try:
        session = engine.session(context_budget, lookup, kv_bits)
        if messages_file is not None:  # saved beside the history, found again by content
            session.keep_cache(KVStore.beside(None, kv_cap))
        if attach:
            from zephyr_local.doc_prompt import one_shot

            plan, docs = one_shot(engine.tokenizer, messages, attach, session.context_budget,
                                  options.max_tokens)
            records = session.reply_to_ids(plan.ids, options, plan.dropped_turns)
            record = {"documents": [{"file": d.name, "path": d.path, "tokens": d.tokens}
                                    for d in docs], "documents_mode": plan.mode,
                      "passages": [asdict(u) for u in plan.used]}
        else:
            records = session.reply(messages, options)
        for last in records:
            parts.append(last.text)
            if json_stream:
                click.echo(json.dumps({"text": last.text, "token": last.token}))
            elif not as_json:
                click.echo(last.text, nl=False)
            sys.stdout.flush()
    finally:
        engine.close()
    stats = last.stats
    if stats.dropped_turns:
        click.secho(f"[{stats.dropped_turns} oldest turn(s) dropped to fit the context budget]",
                    err=True, fg="yellow")
    if as_json or json_stream:
        record = {"text": "".join(parts), "finish_reason": last.finish_reason, **stats.as_dict(),
                  **record}
        click.echo(json.dumps(record))
    else:
        click.echo()
        click.secho(_stats_line(stats), err=True, dim=True)


def _prompt_messages(prompt, stdin_prompt, messages_file, system) -> list[dict]:
    from zephyr_local.inputs import check_text, read_text

    if stdin_prompt not in (None, "-"):
        raise click.UsageError(f"unexpected argument {stdin_prompt!r} (use --prompt TEXT or -)")
    given = [x for x in (prompt, stdin_prompt, messages_file) if x is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --prompt TEXT, - (stdin) or --messages FILE")
    if messages_file is not None:
        messages = read_messages(messages_file)
    else:
        from_stdin = "-" in (stdin_prompt, prompt)  # mlx-lm's `--prompt -` reads stdin too
        text = read_text("-")[1] if from_stdin else check_text(prompt, "the prompt")
        if not text.strip():
            raise ZephyrError("the prompt is empty")
        messages = [{"role": "user", "content": text}]
    if system is not None:
        check_text(system, "--system")
        messages = [{"role": "system", "content": system}] + [
            m for m in messages if m["role"] != "system"
        ]
    return messages


def _stats_line(s) -> str:
    resumed = f", {s.loaded_tokens} from the saved cache" if s.loaded_tokens else ""
    return (
        f"prompt {s.prompt_tokens} tok ({s.prefilled_tokens} prefilled{resumed})"
        f" {s.prompt_tps:.1f} tok/s"
        f" | generation {s.generation_tokens} tok {s.generation_tps:.1f} tok/s"
        f" | ttft {s.ttft_s:.2f}s | peak {s.peak_memory_gb:.2f} GB"
        + (f" | lookup {s.accepted_tokens}/{s.draft_tokens} accepted" if s.draft_tokens else "")
    )


# --- chat command (zephyr_local/tui/) ---


@cli.command()
@model_option
@click.option("--adapter", default=None, type=click.Path(), help="LoRA adapter directory.")
@click.option("--system", default=None, help="System prompt for new conversations.")
@sampling_options
@lookup_options
@kv_cache_options
@click.option("--history", "history_path", default=None, type=click.Path(dir_okay=False),
              help="History database (default: $ZEPHYR_LOCAL_HOME/history.sqlite).")
@click.pass_context
def chat(ctx, model, adapter, system, context_budget, history_path, **kwargs) -> None:
    """Chat with Zephyr in a terminal app; every conversation is kept.

    Enter sends, Ctrl+J (or Alt+Enter) adds a newline, Esc stops a reply,
    Ctrl+B shows past conversations, /help lists the slash commands. A reopened
    conversation resumes from its KV cache saved beside the history.

    Example: zephyr-local chat -m zephyr-test --temp 0
    """
    from zephyr_local.history import History

    options, lookup = sampling_from(kwargs), lookup_from(kwargs)
    kv_bits, kv_cap = kv_cache_from(kwargs)
    History(history_path).close()  # a corrupt or newer database: one-line error, file untouched
    from zephyr_local.tui.app import ChatApp
    from zephyr_local.tui.config import ChatConfig

    models_dir = ctx.obj.get("models_dir") if ctx.obj else None
    config = ChatConfig(model=model, adapter=adapter, models_dir=models_dir, system_prompt=system,
                        options=options, context_budget=context_budget, history_path=history_path,
                        lookup=lookup, kv_bits=kv_bits, kv_cache_max_gb=kv_cap)
    app = ChatApp(config)
    if app.run() == "pull":
        _pull_default_model(ctx)
        app = ChatApp(config)
        app.run()
    history = app.chat_history.db
    if history is not None and history.pending:
        click.secho(f"Warning: {history.pending} change(s) of this chat could not be saved to "
                    f"{history.path} ({history.problem}).", err=True, fg="yellow")


def _pull_default_model(ctx: click.Context) -> None:
    """What the model-missing screen offers: `pull`, then `quantize --bits 4`."""
    from zephyr_local import store

    pull_cmd, quantize_cmd = cli.get_command(ctx, "pull"), cli.get_command(ctx, "quantize")
    if pull_cmd is None or quantize_cmd is None:
        raise ZephyrError("this install has no pull/quantize commands")
    ctx.invoke(pull_cmd, repo_id=store.DEFAULT_REPO)
    ctx.invoke(quantize_cmd, model=store.DEFAULT_REPO, bits=4)


# mlx-lm's flag names as aliases, from the one table in flags.py (after every command exists).
_flags.install(cli)
_flags.install_model_completion(cli)


def main() -> None:
    cli(prog_name="zephyr-local")


if __name__ == "__main__":
    main()
