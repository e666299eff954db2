"""The conversation on screen: the system prompt's note and one MessageView per message.

The view shows one branch of the conversation's tree (history.py), from the first
message to the current leaf. `[` / `]` on a message move between its versions and
the conversation below follows; the view asks its ChatHistory to switch and posts
BranchShown. The engine's KV cache is trimmed to the common prefix of what it holds
and the new prompt, so after a switch only the tokens past the branch point are
prefilled.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from zephyr_local.tui.chat_history import ChatHistory
from zephyr_local.tui.generation import clean_for_display
from zephyr_local.tui.widgets.message import MessageView


class ChatView(VerticalScroll):
    """The messages of the branch shown, oldest first, under the system prompt's note.

    Args:
        history: the conversation whose versions `[` / `]` switch between.
        busy: whether a reply is streaming (no switching then).
    """

    class BranchShown(Message):
        """Another version is shown: what the prompt holds has changed."""

    def __init__(self, history: ChatHistory, busy: Callable[[], bool] = lambda: False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.history, self.busy = history, busy

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

    async def show_branch(self, start: int = 0) -> None:
        """Show the current branch again from message `start` on."""
        await self.show(self.history.messages(), start)
        self.mark_dropped(0)
        self.scroll_end(animate=False)

    async def on_message_view_version_requested(self, event: MessageView.VersionRequested) -> None:
        event.stop()
        view = event.view
        if self.busy():
            self.notify("Stop the reply (Esc) before switching versions.", severity="warning")
            return
        if not self.history.branching or view.message_id is None:
            return
        index = self.views().index(view)
        if self.history.switch(view.message_id, event.step) is None:
            edge = "first" if event.step < 0 else "last"
            self.notify(f"This is the {edge} version.", severity="information")
            return
        await self.show_branch(index)
        self.views()[index].focus()
        self.post_message(self.BranchShown())
