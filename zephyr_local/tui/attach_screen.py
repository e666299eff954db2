"""The attach dialog: a path field that completes file and folder names as you type."""

from __future__ import annotations

import os
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label

MAX_ENTRIES = 2000  # a huge folder is not listed in full for one suggestion


def complete_path(text: str, cwd: str | os.PathLike | None = None) -> str | None:
    """`text` extended as far as the names in its folder agree (a folder gets a
    trailing "/"); None where nothing matches or nothing can be added. Names are
    listed, never read; hidden ones only when the typed name starts with a dot."""
    if not text:
        return None
    expanded = os.path.expanduser(text)
    folder, prefix = os.path.split(expanded)
    base = Path(cwd or os.getcwd()) / folder if not os.path.isabs(folder) else Path(folder)
    try:
        with os.scandir(base) as entries:
            names = []
            for i, entry in enumerate(entries):
                if i >= MAX_ENTRIES:
                    break
                if entry.name.startswith(prefix) and (prefix.startswith(".")
                                                      or not entry.name.startswith(".")):
                    names.append((entry.name, entry.is_dir()))
    except OSError:
        return None
    if not names:
        return None
    common = os.path.commonprefix([n for n, _ in names])
    if len(names) == 1 and names[0][1]:
        common += "/"
    if common == prefix:
        return None
    return text + common[len(prefix):]


class PathSuggester(Suggester):
    """Textual's inline suggestion for the path field (Right or Tab accepts it)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value)


class AttachScreen(ModalScreen[str | None]):
    """Returns the path typed (Enter or Attach), or None (Esc or Cancel)."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("tab", "complete", "Complete", priority=True, show=False),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="attach-dialog"):
            yield Label("Attach a document to this conversation", classes="dialog-title")
            yield Label("Plain text, Markdown, source code, CSV or JSON; Tab completes the path.",
                        classes="dialog-hint")
            yield Input(placeholder="path/to/file.md", suggester=PathSuggester(), id="attach-path")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Attach (Enter)", variant="primary", id="attach")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def action_complete(self) -> None:
        field = self.query_one(Input)
        completed = complete_path(field.value)
        if completed is not None:
            field.value = completed
            field.cursor_position = len(completed)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "attach":
            self.dismiss(self.query_one(Input).value.strip() or None)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
