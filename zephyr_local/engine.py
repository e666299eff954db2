"""The generation core: stream Zephyr's replies, reuse the KV cache, cancel on demand.

One generator of `Response` records feeds the CLI, the TUI, the benchmarks and
the tests. mlx-lm supplies the model, the KV cache, the sampler and the decode
loop (`generate_step`); this module adds what it lacks: conversation state with
cache reuse across turns (trimmed to the common prefix), cancellation from
another thread, the statistics of every reply, and one thread for all MLX work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from zephyr_local import loading, lookup, store
from zephyr_local.lookup import LookupCounts, LookupOptions
from zephyr_local.sampling import SamplingOptions
from zephyr_local.template import eos_id, fit_to_budget
from zephyr_local.worker import MLXThread


@dataclass
class ReplyStats:
    """What one reply cost."""

    prompt_tokens: int  # tokens in the prompt
    prefilled_tokens: int  # of those, run through the model (the rest came from the cache)
    generation_tokens: int  # tokens sampled, EOS included
    prompt_tps: float
    generation_tps: float  # generation_tokens / time since the first token (as mlx-lm)
    ttft_s: float  # from the call to the first sampled token
    peak_memory_gb: float
    dropped_turns: int = 0  # turns cut to fit the context budget
    dropped_messages: int = 0  # the non-system messages cut, all from the front
    draft_tokens: int = 0  # tokens proposed by prompt lookup
    accepted_tokens: int = 0  # of those, kept (each saved a forward pass)

    @property
    def acceptance(self) -> float | None:
        """Share of proposed tokens kept; None when nothing was proposed."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Response:
    """One streamed record: new text, and on the last record why and what it cost."""

    text: str
    token: int | None
    finish_reason: str | None = None  # "stop", "length" or "cancelled" on the last record
    stats: ReplyStats | None = None


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Engine:
    """A loaded model with its own MLX thread."""

    def __init__(self, loaded: loading.LoadedModel, worker: MLXThread):
        self.loaded = loaded
        self.worker = worker

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        adapter: str | Path | None = None,
        models_dir: str | Path | None = None,
    ) -> Engine:
        """Resolve `model` (path, store name or downloaded hub id) and load it."""
        path = store.resolve_model(model, store.models_dir(models_dir))
        adapter_path = Path(adapter).expanduser() if adapter else None
        worker = MLXThread()
        try:
            loaded = worker.call(loading.load, path, adapter_path)
        except BaseException:
            worker.close()
            raise
        return cls(loaded, worker)

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def context_window(self) -> int:
        return self.loaded.context_window

    def session(
        self, context_budget: int | None = None, lookup: LookupOptions | None = None
    ) -> ChatSession:
        """A conversation; `lookup` sets prompt-lookup decoding (default: on)."""
        return ChatSession(self, context_budget or self.context_window, lookup)

    def close(self) -> None:
        self.worker.close()


