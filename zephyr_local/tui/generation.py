"""Consume one streamed reply on a worker thread and hand the UI batched text.

The engine's MLX thread never waits for this consumer (worker.py queues its
records), so a slow screen delays only how often text appears, never decoding.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from zephyr_local.engine import Response

BATCH_SECONDS = 0.04  # ~25 screen updates per second while the UI thread is cheap
MAX_BATCH_SECONDS = 0.5
UI_CPU_SHARE = 0.03  # the UI thread's share of one core the pacer aims for (idle: ~1%)

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


class UIPacer:
    """A batch interval that keeps the UI thread's CPU use near UI_CPU_SHARE.

    Python threads share one interpreter lock, so every millisecond the UI spends
    re-laying out a growing reply is taken from the decode loop. After each
    update the pacer reads the UI thread's CPU clock and lengthens the interval
    (up to MAX_BATCH_SECONDS) while the UI costs too much, shortens it when cheap.
    Where a thread's CPU clock cannot be read (macOS) the interval stays fixed.
    """

    def __init__(self, ui_thread_id: int, base: float = BATCH_SECONDS,
                 ceiling: float = MAX_BATCH_SECONDS, share: float = UI_CPU_SHARE) -> None:
        self.interval, self.base, self.ceiling, self.share = base, base, ceiling, share
        try:
            self._clock_id = time.pthread_getcpuclockid(ui_thread_id)
            self._last = self._sample()
        except (AttributeError, OSError):
            self._clock_id = None

    def _sample(self) -> tuple[float, float]:
        return time.monotonic(), time.clock_gettime(self._clock_id)

    def __call__(self) -> float:
        return self.interval

    def update(self) -> None:
        """Call after each UI update."""
        if self._clock_id is None:
            return
        now = self._sample()
        wall, cpu = now[0] - self._last[0], now[1] - self._last[1]
        self._last = now
        if wall > 0 and cpu / wall > self.share:
            self.interval = min(self.ceiling, self.interval * 1.5)
        elif wall > 0 and cpu / wall < self.share / 2:
            self.interval = max(self.base, self.interval / 1.5)


def stream_batched(
    records: Iterable[Response],
    on_text: Callable[[str], None],
    interval: float | Callable[[], float] = BATCH_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, Response | None]:
    """Pass the text of `records` to `on_text` at most once per `interval`
    (seconds, or a callable that gives the current interval, such as a UIPacer).

    Returns the whole reply text and the final record (None if the stream ended
    without one). The last pending text is always flushed.
    """
    parts: list[str] = []
    pending: list[str] = []
    final = None
    wait = interval if callable(interval) else (lambda: interval)
    last_flush = clock()
    for record in records:
        parts.append(record.text)
        pending.append(record.text)
        if record.finish_reason is not None:
            final = record
            break
        now = clock()
        if now - last_flush >= wait():
            chunk = "".join(pending)
            pending.clear()
            last_flush = now
            if chunk:
                on_text(chunk)
    chunk = "".join(pending)
    if chunk:
        on_text(chunk)
    return "".join(parts), final


def stream_to_screen(records: Iterable[Response], write: Callable[[str], None],
                     ui_thread_id: int) -> tuple[str, Response | None]:
    """stream_batched paced for the UI thread (UIPacer), each batch cleaned for the screen
    (DisplayFilter) and passed to `write`; returns the raw reply text and the final record."""
    screen_text, pacer = DisplayFilter(), UIPacer(ui_thread_id)

    def show(chunk: str) -> None:
        write(screen_text.feed(chunk))
        pacer.update()

    text, final = stream_batched(records, show, pacer)
    write(screen_text.flush())
    return text, final
