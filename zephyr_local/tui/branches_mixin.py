"""The chat app's branches: an edit or a regenerate adds a sibling version; nothing is deleted.

The history database keeps the tree (history.py); the screen shows one branch,
from the first message to the conversation's current leaf. `[` / `]` on a
message move between its versions and the conversation below follows. The
engine's KV cache is trimmed to the common prefix of what it holds and the new
prompt, so after a switch only the tokens past the branch point are prefilled.
"""

from __future__ import annotations

from textual.containers import VerticalScroll

from zephyr_local.tui.widgets.message import MessageView


class BranchesMixin:
    """Mixed into ChatApp: versions of `self.chat_history`'s conversation."""

    @property
    def branching(self) -> bool:
        return self.chat_history.branching

    def sync_versions(self) -> None:
        """Give the views on screen their stored ids and version counts."""
        if not self.branching:
            return
        for view, message in zip(self.views(), self.chat_history.messages()):
            view.set_stored(message)

    async def show_branch(self, start: int = 0) -> None:
        """Show the current branch again from message `start` on."""
        chat = self.query_one("#chat", VerticalScroll)
        views = self.views()
        stored = self.chat_history.messages()
        await chat.remove_children(views[start:])
        await chat.mount_all([MessageView.from_stored(m) for m in stored[start:]])
        self.sync_versions()
        for view in self.views():
            view.mark_dropped(False)
        self._show_context_estimate()
        chat.scroll_end(animate=False)

    async def on_message_view_version_requested(self, event: MessageView.VersionRequested) -> None:
        if self.generating:
            self.notify("Stop the reply (Esc) before switching versions.", severity="warning")
            return
        view = event.view
        if not self.branching or view.message_id is None:
            return
        index = self.views().index(view)
        leaf = self.chat_history.switch(view.message_id, event.step)
        if leaf is None:
            edge = "first" if event.step < 0 else "last"
            self.notify(f"This is the {edge} version.", severity="information")
            return
        await self.show_branch(index)
        self.views()[index].focus()

    def branch_at(self, view: MessageView) -> bool:
        """Continue the conversation from just before `view`, so that what follows is a
        new version of it; False where the message is not stored (nothing to keep)."""
        if not self.branching or view.message_id is None:
            return False
        self.chat_history.set_leaf(view.parent_id)
        return True

    async def restore_after_failure(self) -> bool:
        """After a failed regenerate: show the reply it was replacing again, if any."""
        if not self.branching:
            return False
        current = self.chat_history.messages()
        if not current or current[-1].role != "user":
            return False
        leaf = self.chat_history.switch(current[-1].id, 0)
        if leaf is None or leaf == current[-1].id:
            return False
        await self.show_branch(len(current) - 1)
        return True
