"""One message of the conversation: a header line and the text (Markdown for replies)."""

from __future__ import annotations

import re

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label, Markdown, Static

from zephyr_local.tui.generation import clean_for_display

_FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1\s*$", re.MULTILINE | re.DOTALL)

_NOTES = {"cancelled": "stopped", "length": "cut at the token limit", "error": "failed"}


def last_code_block(markdown: str) -> str | None:
    """The body of the last fenced code block in `markdown`, if any."""
    blocks = _FENCE.findall(markdown)
    return blocks[-1][1] if blocks else None


class MessageView(Vertical, can_focus=True):
    """A user or assistant message. Focus it (Tab) to copy or edit it."""

    BINDINGS = [
        Binding("c", "copy", "Copy"),
        Binding("b", "copy_code", "Copy code"),
        Binding("e", "edit", "Edit"),
    ]

    class EditRequested(Message):
        def __init__(self, view: MessageView) -> None:
            super().__init__()
            self.view = view

    def __init__(self, role: str, content: str = "", finish_reason: str | None = None) -> None:
        super().__init__(classes=f"message {role}")
        self.role = role
        self.content = content
        self.finish_reason = finish_reason
        self.dropped = False

    def compose(self):
        yield Label(Text(self._header()), classes="header")
        if self.role == "assistant":
            yield Markdown(clean_for_display(self.content), classes="body")
        else:
            # Text, not markup: user input is shown exactly as typed.
            yield Static(Text(clean_for_display(self.content)), classes="body")

    def _header(self) -> str:
        name = "You" if self.role == "user" else "Zephyr"
        notes = [_NOTES[self.finish_reason]] if self.finish_reason in _NOTES else []
        if self.dropped:
            notes.append("dropped from the context")
        return name + (f"  [{', '.join(notes)}]" if notes else "")

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def finish(self, content: str, finish_reason: str | None) -> None:
        """The reply is complete (or stopped): record it and update the header."""
        self.content, self.finish_reason = content, finish_reason
        self.set_class(finish_reason == "cancelled", "stopped")
        self.query_one(".header", Label).update(Text(self._header()))

    def mark_dropped(self, dropped: bool = True) -> None:
        self.dropped = dropped
        self.set_class(dropped, "dropped")
        self.query_one(".header", Label).update(Text(self._header()))

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.content)
        self.notify("Message copied to the clipboard.")

    def action_copy_code(self) -> None:
        code = last_code_block(self.content)
        if code is None:
            self.notify("This message has no code block.", severity="warning")
            return
        self.app.copy_to_clipboard(code)
        self.notify("Code block copied to the clipboard.")

    def action_edit(self) -> None:
        if self.role != "user":
            self.notify("Only your own messages can be edited.", severity="warning")
            return
        self.post_message(self.EditRequested(self))
