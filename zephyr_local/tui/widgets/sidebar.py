"""The history sidebar: search box and the list of past conversations.

It lists, searches and renames through the ChatHistory it is given; opening and
deleting a conversation change what the app shows, so it posts those to the app.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ListItem, ListView

from zephyr_local.tui.chat_history import ChatHistory
from zephyr_local.tui.text_screen import TextEditScreen


class ConversationItem(ListItem):
    def __init__(self, conversation_id: int, title: str) -> None:
        super().__init__(Label(Text(title)))
        self.conversation_id = conversation_id
        self.title = title


class HistorySidebar(Vertical):
    """Past conversations, newest first. Enter resumes, r renames, Delete deletes."""

    BINDINGS = [
        Binding("r", "rename", "Rename"),
        Binding("delete,d", "delete", "Delete"),
    ]

    class Selected(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class DeleteRequested(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    def __init__(self, history: ChatHistory, **kwargs) -> None:
        super().__init__(**kwargs)
        self.history = history

    def compose(self):
        yield Label("History", classes="title")
        yield Input(placeholder="Search…", id="history-search")
        yield ListView(id="history-list")

    @property
    def list_view(self) -> ListView:
        return self.query_one(ListView)

    async def toggle(self) -> bool:
        """Show the sidebar (listing and focused) or hide it; whether it is shown now."""
        self.toggle_class("hidden")
        if self.has_class("hidden"):
            return False
        if self.history.db is None:
            self.notify("No history database is open.", severity="error")
        await self.refresh_list()
        self.list_view.focus()
        return True

    async def refresh_list(self) -> None:
        """List the stored conversations again (while the sidebar is shown)."""
        if self.history.db is not None and not self.has_class("hidden"):
            await self.show(self.history.conversations(), self.history.conversation_id)

    async def show(self, conversations, current: int | None = None) -> None:
        """Replace the list with `conversations` (history.Conversation records)."""
        view = self.list_view
        await view.clear()
        items = [ConversationItem(c.id, c.title) for c in conversations]
        await view.extend(items)
        ids = [item.conversation_id for item in items]
        view.index = ids.index(current) if current in ids else (0 if ids else None)

    async def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.history.search = event.value
        await self.refresh_list()

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ConversationItem):
            self.post_message(self.Selected(event.item.conversation_id))

    def _highlighted(self) -> ConversationItem | None:
        item = self.list_view.highlighted_child
        return item if isinstance(item, ConversationItem) else None

    def action_rename(self) -> None:
        item = self._highlighted()
        if item is None:
            return

        async def renamed(title: str | None) -> None:
            if title is not None and self.history.db is not None:
                self.history.rename(item.conversation_id, title)
                await self.refresh_list()

        self.app.push_screen(TextEditScreen("Rename conversation", item.title), renamed)

    def action_delete(self) -> None:
        item = self._highlighted()
        if item is not None:
            self.post_message(self.DeleteRequested(item.conversation_id))
