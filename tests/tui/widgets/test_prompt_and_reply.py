"""PromptInput and ChatView's reply stream hosted alone: what they post for what they get."""

from __future__ import annotations

import pytest
from textual.app import App
from tui_helpers import wait_until

from zephyr_local.engine import Response
from zephyr_local.history import StoredMessage
from zephyr_local.sampling import SamplingOptions
from zephyr_local.tui.chat_history import ChatHistory
from zephyr_local.tui.commands import BY_NAME
from zephyr_local.tui.widgets.chat_view import ChatView
from zephyr_local.tui.widgets.message import MessageView
from zephyr_local.tui.widgets.prompt import PromptInput


class Host(App):
    """One widget, and every message it posts."""

    def __init__(self, widget) -> None:
        super().__init__()
        self.widget, self.posted, self.notices = widget, [], []

    def compose(self):
        yield self.widget

    def notify(self, message, **kwargs) -> None:
        self.notices.append(message)

    def on_prompt_input_submitted(self, event) -> None:
        self.posted.append(("submitted", event.text))

    def on_prompt_input_command_entered(self, event) -> None:
        self.posted.append(("command", event.command, event.argument))

    def on_chat_view_reply_finished(self, event) -> None:
        self.posted.append(("finished", event.view, event.text, event.final))

    def on_chat_view_reply_failed(self, event) -> None:
        self.posted.append(("failed", str(event.error), event.unsent))


@pytest.mark.asyncio
async def test_prompt_posts_commands_and_messages_and_keeps_unknown_commands():
    prompt = PromptInput()
    app = Host(prompt)
    async with app.run_test() as pilot:
        prompt.text = "/system  Be brief. "
        await pilot.press("enter")
        await pilot.pause()
        assert app.posted == [("command", BY_NAME["system"], "Be brief.")]
        assert prompt.text == "" and prompt.sent_history == ["/system  Be brief. "]
        prompt.text = "/nope"
        await pilot.press("enter")
        await pilot.pause()
        assert len(app.posted) == 1 and prompt.text == "/nope"  # left to be corrected
        assert app.notices and "/nope" in app.notices[-1]
        prompt.text = "//etc/hosts is a path"
        await pilot.press("enter")
        await pilot.pause()
        assert app.posted[-1] == ("submitted", "/etc/hosts is a path")
        assert prompt.text == "//etc/hosts is a path"  # kept until the app accepts it
        prompt.accept()
        assert prompt.text == "" and prompt.sent_history[-1] == "//etc/hosts is a path"
        prompt.give_back("try again")
        assert prompt.text == "try again" and prompt.cursor_location == (0, 9)


def _history(tmp_path) -> ChatHistory:
    history = ChatHistory(tmp_path / "h.sqlite", None, SamplingOptions(), lambda: None,
                          lambda message, **kw: None)
    history.open()
    return history


@pytest.mark.asyncio
async def test_reply_streams_into_the_view_and_is_posted_when_done(tmp_path):
    final = Response("!", None, "stop")
    records = [Response("Hel", 1), Response("lo", 2), final]
    chat = ChatView(_history(tmp_path))
    app = Host(chat)
    async with app.run_test() as pilot:
        await chat.stream_reply(lambda: iter(records))
        await wait_until(pilot, lambda: app.posted)
        [(kind, view, text, got)] = app.posted
        assert (kind, text, got) == ("finished", "Hello!", final)
        assert chat.views() == [view] and view.content == "Hello!"
        assert view.finish_reason == "stop" and not view.has_class("streaming")


@pytest.mark.asyncio
async def test_a_failed_reply_leaves_the_view_and_gives_the_question_back(tmp_path):
    history = _history(tmp_path)
    chat = ChatView(history)
    app = Host(chat)

    def failing():
        yield Response("partial", 1)
        raise RuntimeError("out of memory")

    async with app.run_test() as pilot:
        history.save(StoredMessage("user", "the question"))
        await chat.mount(MessageView("user", "the question"))
        await chat.stream_reply(failing)
        await wait_until(pilot, lambda: app.posted)
        assert app.posted == [("failed", "out of memory", "the question")]
        assert chat.views() == [] and history.messages() == []
