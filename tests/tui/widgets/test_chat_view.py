"""The conversation view hosted alone: stored messages in, what it shows out."""

from __future__ import annotations

import pytest
from textual.app import App

from zephyr_local.history import StoredMessage
from zephyr_local.sampling import SamplingOptions
from zephyr_local.tui.chat_history import ChatHistory
from zephyr_local.tui.widgets.chat_view import ChatView


class ChatViewApp(App):
    def compose(self):
        yield ChatView(self.history)


STORED = [StoredMessage("user", "q1", id=1), StoredMessage("assistant", "a1", "stop", id=2,
                                                            parent_id=1, version=2, versions=2),
          StoredMessage("user", "q2\x1b[31m", id=3, parent_id=2),
          StoredMessage("assistant", "a2", "cancelled", id=4, parent_id=3)]


@pytest.mark.asyncio
async def test_chat_view_shows_stored_messages_marks_dropped_and_the_system_note(tmp_path):
    app = ChatViewApp()
    app.history = ChatHistory(tmp_path / "h.sqlite", None, SamplingOptions(), lambda: None,
                              lambda message, **kw: None)
    async with app.run_test() as pilot:
        chat = app.query_one(ChatView)
        await chat.show(STORED)
        assert [(m["role"], m["content"], m["finish_reason"]) for m in chat.shown()] == [
            (m.role, m.content, m.finish_reason) for m in STORED]
        views = chat.views()
        assert [v.message_id for v in views] == [1, 2, 3, 4]
        assert "2/2" in str(views[1].query_one(".header").render())
        assert chat.last_reply() is views[3]
        chat.mark_dropped(2)
        assert [v.has_class("dropped") for v in views] == [True, True, False, False]
        chat.mark_dropped(0)
        assert not any(v.has_class("dropped") for v in chat.views())
        await chat.show(STORED[:2], start=1)  # the branch again from message 1: a1 only
        assert [v.content for v in chat.views()] == ["q1", "a1"] and chat.views()[0] is views[0]
        note = chat.query_one("#system-note")
        chat.show_system_prompt("Be \x1b[2Jbrief.")
        await pilot.pause()
        assert str(note.render()) == "System: Be brief." and not note.has_class("hidden")
        chat.show_system_prompt(None)
        assert note.has_class("hidden")
