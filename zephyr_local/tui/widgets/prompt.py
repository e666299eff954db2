"""The multi-line message input: Enter sends, several keys insert a newline.

A line that starts with `/` is a slash command (commands.py): the input parses it and
posts CommandEntered; an unknown one gets a notice and stays to be corrected. Any other
text is posted as Submitted (a leading `//` sent as `/`); the app calls `accept` once
it is sent.
"""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from zephyr_local.tui.attach_screen import complete_path
from zephyr_local.tui.commands import Command, parse_slash

# Terminals disagree on what they send for modified Enter: Ctrl+J is a plain LF
# everywhere; Alt/Option+Enter works in iTerm2, macOS Terminal (Option as Meta)
# and Linux terminals; Shift+Enter only where the terminal reports it (kitty protocol).
# The bindings below are for the footer; _on_key does the work.
NEWLINE_KEYS = ("ctrl+j", "alt+enter", "shift+enter", "ctrl+enter")


class PromptInput(TextArea):
    """Type a message; Enter sends it, Up/Down on the first/last line recall history."""

    BINDINGS = [
        Binding("enter", "submit", "Send"),
        Binding("ctrl+j", "newline", "Newline"),
        Binding("alt+enter", "newline", "Newline (Alt+Enter)", show=False),
        Binding("shift+enter", "newline", "Newline", show=False),
        Binding("ctrl+enter", "newline", "Newline", show=False),
    ]

    class Submitted(Message):
        """A message to send: `text` as typed, a leading `//` as `/`."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class CommandEntered(Message):
        """A slash command line (already cleared from the input): the command and its
        argument (empty when none was given)."""

        def __init__(self, command: Command, argument: str) -> None:
            super().__init__()
            self.command, self.argument = command, argument

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False, **kwargs)
        self.sent_history: list[str] = []
        self._recall = 0  # index into history while recalling; len(history) = not recalling

    def action_submit(self) -> None:
        text = self.text
        try:
            slash = parse_slash(text)
        except KeyError as exc:
            self.notify(exc.args[0], severity="error", markup=False)
            return
        if slash is None:
            self.post_message(self.Submitted(text[1:] if text.startswith("//") else text))
            return
        self.accept()
        self.post_message(self.CommandEntered(*slash))

    def accept(self) -> None:
        """The text was sent: keep it for recall (Up), clear the input."""
        self.remember(self.text)
        self.clear()

    def give_back(self, text: str) -> None:
        """Put a message that could not be answered back in the input, to edit and resend."""
        self.text = text
        self.move_cursor(self.document.end)

    def action_newline(self) -> None:
        self.insert("\n")

    def remember(self, text: str) -> None:
        if text.strip() and (not self.sent_history or self.sent_history[-1] != text):
            self.sent_history.append(text)
        self._recall = len(self.sent_history)

    async def _on_key(self, event: events.Key) -> None:
        # Handled here, not only as bindings: a bubbled binding runs after the keys
        # typed next, which puts the newline in the wrong place.
        # Enter too: a priority binding would read the text before the keys typed just
        # before it (a paste, a fast typist, tmux send-keys) reached this widget.
        row, _ = self.cursor_location
        if event.key == "enter":
            self.action_submit()
        elif event.key in NEWLINE_KEYS:
            self.action_newline()
        elif event.key == "tab" and self._complete_attach():
            pass
        elif event.key == "up" and row == 0 and self.sent_history and self._recall > 0:
            self._show_recalled(self._recall - 1)
        elif event.key == "down" and row == self.document.line_count - 1 and (
            self._recall < len(self.sent_history)
        ):
            self._show_recalled(self._recall + 1)
        else:
            await super()._on_key(event)
            return
        event.stop()
        event.prevent_default()

    def _complete_attach(self) -> bool:
        """Tab after `/attach ` completes the path (True if it did)."""
        head, _, path = self.text.partition(" ")
        if head != "/attach" or "\n" in path:
            return False
        completed = complete_path(path)
        if completed is None:
            return False
        self.text = f"{head} {completed}"
        self.move_cursor(self.document.end)
        return True

    def _show_recalled(self, index: int) -> None:
        self._recall = index
        self.text = self.sent_history[index] if index < len(self.sent_history) else ""
        self.move_cursor(self.document.end)
