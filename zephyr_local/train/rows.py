"""Read training rows from JSONL and validate them, naming the file and line of each bad one.

Row formats (those of the Zephyr recipe's data sets on the Hub):
- SFT: {"messages": [...]} (ultrachat_200k) or {"prompt", "completion"} (+ optional "system").
- DPO: {"chosen": [...], "rejected": [...]} conversations ending with the assistant reply
  (ultrafeedback_binarized; a "prompt" string column is then ignored), or
  {"prompt", "chosen", "rejected"} strings (+ optional "system").
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zephyr_local.errors import ZephyrError
from zephyr_local.inputs import unicode_problem
from zephyr_local.template import validate

# A row is cut off before it is tokenized: tokenizing costs ~100 bytes of memory per
# character (a 50 MB row took 6 GB); a million characters is far past any --max-length.
MAX_ROW_CHARS = 1_000_000


class DataError(ZephyrError):
    """Training data that cannot be used."""

    exit_code = 2


class RowError(Exception):
    """One bad row; the reader adds its file and line."""


@dataclass
class PrefRow:
    """One preference pair: a prompt conversation and two replies."""

    prompt: list[dict]
    chosen: str
    rejected: str
    where: str


@dataclass
class SFTRow:
    """One conversation; its assistant turns are the completion."""

    messages: list[dict]
    where: str


@dataclass
class DataSummary:
    """What happened to every row read: nothing is dropped without a count here."""

    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    first_errors: list[str] = field(default_factory=list)  # "file:line: reason", a few
    dropped_long_prompt: int = 0  # prompt alone longer than --max-prompt-length
    truncated: int = 0  # completion cut to --max-length
    boundary_merges: int = 0  # prompt ids were not a prefix of prompt+completion ids

    def line(self) -> str:
        """A one-line summary for the terminal."""
        parts = [f"{self.read} rows read", f"{self.kept} kept"]
        for reason, n in sorted(self.skipped.items()):
            parts.append(f"{n} skipped ({reason})")
        if self.dropped_long_prompt:
            parts.append(f"{self.dropped_long_prompt} dropped "
                         "(prompt longer than max-prompt-length)")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max-length")
        if self.boundary_merges:
            parts.append(f"{self.boundary_merges} with merged prompt/completion tokens")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped),
                "dropped_long_prompt": self.dropped_long_prompt, "truncated": self.truncated,
                "boundary_merges": self.boundary_merges}


def _conversation(value, name: str) -> list[dict]:
    try:
        return validate(value)
    except ZephyrError as exc:
        raise RowError(f"bad {name} conversation: {exc}") from None


def _check_order(messages: list[dict], name: str, last: str) -> None:
    """System first (optional), then user/assistant alternating, ending with `last`."""
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(body))]
    if not body or body != expected or body[-1] != last:
        raise RowError(f"wrong role order in {name} ({' -> '.join(roles) or 'empty'}): expected "
                       f"an optional system, then user/assistant turns ending with {last}")


def _string(row: dict, key: str) -> str:
    if key not in row:
        raise RowError(f"missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"field {key!r} must be a string, not {type(value).__name__}")
    return value


def _system_prefix(row: dict) -> list[dict]:
    system = row.get("system")
    if system is None:
        return []
    if not isinstance(system, str):
        raise RowError("field 'system' must be a string")
    return [{"role": "system", "content": system}]


def parse_pref(row: dict, where: str) -> PrefRow:
    """A preference row in either format, validated."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowError(f"missing field {key!r}")
    if isinstance(row["chosen"], list) or isinstance(row["rejected"], list):
        chosen = _conversation(row["chosen"], "chosen")
        rejected = _conversation(row["rejected"], "rejected")
        _check_order(chosen, "chosen", "assistant")
        _check_order(rejected, "rejected", "assistant")
        if chosen[:-1] != rejected[:-1]:
            raise RowError("chosen and rejected conversations have different prompts")
        prompt, c, r = chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]
    else:
        if isinstance(row.get("prompt"), list):
            prompt = _conversation(row["prompt"], "prompt")
        else:
            prompt = _system_prefix(row) + [{"role": "user", "content": _string(row, "prompt")}]
        _check_order(prompt, "prompt", "user")
        c, r = _string(row, "chosen"), _string(row, "rejected")
    for name, text in (("chosen", c), ("rejected", r)):
        if not text.strip():
            raise RowError(f"empty completion in {name}")
    if c == r:
        raise RowError("chosen is identical to rejected")
    return PrefRow(prompt, c, r, where)


def parse_sft(row: dict, where: str) -> SFTRow:
    """An SFT row in either format, validated."""
    if "messages" in row:
        messages = _conversation(row["messages"], "messages")
        _check_order(messages, "messages", "assistant")
    elif "prompt" in row or "completion" in row:
        messages = _system_prefix(row) + [
            {"role": "user", "content": _string(row, "prompt")},
            {"role": "assistant", "content": _string(row, "completion")},
        ]
    else:
        raise RowError("missing field 'messages' (or 'prompt' and 'completion')")
    if any(not m["content"].strip() for m in messages if m["role"] == "assistant"):
        raise RowError("empty completion in an assistant turn")
    return SFTRow(messages, where)


def _json_lines(path: Path) -> Iterator[tuple[str, object]]:
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of row 1
        with path.open(encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{n}", line
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _decode_row(line: str) -> dict:
    """One JSONL line as a row object, checked before anything tokenizes it."""
    if len(line) > MAX_ROW_CHARS:
        raise RowError(f"row too long ({len(line):,} characters; the limit is "
                       f"{MAX_ROW_CHARS:,}): split it or cut it down")
    try:
        row = json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        # json's "Unterminated string starting at" already ends with "at"
        what = exc.msg.removesuffix(" at")
        raise RowError(f"invalid JSON ({what} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, not {type(row).__name__}")
    # Only a \u escape can smuggle a lone surrogate in: the file itself decoded as UTF-8.
    if "\\u" in line:
        problem = unicode_problem(json.dumps(row, ensure_ascii=False))
        if problem:
            raise RowError(f"text is {problem}")
    return row


def read_rows(path: Path, kind: str, summary: DataSummary, strict: bool = False) -> list:
    """Validated rows of a JSONL file (`kind` "sft" or "dpo"); bad rows counted or raised.

    Raises:
        DataError: with --strict, on the first bad row (naming file and line); or when
            no row is usable.
    """
    parse = parse_pref if kind == "dpo" else parse_sft
    rows = []
    for where, line in _json_lines(path):
        summary.read += 1
        try:
            rows.append(parse(_decode_row(line), where))
        except RowError as exc:
            if strict:
                raise DataError(f"{where}: {exc}") from None
            reason = str(exc).split(" (")[0].split(":")[0]
            summary.skipped[reason] += 1
            if len(summary.first_errors) < 5:
                summary.first_errors.append(f"{where}: {exc}")
    if summary.read == 0:
        raise DataError(f"{path}: no rows")
    return rows
