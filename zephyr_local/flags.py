"""mlx-lm's flag names, accepted as aliases of ours where they mean the same thing.

A user coming from `mlx_lm.generate`, `mlx_lm.convert`, `mlx_lm.lora` or
`mlx_lm.fuse` can keep typing the flags they know. This table is the one place
that says which of our flags each mlx-lm name stands for, command by command
(`--adapter-path` is the adapter to load in `generate`, but the directory that
training writes in `sft`/`dpo`, as in `mlx_lm.lora`). Our own names stay the
ones shown first in `--help`.
"""

from __future__ import annotations

import click

_INFERENCE = ("generate", "chat")
_TRAINING = ("sft", "dpo")

# mlx-lm's flag -> {command: our flag}.
MLX_LM_ALIASES: dict[str, dict[str, str]] = {
    "--adapter-path": {**dict.fromkeys((*_INFERENCE, "evaluate", "fuse"),
                                       "--adapter"), **dict.fromkeys(_TRAINING, "--out")},
    "--system-prompt": dict.fromkeys(_INFERENCE, "--system"),
    "--q-bits": dict.fromkeys(("quantize", "fuse"), "--bits"),
    "--q-group-size": dict.fromkeys(("quantize", "fuse"), "--group-size"),
    "--hf-path": {"quantize": "--model"},
    "--mlx-path": {"quantize": "--out"},
    "--save-path": {"fuse": "--out"},
    "--num-layers": dict.fromkeys(_TRAINING, "--lora-layers"),
    "--grad-accumulation-steps": dict.fromkeys(_TRAINING, "--grad-accumulation"),
    "--max-seq-length": dict.fromkeys((*_TRAINING, "evaluate"), "--max-length"),
    "--steps-per-eval": dict.fromkeys(_TRAINING, "--eval-every"),
}


def aliases_for(command: str) -> dict[str, str]:
    """{our flag: mlx-lm alias} for one command."""
    return {ours: alias for alias, where in MLX_LM_ALIASES.items()
            for cmd, ours in where.items() if cmd == command}


def install(group: click.Group) -> None:
    """Add each mlx-lm alias to the option it stands for, on every command of `group`.

    Raises:
        LookupError: an entry names a command or flag that does not exist (the
            table and the commands must not drift apart).
    """
    for alias, where in MLX_LM_ALIASES.items():
        for name, ours in where.items():
            command = group.commands.get(name)
            if command is None:
                raise LookupError(f"alias {alias}: no command {name!r}")
            option = next((p for p in command.params
                           if isinstance(p, click.Option) and ours in p.opts), None)
            if option is None:
                raise LookupError(f"alias {alias}: `{name}` has no {ours} option")
            if alias not in option.opts:
                option.opts.append(alias)


def complete_models(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Shell completion of a model argument: the store's names, then the HF cache's ids."""
    from zephyr_local import store
    from zephyr_local.hfcache import cached_models

    root = ctx.find_root()
    store_dir = store.models_dir((root.obj or {}).get("models_dir")
                                 or root.params.get("models_dir"))
    names = [p.name for p in store._store_entries(store_dir)]
    if "/" in incomplete or not names:
        names += [m.name for m in cached_models()]
    return [click.shell_completion.CompletionItem(n) for n in names if n.startswith(incomplete)]


def install_model_completion(group: click.Group) -> None:
    """Every `--model`/`-m` option and MODEL argument completes model names.

    Set after the commands exist, so the commands' own modules stay as they are.
    """
    for command in group.commands.values():
        for param in command.params:
            names = getattr(param, "opts", [])
            if "--model" in names or (isinstance(param, click.Argument) and param.name == "model"):
                param._custom_shell_complete = complete_models  # click's completion hook
