"""The attached documents, one chip each (name and size in tokens), above the input."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Horizontal
from textual.widgets import Label

MODE_NOTES = {"whole": "quoted whole", "passages": "too big to quote: best passages per question"}


def token_size(tokens: int) -> str:
    return f"{tokens} tok" if tokens < 1000 else f"{tokens / 1000:.1f}k tok"


class DocumentChips(Horizontal):
    """Hidden while no document is attached."""

    async def show(self, docs, mode: str | None = None) -> None:
        """`docs`: documents.Document records; `mode`: doc_prompt's plan mode, if known."""
        await self.remove_children()
        chips = [Label(Text(f"📄 {d.name} · {token_size(d.tokens)}"), classes="chip")
                 for d in docs]
        if docs and mode in MODE_NOTES:
            chips.append(Label(Text(MODE_NOTES[mode]), classes="chip-note"))
        await self.mount_all(chips)
        self.set_class(not docs, "hidden")