class ChatSession:
    """A conversation with the model that keeps its KV cache between replies."""

    def __init__(self, engine: Engine, context_budget: int, lookup: LookupOptions | None = None):
        self.engine = engine
        self.context_budget = context_budget
        self.lookup = lookup or LookupOptions()
        self._cancel = threading.Event()
        self._cache = None  # mlx-lm prompt cache, made on the MLX thread
        self._cached_ids: list[int] = []  # the tokens the cache holds, in order

    @property
    def cached_tokens(self) -> int:
        return len(self._cached_ids)

    def cancel(self) -> None:
        """Stop the reply in progress after at most one more token (any thread)."""
        self._cancel.set()

    def reply(
        self, messages: Sequence[dict], options: SamplingOptions | None = None
    ) -> Iterator[Response]:
        """Stream the assistant's reply to a conversation.

        The oldest turns are dropped to fit the context budget (the final
        record's `stats.dropped_turns` says how many turns, `stats.dropped_messages`
        how many non-system messages from the front); raises ContextOverflowError
        if the newest turn alone does not fit.
        """
        options = (options or SamplingOptions()).validate()
        reserve = min(options.max_tokens, self.context_budget // 2)
        fitted = fit_to_budget(self.engine.tokenizer, messages, self.context_budget, reserve)
        return self.reply_to_ids(fitted.ids, options, fitted.dropped_turns,
                                 fitted.dropped_messages)

    def reply_to_ids(
        self, ids: Sequence[int], options: SamplingOptions | None = None, dropped_turns: int = 0,
        dropped_messages: int = 0,
    ) -> Iterator[Response]:
        """Stream a continuation of prompt token ids (already templated); the dropped
        counts, from whoever fitted the prompt, are passed on to the final stats."""
        options = (options or SamplingOptions()).validate()
        if not ids:
            raise ValueError("the prompt is empty")
        self._cancel.clear()
        return self.engine.worker.stream(
            self._run, list(ids), options, dropped_turns, dropped_messages, cancel=self._cancel
        )

    def reset(self) -> None:
        """Forget the cache (a new conversation)."""
        self.engine.worker.call(self._drop_cache)

    def _drop_cache(self) -> None:
        self._cache, self._cached_ids = None, []

    def _reuse_cache(self, ids: list[int]) -> int:
        """Trim the cache to its common prefix with `ids`; return the tokens kept."""
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        if self._cache is None:
            self._cache = make_prompt_cache(self.engine.loaded.model)
            self._cached_ids = []
        # At least one prompt token must be fed to get the next token's logits.
        keep = min(common_prefix_len(self._cached_ids, ids), len(ids) - 1)
        excess = self._cache[0].offset - keep
        if excess > 0 and trim_prompt_cache(self._cache, excess) != excess:
            self._drop_cache()  # an untrimmable cache: rebuild
            return self._reuse_cache(ids)
        self._cached_ids = ids[:keep]
        return keep

    def _run(self, ids: list[int], options: SamplingOptions, dropped_turns: int,
             dropped_messages: int = 0) -> Iterator[Response]:
        """The decode loop; runs on the MLX thread."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream, wired_limit

        t0 = time.perf_counter()
        try:
            keep = self._reuse_cache(ids)
        except BaseException:
            self._drop_cache()
            raise
        if options.seed is not None:
            mx.random.seed(options.seed)
        mx.reset_peak_memory()
        model, tokenizer = self.engine.loaded.model, self.engine.tokenizer
        eos = set(tokenizer.eos_token_ids) | {eos_id(tokenizer)}  # the template's turn end
        max_new = max(1, min(options.max_tokens, self.context_budget - len(ids)))
        detok = tokenizer.detokenizer
        detok.reset()
        generated: list[int] = []
        finish, t_first = "length", None
        counts = LookupCounts()
        steps = self._token_ids(ids, keep, options, max_new, counts)
        try:
            with wired_limit(model, [generation_stream]):
                for token in steps:
                    if t_first is None:
                        t_first = time.perf_counter()
                    generated.append(token)
                    if token in eos:
                        finish = "stop"
                        break
                    detok.add_token(token)
                    yield Response(detok.last_segment, token)
                    if self._cancel.is_set():
                        finish = "cancelled"
                        break
        except BaseException:
            self._drop_cache()
            raise
        finally:
            steps.close()
        t_end = time.perf_counter()
        self._sync_cached_ids(ids + generated)
        detok.finalize()
        t_first = t_first or t_end
        stats = ReplyStats(
            prompt_tokens=len(ids),
            prefilled_tokens=len(ids) - keep,
            generation_tokens=len(generated),
            prompt_tps=(len(ids) - keep) / max(t_first - t0, 1e-9),
            generation_tps=len(generated) / max(t_end - t_first, 1e-9),
            ttft_s=t_first - t0,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
            dropped_turns=dropped_turns,
            dropped_messages=dropped_messages,
            draft_tokens=counts.draft_tokens,
            accepted_tokens=counts.accepted_tokens,
        )
        yield Response(detok.last_segment, None, finish, stats)

    def _token_ids(self, ids: list[int], keep: int, options: SamplingOptions, max_new: int,
                   counts: LookupCounts) -> Iterator[int]:
        """The sampled token ids: prompt lookup when on, else mlx-lm's generate_step."""
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.models.cache import can_trim_prompt_cache

        model = self.engine.loaded.model
        sampler, processors = options.sampler(), options.logits_processors()
        # Speculation rewinds the cache; a cache that cannot be trimmed decodes plainly.
        if self.lookup.enabled and can_trim_prompt_cache(self._cache):
            return lookup.generate_ids(
                ids, keep, model, self._cache, sampler=sampler, logits_processors=processors,
                max_tokens=max_new, num_draft_tokens=self.lookup.draft_length(), counts=counts,
            )
        steps = generate_step(
            mx.array(ids[keep:]), model, max_tokens=max_new, sampler=sampler,
            logits_processors=processors, prompt_cache=self._cache,
        )
        return (token for token, _ in steps)

    def _sync_cached_ids(self, fed: list[int]) -> None:
        """Record which tokens the cache holds after a reply.

        mlx-lm's decode loop feeds each token before yielding it, so the cache
        holds the prompt and every sampled token; the offset check keeps the
        record right whatever the loop did.
        """
        from mlx_lm.models.cache import trim_prompt_cache

        offset = self._cache[0].offset
        if offset > len(fed):
            trim_prompt_cache(self._cache, offset - len(fed))
            offset = len(fed)
        self._cached_ids = fed[:offset]
