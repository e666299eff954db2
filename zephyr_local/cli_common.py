"""What every command module shares: the model store the group's --models-dir names."""

from __future__ import annotations

from pathlib import Path

import click


def store_dir(ctx: click.Context) -> Path:
    """The model store: --models-dir, else $ZEPHYR_LOCAL_HOME/models, else models/."""
    from zephyr_local import store

    return store.models_dir(ctx.obj.get("models_dir") if ctx.obj else None)
