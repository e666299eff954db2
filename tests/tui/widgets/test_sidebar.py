"""The history sidebar hosted alone, on a ChatHistory of its own."""

from __future__ import annotations

import pytest
from textual.app import App

from zephyr_local.history import History, StoredMessage
from zephyr_local.sampling import SamplingOptions
from zephyr_local.tui.chat_history import ChatHistory
from zephyr_local.tui.text_screen import TextEditScreen
from zephyr_local.tui.widgets.sidebar import ConversationItem, HistorySidebar


class SidebarApp(App):
    def compose(self):
        yield HistorySidebar(self.history, classes="hidden")

    def on_history_sidebar_selected(self, event: HistorySidebar.Selected) -> None:
        self.selected.append(event.conversation_id)


def titles(app) -> list[str]:
    return [item.title for item in app.query(ConversationItem)]


@pytest.fixture
def history(tmp_path):
    db = History(tmp_path / "h.sqlite")
    for text in ("About llamas", "About owls"):
        db.append(db.create(), StoredMessage("user", text))
    db.close()
    chat = ChatHistory(tmp_path / "h.sqlite", None, SamplingOptions(), lambda: None,
                       lambda message, **kw: None)
    chat.open()
    yield chat
    chat.close()


@pytest.mark.asyncio
async def test_sidebar_lists_searches_renames_and_posts_selection(history):
    app = SidebarApp()
    app.history, app.selected = history, []
    async with app.run_test() as pilot:
        sidebar = app.query_one(HistorySidebar)
        assert await sidebar.toggle() and titles(app) == ["About owls", "About llamas"]
        sidebar.query_one("#history-search").value = "llama"
        await pilot.pause()
        assert titles(app) == ["About llamas"] and history.search == "llama"
        sidebar.list_view.focus()
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, TextEditScreen)
        app.screen.query_one("TextArea").text = "Llama facts"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert titles(app) == ["Llama facts"]  # the search matches its message too
        assert sorted(c.title for c in history.db.list()) == ["About owls", "Llama facts"]
        sidebar.query_one("#history-search").value = ""
        await pilot.pause()
        sidebar.list_view.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.selected == [history.db.list()[0].id]
        assert not await sidebar.toggle()  # hidden again
