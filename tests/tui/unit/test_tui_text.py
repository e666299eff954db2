"""The chat's pure pieces: batching the reply stream, pacing the UI, text for the screen."""

from __future__ import annotations

import time

import pytest

from zephyr_local.engine import Response
from zephyr_local.tui.generation import (
    DisplayFilter,
    UIPacer,
    clean_for_display,
    stream_batched,
)
from zephyr_local.tui.widgets.message import last_code_block


def test_stream_batched_flushes_by_time_and_keeps_every_piece():
    ticks = iter(i * 0.01 for i in range(100))  # each record arrives 10 ms after the last
    records = [Response(f"t{i} ", i) for i in range(10)] + [Response("end", None, "stop")]
    chunks = []
    text, final = stream_batched(records, chunks.append, interval=0.04, clock=lambda: next(ticks))
    assert text == "".join(r.text for r in records) and final is records[-1]
    assert "".join(chunks) == text
    # Clock 0.00 at start, record i seen at 0.01*(i+1): flushes at 0.04, 0.08, then the rest.
    assert chunks == ["t0 t1 t2 t3 ", "t4 t5 t6 t7 ", "t8 t9 end"]


@pytest.mark.skipif(not hasattr(time, "pthread_getcpuclockid"), reason="no thread CPU clock")
def test_ui_pacer_backs_off_while_the_ui_thread_is_busy():
    import threading

    pacer = UIPacer(threading.get_ident(), base=0.04, ceiling=0.5, share=0.1)
    end = time.monotonic() + 0.05
    while time.monotonic() < end:  # the "UI" burns CPU: lengthen the interval
        pass
    pacer.update()
    assert pacer() == pytest.approx(0.06)
    time.sleep(0.05)  # idle: back toward the base
    pacer.update()
    assert pacer() == pytest.approx(0.04)
    time.sleep(0.05)
    pacer.update()
    assert pacer() == pytest.approx(0.04)  # never below the base


def test_clean_for_display_strips_terminal_escapes():
    raw = "a\x1b[31mred\x1b[0m b\x1b]0;title\x07c\x07\x00d\r\ne\tf\x9b"
    assert clean_for_display(raw) == "ared bcd\ne\tf"


def test_display_filter_holds_back_split_escape_sequences():
    f = DisplayFilter()
    pieces = ["a\x1b[3", "1mb\x1b", "]0;t", "itle\x07c\x1b"]
    shown = [f.feed(p) for p in pieces] + [f.flush()]
    assert shown == ["a", "b", "", "c", ""]


def test_last_code_block():
    md = "x\n```python\nprint(1)\n```\ntext\n```\nsecond\nblock\n```\n"
    assert last_code_block(md) == "second\nblock\n"
    assert last_code_block("no code") is None
