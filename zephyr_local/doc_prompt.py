"""The prompt of a conversation with attached documents, within the context budget.

The budget split (tokens of `budget`):
- the reply keeps `min(max_tokens, budget // 2)`, as for any conversation;
- if every document, the whole conversation and the reply fit, the documents go
  in whole, as one user turn right after the system prompt (before the first
  question, so the KV cache keeps it from turn to turn), each quoted between
  `<document name="...">` tags;
- otherwise retrieval: the passages BM25 ranks best for the newest question, at
  most half of what the reply leaves, go in a user turn right before that
  question, each between `<passage document="..." lines="a-b">` tags; the
  conversation gets the rest (its oldest turns are dropped first, as without
  documents).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

from zephyr_local import retrieval
from zephyr_local.errors import ContextOverflowError
from zephyr_local.template import encode, fit_to_budget, validate

WHOLE_HEADER = "Attached documents, quoted in full:"
PASSAGES_HEADER = ("Passages from the attached documents, the ones most relevant to the "
                   "next question (file and lines given):")
FALLBACK_HEADER = ("The opening passages of the attached documents (no passage shares a word "
                   "with the next question):")
LABEL_TOKENS = 24  # a passage's tags and the blank lines around it


@dataclass
class UsedPassage:
    """A passage given to the model, as the reply's panel and `--json` list it."""

    file: str
    start_line: int
    end_line: int
    heading: str | None
    first_words: str
    tokens: int

    def label(self) -> str:
        return f"{self.file}:{self.start_line}-{self.end_line}"


@dataclass
class PromptPlan:
    """Token ids for the engine and how the documents got into them."""

    ids: list[int]
    messages: list[dict]
    mode: str  # "none", "whole" or "passages"
    reserve: int  # tokens kept for the reply
    dropped_turns: int = 0
    dropped_messages: int = 0  # non-system messages cut from the front of the conversation
    used: list[UsedPassage] = field(default_factory=list)


def reply_reserve(budget: int, max_tokens: int) -> int:
    return min(max_tokens, budget // 2)


def documents_turn(docs: Sequence) -> dict:
    """The user turn that quotes whole documents (`docs`: documents.Document)."""
    parts = [WHOLE_HEADER]
    parts += [f'<document name="{d.name}">\n{d.text.strip(chr(10))}\n</document>' for d in docs]
    return {"role": "user", "content": "\n\n".join(parts)}


def passages_turn(hits: Sequence[retrieval.Hit], header: str = PASSAGES_HEADER) -> dict:
    parts = [header]
    parts += [f'<passage document="{h.document}" lines="{h.passage.start_line}-'
              f'{h.passage.end_line}">\n{h.passage.text}\n</passage>' for h in hits]
    return {"role": "user", "content": "\n\n".join(parts)}


def _split_system(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    system = [m for m in messages if m["role"] == "system"]
    return system, [m for m in messages if m["role"] != "system"]


def plan(tokenizer, messages: Sequence[dict], budget: int, max_tokens: int,
         db: sqlite3.Connection | None = None,
         docs: Sequence[retrieval.StoredDocument] = ()) -> PromptPlan:
    """The prompt for the reply to `messages` (the last one the user's question)."""
    messages = validate(messages)
    reserve = reply_reserve(budget, max_tokens)
    if not docs:
        fitted = fit_to_budget(tokenizer, messages, budget, reserve)
        return PromptPlan(fitted.ids, fitted.messages, "none", reserve, fitted.dropped_turns,
                          fitted.dropped_messages)
    whole = whole_prompt(tokenizer, messages, [d.document for d in docs], budget, reserve)
    if whole is not None:
        return PromptPlan(encode(tokenizer, whole), whole, "whole", reserve)
    return _retrieve(tokenizer, messages, budget, reserve, db, docs)


def whole_prompt(tokenizer, messages: Sequence[dict], docs: Sequence, budget: int,
                 reserve: int) -> list[dict] | None:
    """The conversation with the documents quoted whole, or None if that does not fit."""
    if sum(d.tokens for d in docs) + reserve >= budget:
        return None  # no need to encode a large document set to know
    system, turns = _split_system(list(messages))
    whole = system + [documents_turn(docs)] + turns
    return whole if len(encode(tokenizer, whole)) + reserve <= budget else None


def _retrieve(tokenizer, messages, budget, reserve, db, docs) -> PromptPlan:
    question = messages[-1]["content"]
    room = (budget - reserve) // 2
    question_ids = encode(tokenizer, _split_system(messages)[0] + [messages[-1]])
    room = min(room, budget - reserve - len(question_ids) - LABEL_TOKENS)
    hits = retrieval.rank(db, [d.id for d in docs], question)
    header = PASSAGES_HEADER
    if not hits:
        header = FALLBACK_HEADER
        hits = [retrieval.Hit(0, d.document.name, p, 0.0)
                for d in docs for p in retrieval.passages(db, d.id)]
    chosen = choose(hits, room)
    while True:
        turn = passages_turn(chosen, header)
        extra = len(encode(tokenizer, [turn], add_generation_prompt=False))
        try:
            fitted = fit_to_budget(tokenizer, messages, budget, reserve + extra)
        except ContextOverflowError:
            if not chosen:
                raise
            chosen = chosen[:-1]
            continue
        final = fitted.messages[:-1] + [turn, fitted.messages[-1]]
        ids = encode(tokenizer, final)
        # Token counts are not exactly additive across turn boundaries: check the whole.
        if len(ids) + reserve <= budget or not chosen:
            break
        chosen = chosen[:-1]
    used = [UsedPassage(h.document, h.passage.start_line, h.passage.end_line, h.passage.heading,
                        " ".join(h.passage.text.split()[:8]), h.passage.tokens) for h in chosen]
    return PromptPlan(ids, final, "passages", reserve, fitted.dropped_turns,
                      fitted.dropped_messages, used)


def choose(hits: Sequence[retrieval.Hit], room: int) -> list[retrieval.Hit]:
    """The best-ranked passages that fit in `room` tokens, in rank order.

    A passage too big for what is left is skipped and the next one tried, so a
    long passage does not keep shorter good ones out.
    """
    chosen, left = [], room
    for hit in hits:
        cost = hit.passage.tokens + LABEL_TOKENS
        if cost <= left:
            chosen.append(hit)
            left -= cost
    return chosen


def one_shot(tokenizer, messages: Sequence[dict], paths: Sequence[str], budget: int,
             max_tokens: int) -> tuple[PromptPlan, list]:
    """`generate --attach`: read the files into a private index and plan the prompt.
    Returns the plan and the documents (documents.Document) read."""
    db = retrieval.memory_index()
    try:
        stored = [retrieval.add_file(db, None, path, tokenizer) for path in paths]
        planned = plan(tokenizer, messages, budget, max_tokens, db, stored)
        return planned, [s.document for s in stored]
    finally:
        db.close()
