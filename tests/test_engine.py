"""The engine: greedy equals mlx-lm, KV-cache reuse across turns, cancellation, stats."""

from __future__ import annotations

import threading

import pytest

from zephyr_local import template
from zephyr_local.engine import common_prefix_len
from zephyr_local.sampling import SamplingOptions

GREEDY = SamplingOptions(temperature=0.0, max_tokens=12)
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about the sea."},
]


def _reply(session, messages, options=GREEDY):
    records = list(session.reply(messages, options))
    tokens = [r.token for r in records if r.token is not None]
    return "".join(r.text for r in records), tokens, records[-1]


def _mlx_lm_greedy(engine, ids, max_tokens):
    """mlx-lm's own stream_generate on the same model and prompt ids: the oracle."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    def run():
        out = list(stream_generate(engine.loaded.model, engine.tokenizer, mx.array(ids),
                                   max_tokens=max_tokens))
        return "".join(r.text for r in out), [r.token for r in out]

    return engine.worker.call(run)


def test_greedy_equals_mlx_lm_and_is_reproducible(engine):
    text, tokens, last = _reply(engine.session(), CHAT)
    ids = template.encode(engine.tokenizer, CHAT)
    ref_text, ref_tokens = _mlx_lm_greedy(engine, ids, GREEDY.max_tokens)
    assert tokens == ref_tokens[: len(tokens)] and len(tokens) == GREEDY.max_tokens
    assert text == ref_text
    assert last.finish_reason == "length"
    again, again_tokens, _ = _reply(engine.session(), CHAT)
    assert (again, again_tokens) == (text, tokens)


def test_stats_describe_the_reply(engine):
    _, tokens, last = _reply(engine.session(), CHAT)
    s = last.stats
    assert s.prompt_tokens == len(template.encode(engine.tokenizer, CHAT))
    assert s.prefilled_tokens == s.prompt_tokens
    assert s.generation_tokens == len(tokens)
    assert s.prompt_tps > 0 and s.generation_tps > 0 and s.ttft_s > 0
    assert s.peak_memory_gb > 0
    assert s.dropped_turns == 0


def test_second_turn_prefills_only_new_tokens(engine):
    session = engine.session()
    text, tokens, first = _reply(session, CHAT)
    ids1 = template.encode(engine.tokenizer, CHAT)
    assert session.cached_tokens == len(ids1) + len(tokens)
    turn2 = CHAT + [{"role": "assistant", "content": text}, {"role": "user", "content": "More."}]
    ids2 = template.encode(engine.tokenizer, turn2)
    _, tokens2, second = _reply(session, turn2)
    reused = common_prefix_len(ids1 + tokens, ids2)
    assert reused >= len(ids1), "the whole first prompt comes from the cache"
    assert second.stats.prefilled_tokens == len(ids2) - reused
    assert second.stats.prefilled_tokens < len(ids2) - len(ids1) + len(tokens)
    # Reusing the cache must not change the result: same reply as a fresh session.
    _, fresh_tokens, _ = _reply(engine.session(), turn2)
    assert tokens2 == fresh_tokens


def test_regenerate_and_edit_trim_the_cache(engine):
    session = engine.session()
    ids = template.encode(engine.tokenizer, CHAT)
    _, tokens, _ = _reply(session, CHAT)
    # Regenerate: the same prompt; only its last token is fed again.
    _, again, regen = _reply(session, CHAT)
    assert regen.stats.prefilled_tokens == 1
    assert again == tokens
    # Edit the user turn: the cache is trimmed to the common prefix, not rebuilt.
    edited = [CHAT[0], {"role": "user", "content": "Tell me about the sky."}]
    edited_ids = template.encode(engine.tokenizer, edited)
    _, edit_tokens, edit = _reply(session, edited)
    assert edit.stats.prefilled_tokens == len(edited_ids) - common_prefix_len(ids, edited_ids)
    assert 0 < edit.stats.prefilled_tokens < len(edited_ids)
    assert edit_tokens == _reply(engine.session(), edited)[1]


class _CancellingOptions(SamplingOptions):
    """Cancels the session from another thread when the 3rd token's sampling starts."""

    def __init__(self, session, **kw):
        super().__init__(**kw)
        self.session, self.calls = session, 0

    def sampler(self):
        inner = super().sampler()

        def sample(logprobs):
            self.calls += 1
            if self.calls == 3:
                t = threading.Thread(target=self.session.cancel)
                t.start()
                t.join()
            return inner(logprobs)

        return sample


def test_cancel_from_another_thread_stops_within_one_token(engine):
    session = engine.session()
    options = _CancellingOptions(session, temperature=0.0, max_tokens=200)
    _, tokens, last = _reply(session, CHAT, options)
    assert last.finish_reason == "cancelled"
    # Cancelled while the 3rd token was being computed: at most that token is produced.
    assert len(tokens) <= 3 and last.stats.generation_tokens <= 3
    # The session is still usable and its cache consistent.
    _, tokens2, after = _reply(session, CHAT)
    assert after.finish_reason == "length"
    assert tokens2 == _reply(engine.session(), CHAT)[1]


def test_cancel_while_consuming_on_another_thread(engine):
    session = engine.session()
    seen, done = [], threading.Event()

    def consume():
        for r in session.reply(CHAT, SamplingOptions(temperature=0.0, max_tokens=500)):
            seen.append(r)
        done.set()

    worker = threading.Thread(target=consume)
    worker.start()
    while not seen:
        done.wait(0.001)
    session.cancel()
    worker.join(timeout=60)
    assert done.is_set()
    assert seen[-1].finish_reason == "cancelled"
    assert seen[-1].stats.generation_tokens < 500


def test_seeded_sampling_is_reproducible(engine):
    opts = SamplingOptions(temperature=0.9, top_p=0.9, top_k=40, seed=1234, max_tokens=10)
    first = _reply(engine.session(), CHAT, opts)[1]
    second = _reply(engine.session(), CHAT, opts)[1]
    assert first == second


def test_reply_drops_turns_to_fit_budget(engine):
    long_chat = [{"role": "system", "content": "Keep me."}]
    for i in range(6):
        long_chat += [{"role": "user", "content": f"question {i} " * 20},
                      {"role": "assistant", "content": f"answer {i} " * 20}]
    long_chat.append({"role": "user", "content": "last"})
    session = engine.session(context_budget=256)
    _, _, last = _reply(session, long_chat, SamplingOptions(temperature=0.0, max_tokens=8))
    assert last.stats.dropped_turns > 0
    assert last.stats.prompt_tokens + 8 <= 256
    # The messages cut are the first ones after the system prompt, two per dropped turn.
    assert last.stats.dropped_messages == 2 * last.stats.dropped_turns
    kept = [long_chat[0]] + long_chat[1 + last.stats.dropped_messages:]
    assert last.stats.prompt_tokens == len(template.encode(engine.tokenizer, kept))


@pytest.mark.parametrize(
    "field, value",
    [("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("min_p", 1.0), ("max_tokens", 0),
     ("top_k", -1), ("repetition_penalty", 0.0)],
)
def test_invalid_sampling_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingOptions(**{field: value}).validate()
