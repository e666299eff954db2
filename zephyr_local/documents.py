"""Text documents for the conversation: read one file safely and cut it into passages.

Exactly the file given is read (no directory walking, no includes); binary,
undecodable and huge files are refused with a DocumentError that says why.
PDFs are read with pypdf when it is installed (pure Python, offline), and are
refused with a clear message otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from zephyr_local.errors import ZephyrError

MAX_BYTES = 4 * 1024 * 1024  # a bigger file is almost never a text document to ask about
PASSAGE_CHARS = 1200  # ~300 tokens of English text with Zephyr's tokenizer
OVERLAP_CHARS = 200  # the tail of one passage starts the next (~50 tokens)
_SNIFF_BYTES = 8192
_HEADING = re.compile(r"^#{1,6}\s+\S")  # a Markdown heading


class DocumentError(ZephyrError):
    """A file that cannot be attached (missing, binary, too big, unreadable)."""


@dataclass
class Document:
    """One attached file's text and what identifies the version read."""

    name: str
    path: str  # absolute, as given (resolved once)
    text: str
    sha256: str
    mtime_ns: int
    size: int
    tokens: int


@dataclass
class Passage:
    """A piece of a document: lines start_line..end_line (1-based, inclusive)."""

    start_line: int
    end_line: int
    heading: str | None
    text: str
    tokens: int

    def label(self) -> str:
        return f"lines {self.start_line}-{self.end_line}"


def read(path: str | os.PathLike, tokenizer) -> Document:
    """Read one text file for the conversation.

    Raises:
        DocumentError: a missing path, a directory, a binary/undecodable file,
            a file over MAX_BYTES, or a PDF without pypdf.
    """
    given = Path(path).expanduser()
    try:
        real = given.resolve(strict=True)
        info = real.stat()
    except OSError as exc:
        raise DocumentError(f"{given}: cannot attach ({exc.strerror or exc})") from None
    if not real.is_file():
        raise DocumentError(f"{given}: not a file (attach one file at a time)")
    if info.st_size > MAX_BYTES:
        raise DocumentError(f"{given}: {info.st_size / 1e6:.1f} MB is too big to attach "
                            f"(the limit is {MAX_BYTES // (1024 * 1024)} MB)")
    try:
        raw = real.read_bytes()
    except OSError as exc:
        raise DocumentError(f"{given}: cannot read ({exc.strerror})") from None
    text = _pdf_text(given, raw) if raw.startswith(b"%PDF-") else _decode(given, raw)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return Document(given.name, str(real), text, hashlib.sha256(raw).hexdigest(),
                    info.st_mtime_ns, info.st_size, count_tokens(tokenizer, text))


def changed(doc: Document) -> str | None:
    """Why the file on disk no longer matches `doc` ("changed", "missing"), or None."""
    try:
        info = os.stat(doc.path)
    except OSError:
        return "missing"
    if info.st_mtime_ns == doc.mtime_ns and info.st_size == doc.size:
        return None
    try:
        digest = hashlib.sha256(Path(doc.path).read_bytes()).hexdigest()
    except OSError:
        return "missing"
    return None if digest == doc.sha256 else "changed"


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False)) if text else 0


def _decode(given: Path, raw: bytes) -> str:
    if b"\x00" in raw[:_SNIFF_BYTES]:
        raise DocumentError(f"{given}: a binary file; attach text (plain text, Markdown, "
                            "source code, CSV, JSON)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{given}: not UTF-8 text (byte {exc.start}); convert it to UTF-8 "
                            "or attach a text export") from None


def _pdf_text(given: Path, raw: bytes) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise DocumentError(f"{given}: PDF needs pypdf (pip install pypdf), or attach a text "
                            "export of it") from None
    import io

    try:
        reader = PdfReader(io.BytesIO(raw))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise DocumentError(f"{given}: unreadable PDF ({exc})") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise DocumentError(f"{given}: the PDF has no text layer (a scan?); nothing to attach")
    return text


def split(text: str, tokenizer, size: int = PASSAGE_CHARS,
          overlap: int = OVERLAP_CHARS) -> list[Passage]:
    """Cut text into passages at headings and blank lines, about `size` characters each.

    A heading always starts a passage; paragraphs join until the next would pass
    `size`; a paragraph longer than twice `size` is cut at a line end (a single
    line longer than `size`, every `size` characters). The last lines of each
    passage, up to `overlap` characters (or its last paragraph-long line), open
    the next one of the same section.
    """
    pieces = _pieces(text.split("\n"), size)
    passages: list[tuple[int, int, str | None, list[str]]] = []
    current: list[tuple[int, str]] = []
    heading: str | None = None

    def close() -> None:
        if any(line.strip() for _, line in current):
            passages.append((current[0][0], current[-1][0], heading, [t for _, t in current]))

    for number, line, starts_block in pieces:
        grown = _length(current) + len(line)
        if _HEADING.match(line):
            close()
            current, heading = [], line.lstrip("#").strip()
        elif current and (starts_block and grown > size or grown > 2 * size):
            close()
            current = _tail(current, overlap, size // 2)
        current.append((number, line))
    close()
    texts = ["\n".join(lines).strip("\n") for *_, lines in passages]
    counts = [len(ids) for ids in _encode_batch(tokenizer, texts)]
    return [Passage(a, b, h, t, n) for (a, b, h, _), t, n in zip(passages, texts, counts)]


def _pieces(lines: list[str], size: int) -> list[tuple[int, str, bool]]:
    """(line number, text, may start a passage) for every line, long lines cut up."""
    out, previous_blank = [], True
    for number, line in enumerate(lines, start=1):
        chunks = [line[i:i + size] for i in range(0, len(line), size)] or [""]
        for i, chunk in enumerate(chunks):
            # A new paragraph, or a piece of a paragraph that is already too long.
            out.append((number, chunk, previous_blank or i > 0))
        previous_blank = not line.strip()
    return out


def _length(lines: list[tuple[int, str]]) -> int:
    return sum(len(t) + 1 for _, t in lines)


def _tail(lines: list[tuple[int, str]], overlap: int, longest: int) -> list[tuple[int, str]]:
    """The last lines to repeat: up to `overlap` characters, or else the last
    non-blank line if it is at most `longest` (a paragraph written as one line)."""
    content = [i for i, item in enumerate(lines) if item[1].strip()]
    if not overlap or not content:
        return []
    tail: list[tuple[int, str]] = []
    for item in reversed(lines):
        if _length(tail) + len(item[1]) > overlap:
            break
        tail.insert(0, item)
    while tail and not tail[0][1].strip():
        tail.pop(0)
    if not tail and len(lines[content[-1]][1]) <= longest:
        tail = lines[content[-1]:]
    return tail


def _encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    hf = getattr(tokenizer, "_tokenizer", tokenizer)  # mlx-lm's wrapper holds HF's tokenizer
    if not texts:
        return []
    if callable(hf):
        return hf(texts, add_special_tokens=False)["input_ids"]
    return [hf.encode(t, add_special_tokens=False) for t in texts]
