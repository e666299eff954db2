"""Slash commands and command-palette entries: one table, both surfaces; the app's keys
(APP_BINDINGS) beside the list the help shows (KEYS)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Command:
    """An app action reachable as `/name` and from the command palette."""

    name: str  # slash name
    action: str  # ChatApp.action_<action>; a text argument, if given, is passed on
    title: str  # command palette title
    help: str
    takes_text: bool = False


COMMANDS = (
    Command("new", "new_chat", "New chat", "Start a new conversation"),
    Command("regen", "regenerate", "Regenerate reply", "Replace the last reply with a new one"),
    Command("stop", "stop", "Stop generating", "Stop the reply in progress (Esc)"),
    Command("system", "system_prompt", "Edit system prompt",
            "/system TEXT sets it; /system alone opens the editor", takes_text=True),
    Command("sampling", "sampling", "Sampling settings",
            "Temperature, top-p, top-k, ... for this conversation"),
    Command("export", "export", "Export conversation",
            "/export [FILE.md|FILE.json] [--all-branches]; no file writes both to "
            "<home>/exports; asks before overwriting", takes_text=True),
    Command("attach", "attach", "Attach a document",
            "/attach PATH adds a text, Markdown, source, CSV or JSON file (Ctrl+O: a dialog "
            "with path completion)", takes_text=True),
    Command("detach", "detach", "Detach a document",
            "/detach NAME (or its number, or all) removes an attached document", takes_text=True),
    Command("copy", "copy_reply", "Copy last reply", "Copy the last reply to the clipboard"),
    Command("code", "copy_code", "Copy last code block",
            "Copy the last code block of the last reply"),
    Command("history", "toggle_sidebar", "Toggle history sidebar",
            "Show or hide past conversations (Ctrl+B)"),
    Command("help", "help", "Help", "Slash commands and keys"),
)

BY_NAME = {c.name: c for c in COMMANDS}

APP_BINDINGS = [
    Binding("escape", "stop", "Stop"),
    Binding("ctrl+n", "new_chat", "New chat"),
    Binding("ctrl+r", "regenerate", "Regenerate"),
    Binding("ctrl+b", "toggle_sidebar", "History"),
    Binding("ctrl+o", "attach", "Attach"),
    Binding("f2", "system_prompt", "System prompt", show=False),
    Binding("f3", "sampling", "Sampling", show=False),
    Binding("f1", "help", "Help"),
]

KEYS = (
    ("Enter", "send"),
    ("Ctrl+J / Alt+Enter / Shift+Enter", "newline (whichever your terminal sends)"),
    ("Up / Down", "recall earlier inputs (on the first / last line)"),
    ("Esc", "stop the reply; the partial reply stays"),
    ("Tab", "move to a message: c copies it, b copies its code, e edits yours"),
    ("[ / ] or Ctrl+Left / Ctrl+Right", "on a message: its previous / next version"),
    ("Ctrl+O", "attach a document; Tab completes the path (also after /attach here)"),
    ("Ctrl+B", "history sidebar: Enter resumes, r renames, d deletes"),
    ("Ctrl+N / Ctrl+R", "new chat / regenerate"),
    ("Ctrl+P", "command palette"),
    ("Ctrl+Q", "quit"),
)


def parse_slash(text: str) -> tuple[Command, str] | None:
    """`(command, argument)` for a slash command line, or None if it is not one.

    Raises:
        KeyError: an unknown `/name` (the message lists the known ones).
    """
    stripped = text.strip()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return None
    name, _, arg = stripped[1:].partition(" ")
    if name not in BY_NAME:
        known = ", ".join(f"/{c.name}" for c in COMMANDS)
        raise KeyError(f"unknown command /{name} (known: {known})")
    return BY_NAME[name], arg.strip()


def help_markdown() -> str:
    lines = ["# zephyr-local chat", "", "## Slash commands", ""]
    lines += [f"- `/{c.name}`: {c.help}" for c in COMMANDS]
    lines += ["", "## Keys", ""]
    lines += [f"- **{key}**: {what}" for key, what in KEYS]
    lines += ["", "Start a message with `//` to send a literal `/`.", "", "Esc closes this."]
    return "\n".join(lines)
