"""Prompt-lookup speculative decoding: drafts copied from the conversation, verified in one pass.

Replies that echo their context (a code block returned with one change, a quoted
passage, a continued list) repeat runs of tokens already in the prompt. After each
token the latest earlier occurrence of the last 3 (then 2, then 1) tokens proposes
the tokens that followed it; one forward pass with the KV cache scores the current
token and the proposal together, the longest prefix the model agrees with is kept
with the model's own next token, and the cache is trimmed of the rest.

Lossless: every position is sampled with mlx-lm's sampler from the model's own
(processed) distribution and a draft token is kept only if it equals that sample.
For a deterministic draft x this is the speculative-sampling rule exactly: x is
kept with probability p(x), and on rejection the emitted sample is distributed as
p with x removed, renormalised. Under greedy decoding it keeps x iff x is the
argmax. mlx-lm has draft-model speculation only (`speculative_generate_step`
needs a second model), hence this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

MAX_NGRAM = 3
# Consecutive fully rejected proposals double the pause before the next one, up to this.
MAX_PAUSE = 32
PREFILL_STEP = 2048  # mlx-lm's generate_step default


def default_num_draft_tokens() -> int:
    """Proposal length for this backend (see backend.default_num_draft_tokens)."""
    from zephyr_local.backend import default_num_draft_tokens as for_backend

    return for_backend()


@dataclass
class LookupOptions:
    """Whether and how far to speculate from the conversation's own tokens."""

    enabled: bool = field(default=True, metadata={"help": "prompt-lookup decoding on"})
    num_draft_tokens: int | None = field(
        default=None, metadata={"help": "tokens proposed per verify pass (None: per backend)"})

    def draft_length(self) -> int:
        return self.num_draft_tokens or default_num_draft_tokens()


@dataclass
class LookupCounts:
    """What speculation did during one reply."""

    draft_tokens: int = 0  # tokens proposed to the model
    accepted_tokens: int = 0  # of those, kept
    verify_passes: int = 0  # forward passes that carried a proposal


