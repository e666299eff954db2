"""What the chat's Pilot tests share: the app on the test model, and waiting for it."""

from __future__ import annotations

import time

from zephyr_local.history import History
from zephyr_local.sampling import SamplingOptions
from zephyr_local.tui.app import ChatApp
from zephyr_local.tui.config import ChatConfig
from zephyr_local.tui.text_screen import TextEditScreen
from zephyr_local.tui.widgets.prompt import PromptInput

GREEDY = SamplingOptions(temperature=0.0, max_tokens=8)


SIZE = (100, 30)


async def wait_until(pilot, condition, timeout: float = 30.0) -> None:
    """Let the app run until `condition()` holds (fails the test after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


async def type_and_send(pilot, text: str) -> None:
    pilot.app.query_one(PromptInput).text = text
    await pilot.press("enter")
    await wait_until(pilot, lambda: not pilot.app.generating)


async def edit_message(pilot, index: int, text: str) -> None:
    """Edit message `index` (Tab to it, e) and resend it as `text`."""
    app = pilot.app
    app.views()[index].focus()
    await pilot.press("e")
    await wait_until(pilot, lambda: isinstance(app.screen, TextEditScreen))
    app.screen.query_one("TextArea").text = text
    await pilot.press("ctrl+s")


def make_app(engine, tmp_path, options=GREEDY, **config) -> ChatApp:
    cfg = ChatConfig(options=options, history_path=tmp_path / "history.sqlite", **config)
    return ChatApp(cfg, engine=engine)


def roles(app):
    return [v.role for v in app.views()]


def stored(tmp_path, conversation_id):
    with_db = History(tmp_path / "history.sqlite")
    try:
        return with_db.messages(conversation_id)
    finally:
        with_db.close()


def reference_reply(engine, messages, options=GREEDY) -> str:
    """The engine's own reply on a fresh session: the oracle for what the app shows."""
    return "".join(r.text for r in engine.session().reply(messages, options))
