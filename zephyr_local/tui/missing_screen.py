"""Shown when the model cannot be loaded: what is wrong and what to run."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

FETCH_HINT = (
    "To get the default model:\n"
    "    zephyr-local pull && zephyr-local quantize --bits 4\n"
    "For a tiny offline test model:\n"
    "    zephyr-local create-test-model && zephyr-local chat -m zephyr-test\n"
    "To see the models you have:\n"
    "    zephyr-local models"
)


class ModelMissingScreen(ModalScreen[None]):
    """The load error in full, the commands that fix it; Esc closes it (history stays usable)."""

    BINDINGS = [Binding("escape", "close", "Browse history")]

    def __init__(self, title: str, message: str, offer_pull: bool = False) -> None:
        super().__init__()
        self.title_text, self.message, self.offer_pull = title, message, offer_pull

    @classmethod
    def for_error(cls, exc: Exception, model: str | None, adapter: str | None):
        """The screen for a load error; `pull` is offered for the default model alone."""
        from zephyr_local.errors import ModelNotFoundError
        from zephyr_local.store import DEFAULT_MODEL

        missing = isinstance(exc, ModelNotFoundError)
        offer = missing and model in (None, DEFAULT_MODEL) and not adapter
        return cls("Model not found" if missing else "Model cannot load", str(exc), offer)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="missing-dialog"):
            yield Label(self.title_text, classes="dialog-title error")
            yield Static(Text(self.message), id="missing-message")
            yield Static(Text(FETCH_HINT), id="missing-hint")
            yield Label("Your conversation history is still available (Esc).",
                        classes="dialog-hint")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Browse history (Esc)", variant="primary", id="close")
                if self.offer_pull:
                    yield Button("Download it now (needs internet)", id="pull")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "pull":
            # The CLI runs `pull` and `quantize` with their progress bars, then reopens chat.
            self.app.exit("pull")
        else:
            self.action_close()

    def action_close(self) -> None:
        self.dismiss(None)
