"""SVG snapshots of the chat's key screens."""

from __future__ import annotations

from tui_helpers import (
    SIZE,
    make_app,
    wait_until,
)

from zephyr_local.history import History, StoredMessage
from zephyr_local.tui.app import ChatApp
from zephyr_local.tui.config import ChatConfig
from zephyr_local.tui.missing_screen import ModelMissingScreen
from zephyr_local.tui.widgets.prompt import PromptInput


def _snapshot_history(tmp_path) -> int:
    history = History(tmp_path / "history.sqlite")
    cid = history.create(system_prompt="You are a helpful assistant.")
    history.append(cid, StoredMessage("user", "How do I reverse a list in Python?"))
    history.append(cid, StoredMessage(
        "assistant", "Use slicing:\n\n```python\nitems = [1, 2, 3]\nprint(items[::-1])\n```\n\n"
        "Or `items.reverse()` to do it **in place**.", "stop"))
    history.append(cid, StoredMessage("user", "And a tuple?"))
    history.append(cid, StoredMessage("assistant", "The same slice works: `t[::-1]`", "cancelled"))
    other = history.create()
    history.append(other, StoredMessage("user", "What is a KV cache?"))
    history.close()
    return cid


def test_snapshot_main_screen(snap_compare, engine, tmp_path):
    cid = _snapshot_history(tmp_path)

    async def resume(pilot):
        pilot.app.query_one(PromptInput).cursor_blink = False  # the cursor is always drawn
        await pilot.app.open_conversation(cid)
        await pilot.pause()

    assert snap_compare(make_app(engine, tmp_path), terminal_size=SIZE, run_before=resume)


def test_snapshot_history_sidebar(snap_compare, engine, tmp_path):
    cid = _snapshot_history(tmp_path)

    async def open_sidebar(pilot):
        await pilot.app.open_conversation(cid)
        await pilot.press("ctrl+b")
        await pilot.pause()

    assert snap_compare(make_app(engine, tmp_path), terminal_size=SIZE, run_before=open_sidebar)


def test_snapshot_model_missing(snap_compare, tmp_path, monkeypatch):
    monkeypatch.chdir("/")  # the message names the paths tried: keep them fixed

    async def until_shown(pilot):
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ModelMissingScreen))
        await pilot.pause()

    app = ChatApp(ChatConfig(model="zephyr-7b-beta-4bit", models_dir="/nonexistent/models",
                             history_path=tmp_path / "history.sqlite"))
    assert snap_compare(app, terminal_size=SIZE, run_before=until_shown)
