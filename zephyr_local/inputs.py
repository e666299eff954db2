"""Text that users hand to the commands (files, stdin, arguments): decoded and checked here.

Python decodes command-line arguments with `surrogateescape`, and JSON allows
escapes such as "\\ud800": both give strings holding lone surrogates, which the
tokenizer cannot encode (it raises TypeError deep inside). They are refused here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zephyr_local.errors import ZephyrError


def decode(data: bytes, name: str) -> str:
    """UTF-8 bytes as text (a leading byte-order mark is dropped)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ZephyrError(f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8") from None


def read_text(source: str) -> tuple[str, str]:
    """`(name, text)` of a file, or of stdin for `-`, decoded as UTF-8."""
    name = "stdin" if source == "-" else source
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise ZephyrError(f"{name}: cannot read ({exc.strerror})") from None
    return name, decode(data, name)


def unicode_problem(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (a lone surrogate), or None if it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"not valid Unicode (lone surrogate U+{ord(text[exc.start]):04X} at "
                f"character {exc.start})")
    return None


def check_text(text: str, what: str) -> str:
    """`text` itself, or ZephyrError naming `what` if it is not valid Unicode."""
    problem = unicode_problem(text)
    if problem:
        raise ZephyrError(f"{what}: {problem}")
    return text
