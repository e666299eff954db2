"""The conversation on screen: the system prompt's note and one MessageView per message.

The view shows one branch of the conversation's tree (history.py), from the first
message to the current leaf. `[` / `]` on a message move between its versions and
the conversation below follows; the view asks its ChatHistory to switch and posts
PromptChanged. The engine's KV cache is trimmed to the common prefix of what it holds
and the new prompt, so after a switch only the tokens past the branch point are
prefilled.

A reply streams into the view (`stream_reply`): a thread worker consumes the engine's
records and hands the screen batched text (generation.py); the view posts ReplyFinished
or ReplyFailed when it ends, and the app saves it. Editing a message of yours opens the
editor here; the edited text is posted as ResendRequested.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from functools import partial

from rich.text import Text
from textual import work
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Markdown, Static

from zephyr_local.tui.chat_history import ChatHistory
from zephyr_local.tui.generation import clean_for_display, stream_to_screen
from zephyr_local.tui.text_screen import TextEditScreen
from zephyr_local.tui.widgets.message import MessageView


class ChatView(VerticalScroll):
    """The messages of the branch shown, oldest first, under the system prompt's note.

    Args:
        history: the conversation whose versions `[` / `]` switch between.
        busy: whether a reply is streaming (no switching then).
    """

    class PromptChanged(Message):
        """What the next prompt holds has changed: another version is shown, or the
        system prompt was set."""

    class ReplyFinished(Message):
        """A reply streamed to its end or was stopped: its view, its whole text, and the
        final record (engine.Response; None where the stream ended without one)."""

        def __init__(self, view: MessageView, text: str, final) -> None:
            super().__init__()
            self.view, self.text, self.final = view, text, final

    class ReplyFailed(Message):
        """A reply failed and its view is gone; the conversation on screen is as it was
        before it. `unsent`: the user message it answered, taken back from the
        conversation (to edit and resend), or None where a regenerated reply is back."""

        def __init__(self, error: Exception, unsent: str | None) -> None:
            super().__init__()
            self.error, self.unsent = error, unsent

    class ResendRequested(Message):
        """Your message `view` was edited to `text`: send that in its place."""

        def __init__(self, view: MessageView, text: str) -> None:
            super().__init__()
            self.view, self.text = view, text

    def __init__(self, history: ChatHistory, busy: Callable[[], bool] = lambda: False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.history, self.busy = history, busy

    def compose(self):
        yield Static("", id="system-note", classes="hidden")

    def on_mount(self) -> None:
        self._ui_thread_id = threading.get_ident()  # whose CPU time the reply pacer watches

    def views(self) -> list[MessageView]:
        return list(self.query(MessageView))

    def shown(self) -> list[dict]:
        """The messages as shown: role, content and finish_reason of each."""
        return [{"role": v.role, "content": v.content, "finish_reason": v.finish_reason}
                for v in self.views()]

    def last_reply(self) -> MessageView | None:
        replies = [v for v in self.views() if v.role == "assistant"]
        return replies[-1] if replies else None

    def conversation(self) -> list[dict]:
        """The conversation as the engine takes it: system prompt, then the messages."""
        chat = [{"role": v.role, "content": v.content} for v in self.views()]
        if self.history.system_prompt:
            chat.insert(0, {"role": "system", "content": self.history.system_prompt})
        return chat

    def copy_last_reply(self, code: bool = False) -> None:
        """Copy the last reply (or its last code block) to the clipboard."""
        reply = self.last_reply()
        if reply is None:
            self.notify("No reply yet.", severity="warning")
        else:
            reply.action_copy_code() if code else reply.action_copy()

    def show_system_prompt(self, text: str | None) -> None:
        note = self.query_one("#system-note", Static)
        note.update(Text(f"System: {clean_for_display(text)}" if text else ""))
        note.set_class(not text, "hidden")

    def edit_system_prompt(self, text: str | None = None) -> None:
        """Set the conversation's system prompt to `text`, or (no text) edit it in a dialog."""
        if text:
            self._set_system_prompt(text)
            return
        self.app.push_screen(TextEditScreen("System prompt for this conversation",
                                            self.history.system_prompt or "",
                                            "Empty means no system prompt."),
                             lambda edited: edited is None or self._set_system_prompt(edited))

    def _set_system_prompt(self, text: str) -> None:
        self.history.set_system_prompt(text.strip() or None)
        self.show_system_prompt(self.history.system_prompt)
        self.post_message(self.PromptChanged())
        self.notify("System prompt set." if self.history.system_prompt
                    else "System prompt cleared.")

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
        self.post_message(self.PromptChanged())

    async def cut(self, view: MessageView) -> None:
        """Remove `view` and the messages after it, so that what is said next is a new
        version of it (where versions are kept; else they leave the history too)."""
        views = self.views()
        index = views.index(view)
        if not self.history.branch_at(view):
            self.history.truncate(index)
        await self.remove_children(views[index:])

    def on_message_view_edit_requested(self, event: MessageView.EditRequested) -> None:
        event.stop()
        view = event.view
        if self.busy():
            self.notify("Stop the reply (Esc) before editing.", severity="warning")
            return

        def edited(text: str | None) -> None:
            if text is not None and text.strip():
                self.post_message(self.ResendRequested(view, text))

        note = ("the current version stays: [ / ] switch back" if self.history.branching
                else "later turns are dropped")
        self.app.push_screen(TextEditScreen(f"Edit message and resend ({note})", view.content),
                             edited)

    # -- a reply streaming in ------------------------------------------------------

    async def stream_reply(self, records: Callable[[], Iterable]) -> None:
        """Show a new reply as it streams. `records()` gives the engine's records (it is
        called on the worker thread); ReplyFinished or ReplyFailed is posted at the end."""
        view = MessageView("assistant")
        view.add_class("streaming")
        await self.mount(view)
        self.anchor()
        self._consume(records, view, Markdown.get_stream(view.markdown), self.app.call_from_thread)

    @work(thread=True, group="reply", exit_on_error=False)
    def _consume(self, records: Callable[[], Iterable], view: MessageView, stream,
                 call: Callable) -> None:
        """Consume the reply on this worker thread; the UI gets batched text. `call`
        runs a function on the UI thread (App.call_from_thread)."""
        try:
            text, final = stream_to_screen(records(), partial(call, stream.write),
                                           self._ui_thread_id)
        except Exception as exc:  # shown as a notice; the conversation stays as it was
            call(self._reply_failed, view, stream, exc)
            return
        call(self._reply_finished, view, stream, text, final)

    async def _reply_finished(self, view: MessageView, stream, text: str, final) -> None:
        await stream.stop()
        view.remove_class("streaming")
        view.finish(text, final.finish_reason if final else "cancelled")
        self.post_message(self.ReplyFinished(view, text, final))

    async def _reply_failed(self, view: MessageView, stream, exc: Exception) -> None:
        await stream.stop()
        await view.remove()
        views, unsent = self.views(), None
        replaced = self.history.restore_replaced()
        if replaced is not None:  # a failed regenerate: the reply it replaced is back
            await self.show_branch(replaced)
            self.post_message(self.PromptChanged())
        elif views and views[-1].role == "user":  # taken back, to edit and resend
            unsent = views[-1].content
            self.history.truncate(len(views) - 1)
            await views[-1].remove()
        self.post_message(self.ReplyFailed(exc, unsent))