class NgramIndex:
    """The conversation's tokens with the latest position of every 1..3-gram.

    An n-gram is indexed once a token follows it, so a hit always has a continuation
    and the suffix being looked up never matches itself.
    """

    def __init__(self, tokens: Sequence[int] = ()):
        self.tokens: list[int] = []
        self._last: dict[tuple[int, ...], int] = {}  # n-gram -> index of its last token
        for t in tokens:
            self.add(t)

    def add(self, token: int) -> None:
        toks, end = self.tokens, len(self.tokens) - 1
        for n in range(1, MAX_NGRAM + 1):
            if end - n + 1 < 0:
                break
            self._last[tuple(toks[end - n + 1 : end + 1])] = end
        toks.append(token)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier match of the longest suffix."""
        toks = self.tokens
        for n in range(min(MAX_NGRAM, len(toks)), 0, -1):
            end = self._last.get(tuple(toks[-n:]))
            if end is not None:
                return toks[end + 1 : end + 1 + k]
        return []


class Backoff:
    """Adapts the proposal length so that turns with nothing to echo decode as before.

    A rejected proposal halves the next one's length and pauses proposals for a
    doubling number of tokens; a fully accepted one doubles the length again (up to k).
    A failed proposal of d tokens costs only the extra width of one forward pass.
    """

    def __init__(self, k: int):
        self.k = max(0, k)
        self.limit = self.k  # the next proposal's length
        self.misses = 0  # consecutive proposals with nothing accepted
        self.pause = 0  # tokens to decode before proposing again

    def draft_length(self, room: int) -> int:
        if self.pause > 0:
            self.pause -= 1
            return 0
        return max(0, min(self.limit, room))

    def record(self, proposed: int, accepted: int) -> None:
        if not proposed:
            return
        if accepted == 0:
            self.misses += 1
            self.limit = max(1, self.limit // 2)
            self.pause = min(2**self.misses, MAX_PAUSE) - 1
            return
        self.misses = 0
        if accepted == proposed:
            self.limit = min(self.k, 2 * self.limit)


def generate_ids(
    prompt: Sequence[int], cached: int, model, cache, *, sampler: Callable,
    logits_processors: list | None, max_tokens: int, num_draft_tokens: int,
    counts: LookupCounts,
) -> Iterator[int]:
    """Yield up to `max_tokens` token ids continuing `prompt`; runs on the MLX thread.

    `cache` already holds `prompt[:cached]`; on return it holds the prompt, every
    yielded token and possibly rejected drafts after them (the caller trims to what
    it keeps). Logits processors see the whole conversation, one position at a time.
    """
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    index = NgramIndex(prompt)
    backoff = Backoff(num_draft_tokens)
    verify = _verifier(model, cache, sampler, logits_processors)

    with mx.stream(generation_stream):
        _prefill(model, cache, prompt[cached:-1])
        pending = verify(mx.array(prompt[-1:]), list(prompt[:-1]))  # the next token, lazy
        drafts: list[int] = []  # what `pending` also verifies, after its first input
        n = 0  # tokens yielded
        while True:
            if drafts:
                pending, accepted = _settle(pending, drafts, cache, backoff, counts)
                for t in drafts[:accepted]:
                    index.add(t)
                    n += 1
                    yield t
                drafts = []
            if n + 1 == max_tokens:
                # Feed the last token too, as generate_step does: the cache keeps the reply.
                mx.async_eval(model(pending[None], cache=cache))
                yield pending.item()
                return
            k = backoff.draft_length(room=max_tokens - n - 2)
            if k == 0:
                # No proposal whatever the token is: queue the next pass before reading it,
                # as mlx-lm's generate_step does, so building the graph overlaps the compute.
                after = verify(pending, index.tokens)
                mx.async_eval(after)
                y = pending.item()
                index.add(y)
            else:
                y = pending.item()
                index.add(y)
                drafts = index.propose(k)
                after = verify(mx.array([y] + drafts), index.tokens[:-1])
                mx.async_eval(after)
            n += 1
            yield y
            if n % 256 == 0:
                mx.clear_cache()
            pending = after


def _verifier(model, cache, sampler: Callable, logits_processors: list | None) -> Callable:
    """verify(inputs, before): one pass over `inputs`, sampling every position.

    Row i is the token after `before` + inputs[: i + 1]; each row is processed with the
    history a plain decode would have had at that position.
    """
    import mlx.core as mx

    def verify(inputs, before: list[int]):
        logits = model(inputs[None], cache=cache)[0]
        if logits_processors:
            history = mx.concatenate([mx.array(before, mx.uint32), inputs.astype(mx.uint32)])
            rows = []
            for i in range(inputs.size):
                row = logits[i : i + 1]
                for processor in logits_processors:
                    row = processor(history[: len(before) + i + 1], row)
                rows.append(row)
            logits = mx.concatenate(rows)
        return sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    return verify


def _settle(sampled, drafts: list[int], cache, backoff: Backoff, counts: LookupCounts):
    """Keep the longest agreeing prefix of `drafts`; return the next token and its length."""
    import mlx.core as mx
    from mlx_lm.models.cache import trim_prompt_cache

    out = sampled.tolist()
    accepted = 0
    while accepted < len(drafts) and out[accepted] == drafts[accepted]:
        accepted += 1
    _count(counts, backoff, len(drafts), accepted)
    if accepted < len(drafts):
        trim_prompt_cache(cache, len(drafts) - accepted)
    return mx.array(out[accepted : accepted + 1]), accepted


def _count(counts: LookupCounts, backoff: Backoff, proposed: int, accepted: int) -> None:
    backoff.record(proposed, accepted)
    if proposed:
        counts.draft_tokens += proposed
        counts.accepted_tokens += accepted
        counts.verify_passes += 1


def _prefill(model, cache, ids: Sequence[int]) -> None:
    """Feed `ids` through the model in chunks, as mlx-lm's generate_step does."""
    import mlx.core as mx

    for start in range(0, len(ids), PREFILL_STEP):
        model(mx.array(ids[start : start + PREFILL_STEP])[None], cache=cache)
        mx.eval([c.state for c in cache])
        mx.clear_cache()
