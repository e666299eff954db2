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
        Binding("left_square_bracket,ctrl+left", "version(-1)", "Previous version"),
        Binding("right_square_bracket,ctrl+right", "version(1)", "Next version"),
    ]

    class EditRequested(Message):
        def __init__(self, view: MessageView) -> None:
            super().__init__()
            self.view = view

    class VersionRequested(Message):
        """Show another version (sibling branch) of this message: step -1 or +1."""

        def __init__(self, view: MessageView, step: int) -> None:
            super().__init__()
            self.view, self.step = view, step

    def __init__(self, role: str, content: str = "", finish_reason: str | None = None) -> None:
        super().__init__(classes=f"message {role}")
        self.role = role
        self.content = content
        self.finish_reason = finish_reason
        self.dropped = False
        self.message_id: int | None = None  # in the history database
        self.parent_id: int | None = None
        self.version, self.versions = 1, 1
        self.sources: list[dict] = []  # passages the reply was given

    @classmethod
    def from_stored(cls, message) -> MessageView:
        """A view of a history.StoredMessage."""
        view = cls(message.role, message.content, message.finish_reason)
        view.sources = message.sources or []
        view.set_stored(message)
        return view

    def set_stored(self, message) -> None:
        """Take the stored message's id and version (after a save or a switch)."""
        self.message_id, self.parent_id = message.id, message.parent_id
        if (self.version, self.versions) != (message.version, message.versions):
            self.version, self.versions = message.version, message.versions
            if self.is_mounted:
                self.query_one(".header", Label).update(Text(self._header()))

    def compose(self):
        yield Label(Text(self._header()), classes="header")
        if self.role == "assistant":
            yield Markdown(clean_for_display(self.content), classes="body")
        else:
            # Text, not markup: user input is shown exactly as typed.
            yield Static(Text(clean_for_display(self.content)), classes="body")
        yield Label(Text(self._sources_line()), classes="sources" + ("" if self.sources
                                                                      else " hidden"))

    def _sources_line(self) -> str:
        return "Passages used: " + ", ".join(
            f"{s['file']}:{s['start_line']}-{s['end_line']}" for s in self.sources)

    def set_sources(self, sources: list[dict]) -> None:
        self.sources = sources
        line = self.query_one(".sources", Label)
        line.update(Text(self._sources_line()))
        line.set_class(not sources, "hidden")

    def _header(self) -> str:
        name = "You" if self.role == "user" else "Zephyr"
        notes = [_NOTES[self.finish_reason]] if self.finish_reason in _NOTES else []
        if self.dropped:
            notes.append("dropped from the context")
        version = f"  ‹ {self.version}/{self.versions} ›" if self.versions > 1 else ""
        return name + version + (f"  [{', '.join(notes)}]" if notes else "")

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

    def action_version(self, step: int) -> None:
        if self.versions < 2:
            self.notify("This message has no other version ([ / ] switch between the versions "
                        "an edit or a regenerate makes).", severity="warning")
            return
        self.post_message(self.VersionRequested(self, step))

    def action_edit(self) -> None:
        if self.role != "user":
            self.notify("Only your own messages can be edited.", severity="warning")
            return
        self.post_message(self.EditRequested(self))
