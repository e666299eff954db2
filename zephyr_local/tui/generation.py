"""Consume one streamed reply on a worker thread and hand the UI batched text.

The engine's MLX thread never waits for this consumer (worker.py queues its
records), so a slow screen delays only how often text appears, never decoding.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from zephyr_local.engine import Response

BATCH_SECONDS = 0.04  # ~25 screen updates per second: smooth, and cheap for the UI thread

# C0/C1 controls and ESC-led sequences (CSI, OSC, ...) that would corrupt the screen.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI ... final byte
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC ... BEL or ST
    r"|\x1b[@-_]?"  # other ESC sequences, or a lone ESC
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # controls except tab and newline
)


def clean_for_display(text: str) -> str:
    """Text safe to put on screen: terminal escape sequences and control characters removed."""
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


class DisplayFilter:
    """clean_for_display for a stream: an escape sequence split across chunks is held
    back until it is complete, so no half of it reaches the screen."""

    _PARTIAL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*)?$")

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        text = self._held + text
        partial = self._PARTIAL.search(text)
        cut = partial.start() if partial else len(text)
        self._held = text[cut:]
        return clean_for_display(text[:cut])

    def flush(self) -> str:
        text, self._held = self._held, ""
        return clean_for_display(text)


def stream_batched(
    records: Iterable[Response],
    on_text: Callable[[str], None],
    interval: float = BATCH_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, Response | None]:
    """Pass the text of `records` to `on_text` at most once per `interval`.

    Returns the whole reply text and the final record (None if the stream ended
    without one). The last pending text is always flushed.
    """
    parts: list[str] = []
    pending: list[str] = []
    final = None
    last_flush = clock()
    for record in records:
        parts.append(record.text)
        pending.append(record.text)
        if record.finish_reason is not None:
            final = record
            break
        now = clock()
        if now - last_flush >= interval:
            chunk = "".join(pending)
            pending.clear()
            last_flush = now
            if chunk:
                on_text(chunk)
    chunk = "".join(pending)
    if chunk:
        on_text(chunk)
    return "".join(parts), final
