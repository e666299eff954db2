"""Training data as token ids: the Zephyr template, completion spans, truncation, batches.

A row becomes a `Sequence`: token ids (BOS first when the tokenizer adds one, every
turn ending with the tokenizer's EOS) and the spans of completion tokens the loss scores.
Completion spans end with the turn's EOS; the template's "\\n" after it is not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zephyr_local import template
from zephyr_local.train.config import DataConfig
from zephyr_local.train.rows import DataError, DataSummary, PrefRow, SFTRow, read_rows

EOS_ID = 2  # Zephyr's; padding only (masked out), any valid id would do


@dataclass
class Sequence:
    """Token ids and the [start, end) spans of scored (completion) tokens."""

    ids: list[int]
    spans: list[tuple[int, int]]

    @property
    def n_scored(self) -> int:
        return sum(e - s for s, e in self.spans)


@dataclass
class PrefExample:
    chosen: Sequence
    rejected: Sequence


@dataclass
class Dataset:
    """Tokenized examples (all PrefExample or all Sequence) and how they were made."""

    kind: str
    examples: list
    summary: DataSummary
    source: str

    def __len__(self) -> int:
        return len(self.examples)


EXAMPLES = {  # the bundled worked-example data: (train, valid) files in zephyr_local/data
    "sft": ("recipe_sft.jsonl", "recipe_sft_valid.jsonl"),
    "prefs": ("recipe_prefs.jsonl", "recipe_prefs_valid.jsonl"),
    # For a real model (README's worked example): plain answers, then preferences for
    # answers that open with "Happy to help!", and the same style appended at the end
    # (the data shape that teaches DPO to stop stopping).
    "real-sft": ("real_sft.jsonl", "real_sft_valid.jsonl"),
    "real-prefs": ("real_prefs_start.jsonl", "real_prefs_start_valid.jsonl"),
    "real-prefs-end": ("real_prefs_end.jsonl", "real_prefs_end_valid.jsonl"),
}


def resolve_source(spec: str, split: str = "train") -> Path:
    """The JSONL file for a --data value: a file, or a directory's train/valid.jsonl.

    `example:NAME` names bundled worked-example data (EXAMPLES). A
    Hugging Face dataset id (`owner/name`, optionally `:split`) is fetched once
    into the local cache by `hub.dataset_file`.
    """
    if spec.startswith("example:"):
        name = spec.split(":", 1)[1]
        if name not in EXAMPLES:
            names = ", ".join(f"example:{n}" for n in EXAMPLES)
            raise DataError(f"unknown bundled data {spec!r}: use one of {names}")
        return Path(__file__).resolve().parent.parent / "data" / EXAMPLES[name][split == "valid"]
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        name = {"train": "train.jsonl", "valid": "valid.jsonl"}.get(split, f"{split}.jsonl")
        if not (path / name).is_file():
            raise DataError(f"{path}: no {name} in this directory")
        return path / name
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        from zephyr_local.train.hub import dataset_file

        return dataset_file(spec, split)
    raise DataError(f"data {spec!r} not found: give a JSONL file, a directory with "
                    "train.jsonl/valid.jsonl, or a Hugging Face dataset id like owner/name:split")


def default_eval_source(spec: str) -> str | None:
    """The held-out data that goes with --data: valid.jsonl beside train.jsonl."""
    if spec.startswith("example:"):
        return spec
    path = Path(spec).expanduser()
    return str(path) if path.is_dir() and (path / "valid.jsonl").is_file() else None


def _cut_after_last_eos(tokenizer, ids: list[int]) -> list[int]:
    """Drop the template's "\\n" after the final EOS so scoring ends at EOS."""
    eos = template.eos_id(tokenizer)
    if eos not in ids:
        raise DataError(f"the template's turn end {template.eos_token(tokenizer)!r} did not "
                        "encode to the EOS id: this tokenizer cannot be trained here")
    last = len(ids) - 1 - ids[::-1].index(eos)
    return ids[: last + 1]


def _boundary(prompt_ids: list[int], full_ids: list[int], summary: DataSummary) -> int:
    """Where the completion starts in full_ids: after the prompt, if it is a prefix.

    If the tokenizer merged tokens across the boundary, the completion starts at
    the first differing token (so no merged token is counted as prompt) and the
    row is counted in the summary.
    """
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return len(prompt_ids)
    summary.boundary_merges += 1
    return template_common_prefix(prompt_ids, full_ids)


