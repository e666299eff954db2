"""Loading the chat's model (Engine.load, on the app's worker thread) and what the app
says about the model it got."""

from __future__ import annotations

from rich.markup import escape

from zephyr_local.errors import ZephyrError
from zephyr_local.tui.config import ChatConfig


def load_engine(config: ChatConfig):
    """The engine for `config`'s model and adapter (engine.Engine).

    Raises:
        ZephyrError: for every fault, an unexpected one too: the app shows a screen for
            it (missing_screen.py), never a traceback.
    """
    from zephyr_local.engine import Engine
    from zephyr_local.kv_store import group_size_for

    try:
        engine = Engine.load(config.model, config.adapter, config.models_dir)
    except ZephyrError:
        raise
    except Exception as exc:
        raise ZephyrError(f"cannot load the model: {exc}") from exc
    try:
        group_size_for(engine.loaded.config, config.kv_bits)  # a --kv-bits its heads refuse
    except ZephyrError:
        engine.close()
        raise
    return engine


def template_notice(tokenizer) -> str | None:
    """The notice for a model that ships a chat template other than Zephyr's, escaped for
    Textual's markup; None for one that does not."""
    from zephyr_local.template import uses_own_template

    notice = uses_own_template(tokenizer)
    return escape(notice.capitalize() + ".") if notice else None
