"""The conversation on screen: the system prompt's note and one MessageView per message."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from zephyr_local.tui.generation import clean_for_display
from zephyr_local.tui.widgets.message import MessageView


class ChatView(VerticalScroll):
    """The messages of the branch shown, oldest first, under the system prompt's note."""

    def compose(self):
        yield Static("", id="system-note", classes="hidden")

    def views(self) -> list[MessageView]:
        return list(self.query(MessageView))

    def shown(self) -> list[dict]:
        """The messages as shown: role, content and finish_reason of each."""
        return [{"role": v.role, "content": v.content, "finish_reason": v.finish_reason}
                for v in self.views()]

    def last_reply(self) -> MessageView | None:
        replies = [v for v in self.views() if v.role == "assistant"]
        return replies[-1] if replies else None

    def show_system_prompt(self, text: str | None) -> None:
        note = self.query_one("#system-note", Static)
        note.update(Text(f"System: {clean_for_display(text)}" if text else ""))
        note.set_class(not text, "hidden")

    async def show(self, stored: list, start: int = 0) -> None:
        """Show the stored messages (history.StoredMessage) from message `start` on."""
        await self.remove_children(self.views()[start:])
        await self.mount_all([MessageView.from_stored(m) for m in stored[start:]])
        self.sync(stored)

    def sync(self, stored: list) -> None:
        """Give the views their stored ids and version counts (after a save or a switch)."""
        for view, message in zip(self.views(), stored):
            view.set_stored(message)

    def mark_dropped(self, count: int) -> None:
        """Mark the first `count` messages as left out of the prompt, and no others."""
        for i, view in enumerate(self.views()):
            if view.dropped != (i < count):
                view.mark_dropped(i < count)