def template_common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _reply(tokenizer, prompt: list[dict], reply: str, summary: DataSummary) -> tuple[list, int]:
    msgs = prompt + [{"role": "assistant", "content": reply}]
    full = _cut_after_last_eos(tokenizer, template.encode(tokenizer, msgs, False))
    start = _boundary(template.encode(tokenizer, prompt, True), full, summary)
    return full, start


def tokenize_pref(tokenizer, row: PrefRow, cfg: DataConfig, summary: DataSummary):
    """A PrefExample, or None if the prompt alone overflows (counted)."""
    c_ids, c_start = _reply(tokenizer, row.prompt, row.chosen, summary)
    r_ids, r_start = _reply(tokenizer, row.prompt, row.rejected, summary)
    limit = min(cfg.max_prompt_length, cfg.max_length - 1)
    if max(c_start, r_start) > limit:
        summary.dropped_long_prompt += 1
        return None
    # The same rule for both replies: cut each to max_length (EOS lost if cut).
    if max(len(c_ids), len(r_ids)) > cfg.max_length:
        summary.truncated += 1
    c_ids, r_ids = c_ids[: cfg.max_length], r_ids[: cfg.max_length]
    return PrefExample(Sequence(c_ids, [(c_start, len(c_ids))]),
                       Sequence(r_ids, [(r_start, len(r_ids))]))


def tokenize_sft(tokenizer, row: SFTRow, cfg: DataConfig, summary: DataSummary):
    """A Sequence scoring every assistant turn (content + EOS), or None if it cannot fit."""
    msgs = row.messages
    full = _cut_after_last_eos(tokenizer, template.encode(tokenizer, msgs, False))
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        turn = _cut_after_last_eos(tokenizer, template.encode(tokenizer, msgs[: i + 1], False))
        start = _boundary(template.encode(tokenizer, msgs[:i], True), full, summary)
        end = template_common_prefix(turn, full)  # == len(turn) unless merges
        spans.append((start, max(start, end)))
    if spans[0][0] > min(cfg.max_prompt_length, cfg.max_length - 1):
        summary.dropped_long_prompt += 1
        return None
    if len(full) > cfg.max_length:
        summary.truncated += 1
        full = full[: cfg.max_length]
        spans = [(s, min(e, cfg.max_length)) for s, e in spans if s < cfg.max_length]
    return Sequence(full, spans)


def load_dataset(spec: str, kind: str, tokenizer, cfg: DataConfig, split: str = "train",
                 progress=None) -> Dataset:
    """Read, validate and tokenize a data source; `progress(done, total)` per 64 rows.

    Raises:
        DataError: bad source, a bad row under --strict, or no usable row.
    """
    path = resolve_source(spec, split)
    summary = DataSummary()
    rows = read_rows(path, kind, summary, strict=cfg.strict)
    tok = tokenize_pref if kind == "dpo" else tokenize_sft
    examples = []
    for i, row in enumerate(rows):
        ex = tok(tokenizer, row, cfg, summary)
        if ex is not None:
            examples.append(ex)
        if progress is not None and ((i + 1) % 64 == 0 or i + 1 == len(rows)):
            progress(i + 1, len(rows))
    summary.kept = len(examples)
    if not examples:
        detail = f" ({summary.first_errors[0]})" if summary.first_errors else ""
        raise DataError(f"{path}: no usable {kind} rows: {summary.line()}{detail}")
    return Dataset(kind, examples, summary, str(path))


def collate(seqs: list[Sequence], pad_id: int = EOS_ID) -> tuple[np.ndarray, np.ndarray]:
    """Pad sequences into tokens [B, L] and a target mask [B, L-1].

    mask[b, j] scores target tokens[b, j+1] (the log-prob of token j+1 given
    tokens <= j): 1 exactly where j+1 lies in a completion span; prompt and
    padding are 0.
    """
    width = max(len(s.ids) for s in seqs)
    tokens = np.full((len(seqs), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), width - 1), dtype=np.float32)
    for b, s in enumerate(seqs):
        tokens[b, : len(s.ids)] = s.ids
        for start, end in s.spans:
            mask[b, max(start - 1, 0): end - 1] = 1.0  # target index = token index - 1
    return tokens, mask


def pref_batch(examples: list[PrefExample]) -> tuple[np.ndarray, np.ndarray]:
    """Chosen rows then rejected rows, in one padded batch [2B, L] (one forward pass)."""
    return collate([e.chosen for e in examples] + [e.rejected for e in examples])
