"""The history sidebar: search box and the list of past conversations."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ListItem, ListView


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

    class RenameRequested(Message):
        def __init__(self, conversation_id: int, title: str) -> None:
            super().__init__()
            self.conversation_id = conversation_id
            self.title = title

    class DeleteRequested(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class SearchChanged(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def compose(self):
        yield Label("History", classes="title")
        yield Input(placeholder="Search…", id="history-search")
        yield ListView(id="history-list")

    @property
    def list_view(self) -> ListView:
        return self.query_one(ListView)

    async def show(self, conversations, current: int | None = None) -> None:
        """Replace the list with `conversations` (history.Conversation records)."""
        view = self.list_view
        await view.clear()
        items = [ConversationItem(c.id, c.title) for c in conversations]
        await view.extend(items)
        ids = [item.conversation_id for item in items]
        view.index = ids.index(current) if current in ids else (0 if ids else None)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.SearchChanged(event.value))

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ConversationItem):
            self.post_message(self.Selected(event.item.conversation_id))

    def _highlighted(self) -> ConversationItem | None:
        item = self.list_view.highlighted_child
        return item if isinstance(item, ConversationItem) else None

    def action_rename(self) -> None:
        item = self._highlighted()
        if item is not None:
            self.post_message(self.RenameRequested(item.conversation_id, item.title))

    def action_delete(self) -> None:
        item = self._highlighted()
        if item is not None:
            self.post_message(self.DeleteRequested(item.conversation_id))
