"""The sampling settings of the current conversation, as a form."""

from __future__ import annotations

from dataclasses import fields, replace

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from zephyr_local.errors import ZephyrError
from zephyr_local.sampling import SamplingOptions


def parse_field(name: str, text: str, kind) -> object:
    """Turn the text of one form field into its value (ZephyrError names a bad one)."""
    text = text.strip()
    if name == "seed" and text in ("", "none", "None"):
        return None
    try:
        return int(text) if kind in (int, "int", "int | None") else float(text)
    except ValueError:
        raise ZephyrError(f"{name}: {text!r} is not a number") from None


class SamplingScreen(ModalScreen[SamplingOptions | None]):
    """Edit every SamplingOptions field; returns the validated options or None."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, options: SamplingOptions) -> None:
        super().__init__()
        self.options = options

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="sampling-dialog"):
            yield Label("Sampling settings for this conversation", classes="dialog-title")
            for f in fields(SamplingOptions):
                value = getattr(self.options, f.name)
                with Horizontal(classes="field"):
                    yield Label(f"{f.name} ({f.metadata.get('help', '')})", classes="field-label")
                    yield Input("" if value is None else str(value), id=f"field-{f.name}")
            yield Label("", id="sampling-error", classes="error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (Ctrl+S)", variant="primary", id="save")
                yield Button("Cancel (Esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_save()

    def action_save(self) -> None:
        try:
            values = {
                f.name: parse_field(f.name, self.query_one(f"#field-{f.name}", Input).value, f.type)
                for f in fields(SamplingOptions)
            }
            options = replace(self.options, **values).validate()
        except ZephyrError as exc:
            self.query_one("#sampling-error", Label).update(Text(str(exc)))
            return
        self.dismiss(options)

    def action_cancel(self) -> None:
        self.dismiss(None)
