"""What the command modules share: the model store --models-dir names, the --model option."""

from __future__ import annotations

from pathlib import Path

import click


def store_dir(ctx: click.Context) -> Path:
    """The model store: --models-dir, else $ZEPHYR_LOCAL_HOME/models, else models/."""
    from zephyr_local import store

    return store.models_dir(ctx.obj.get("models_dir") if ctx.obj else None)


def model_option(f):
    return click.option(
        "--model", "-m", "model", default=None,
        help="Local directory, store name, or downloaded hub id (default: zephyr-7b-beta-4bit).",
    )(f)
