"""Prompt-lookup decoding: the n-gram index, the backoff, and losslessness against mlx-lm."""

from __future__ import annotations

import random

import pytest

from zephyr_local.lookup import Backoff, LookupCounts, LookupOptions, NgramIndex
from zephyr_local.sampling import SamplingOptions
from zephyr_local.template import encode

CODE = "def area(w, h):\n    return w * h\n\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
ECHO = [
    f"Rename `area` to `surface` and return the whole code:\n```python\n{CODE}```",
    "Repeat exactly: the cat sat on the mat, the dog sat on the log, the cat sat on the mat.",
    "Continue the list:\n1. red apples\n2. green apples\n3. red apples\n4. green apples\n",
]
OPEN = ["Tell me about the history of sailing ships."]


def brute_force_proposal(tokens: list[int], k: int) -> list[int]:
    """The latest earlier occurrence of the longest (<= 3) suffix, and what followed it."""
    for n in range(min(3, len(tokens)), 0, -1):
        suffix = tokens[-n:]
        for end in range(len(tokens) - 2, n - 2, -1):
            if tokens[end - n + 1 : end + 1] == suffix:
                return tokens[end + 1 : end + 1 + k]
    return []


def test_index_proposes_what_followed_the_latest_match():
    index = NgramIndex([5, 6, 7, 8, 5, 6, 9, 5, 6])
    assert index.propose(3) == [9, 5, 6]  # the latest "5 6" is followed by 9
    index.add(7)
    assert index.propose(2) == [8, 5]  # "6 7" matched (the 3-gram "5 6 7" too)
    assert NgramIndex([1, 2, 3]).propose(4) == []


def test_index_matches_brute_force_on_random_sequences():
    rng = random.Random(0)
    for _ in range(200):
        tokens = [rng.randrange(6) for _ in range(rng.randrange(1, 40))]
        index = NgramIndex(tokens[:1])
        for t in tokens[1:]:
            index.add(t)
            assert index.propose(4) == brute_force_proposal(index.tokens, 4), index.tokens


def test_backoff_pauses_and_shrinks_after_misses_then_grows_back():
    b = Backoff(8)
    assert b.draft_length(room=100) == 8
    b.record(8, 0)
    assert (b.limit, b.pause) == (4, 1)
    assert b.draft_length(100) == 0 and b.draft_length(100) == 4
    b.record(4, 0)
    assert (b.limit, b.pause) == (2, 3)
    for _ in range(3):
        assert b.draft_length(100) == 0
    b.record(2, 2)
    assert b.limit == 4 and b.draft_length(room=3) == 3
    b.record(4, 1)  # partly accepted: same length, no pause
    assert (b.limit, b.pause, b.misses) == (4, 0, 0)


def _plain_greedy(engine, ids: list[int], opts: SamplingOptions) -> list[int]:
    """mlx-lm's stream_generate: the oracle."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    eos = set(engine.tokenizer.eos_token_ids)

    def run():
        out = []
        for r in stream_generate(engine.loaded.model, engine.tokenizer, mx.array(ids),
                                 max_tokens=opts.max_tokens, sampler=opts.sampler(),
                                 logits_processors=opts.logits_processors()):
            if r.token in eos:
                break
            out.append(r.token)
        return out

    return engine.worker.call(run)


def _ours(session, ids, opts):
    records = list(session.reply_to_ids(ids, opts))
    return [r.token for r in records if r.token is not None], records[-1].stats


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_output_equals_mlx_lm_on_the_test_model(engine, penalty):
    opts = SamplingOptions(temperature=0.0, max_tokens=64, repetition_penalty=penalty)
    drafted = 0
    for text in ECHO + OPEN:
        ids = encode(engine.tokenizer, [{"role": "user", "content": text}])
        tokens, stats = _ours(engine.session(lookup=LookupOptions(num_draft_tokens=8)), ids, opts)
        assert tokens == _plain_greedy(engine, ids, opts), text
        drafted += stats.draft_tokens
    assert drafted > 0  # speculation ran


def test_second_turn_on_a_reused_cache_stays_lossless(engine):
    """Turn 2 starts from turn 1's cache, trimmed of its rejected drafts and to the prefix."""
    opts = SamplingOptions(temperature=0.0, max_tokens=48)
    session = engine.session()
    messages = [{"role": "user", "content": ECHO[1]}]
    first = encode(engine.tokenizer, messages)
    reply = "".join(r.text for r in session.reply(messages, opts))
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": ECHO[0]}]
    ids = encode(engine.tokenizer, messages)
    tokens, stats = _ours(session, ids, opts)
    assert stats.prefilled_tokens <= len(ids) - len(first)  # turn 1's tokens came from the cache
    assert tokens == _plain_greedy(engine, ids, opts)


def test_off_switch_proposes_nothing(engine):
    ids = encode(engine.tokenizer, [{"role": "user", "content": ECHO[1]}])
    opts = SamplingOptions(temperature=0.0, max_tokens=32)
    tokens, stats = _ours(engine.session(lookup=LookupOptions(enabled=False)), ids, opts)
    assert (stats.draft_tokens, stats.accepted_tokens) == (0, 0)
    assert tokens == _plain_greedy(engine, ids, opts)


def test_real_model_echo_is_lossless_and_accepts_drafts(smollm2_model):
    from zephyr_local.engine import Engine

    eng = Engine.load(str(smollm2_model))
    try:
        opts = SamplingOptions(temperature=0.0, max_tokens=32)
        ids = encode(eng.tokenizer, [{"role": "user", "content": ECHO[1]}])
        tokens, stats = _ours(eng.session(), ids, opts)
        assert tokens == _plain_greedy(eng, ids, opts)
        assert stats.accepted_tokens > 0  # the real model echoes, so drafts were kept
    finally:
        eng.close()


CHI2_8DOF_P001 = 26.12  # chi-square critical value, 8 degrees of freedom, p = 0.001


def test_sampling_keeps_the_model_distribution(engine):
    """The joint law of the first two sampled tokens, where drafts are proposed for the
    second, against the exact law from the model's logits (three tokens made likely by a
    logit bias, so the law has nine cells and every first token finds a proposal)."""
    import math

    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    from zephyr_local.lookup import generate_ids

    model, tok = engine.loaded.model, engine.tokenizer
    a, b, c = (tok.encode(w, add_special_tokens=False)[-1] for w in ("red", "green", "blue"))
    trio = [a, b, c]
    prompt = tok.encode("Colours:") + [a, b, c, b, a, c, a, c, b]
    bias = {t: 30.0 for t in trio}
    runs = 300

    def exact() -> dict:
        def law(ids):
            logits = model(mx.array(ids)[None])[0, -1]
            p = mx.softmax(logits[mx.array(trio)] + 30.0).tolist()
            return dict(zip(trio, p))

        first = law(prompt)
        return {(x, y): first[x] * q for x in trio for y, q in law(prompt + [x]).items()}

    def sample() -> tuple[dict, LookupCounts]:
        counts, seen = LookupCounts(), {}
        for seed in range(runs):
            mx.random.seed(seed)
            out = list(generate_ids(
                prompt, 0, model, make_prompt_cache(model), sampler=make_sampler(temp=1.0),
                logits_processors=make_logits_processors(logit_bias=bias), max_tokens=3,
                num_draft_tokens=2, counts=counts))
            seen[tuple(out[:2])] = seen.get(tuple(out[:2]), 0) + 1
        return seen, counts

    law = engine.worker.call(exact)
    seen, counts = engine.worker.call(sample)
    assert set(seen) <= set(law)
    chi2 = sum((seen.get(cell, 0) - runs * p) ** 2 / (runs * p) for cell, p in law.items())
    tv = 0.5 * sum(abs(seen.get(cell, 0) / runs - p) for cell, p in law.items())
    assert chi2 < CHI2_8DOF_P001, (chi2, tv, seen, law)
    assert math.isfinite(tv) and tv < 0.15
    # Both outcomes of the acceptance rule happened.
    assert 0 < counts.accepted_tokens < counts.draft_tokens


def test_generate_flags_and_json_counts(run_cli):
    import json

    base = ["generate", "-m", "zephyr-test", "--temp", "0", "--max-tokens", "24", "--json",
            "-p", ECHO[1]]
    on = run_cli(*base, "--num-draft-tokens", "4")
    off = run_cli(*base, "--no-prompt-lookup")
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    rec_on, rec_off = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (on, off))
    assert rec_on["text"] == rec_off["text"]
    assert rec_on["draft_tokens"] > 0 and 0 <= rec_on["accepted_tokens"] <= rec_on["draft_tokens"]
    assert (rec_off["draft_tokens"], rec_off["accepted_tokens"]) == (0, 0)
    bad = run_cli(*base, "--num-draft-tokens", "0")
    assert bad.exit_code == 2 and "--num-draft-tokens" in bad.output


@pytest.mark.asyncio
async def test_status_bar_shows_acceptance():
    from textual.app import App

    from zephyr_local.engine import ReplyStats
    from zephyr_local.tui.widgets.status import StatusBar

    class Bar(App):
        def compose(self):
            yield StatusBar(id="status")

    stats = ReplyStats(prompt_tokens=9, prefilled_tokens=9, generation_tokens=20, prompt_tps=1.0,
                       generation_tps=2.0, ttft_s=0.1, peak_memory_gb=0.1, draft_tokens=16,
                       accepted_tokens=12)
    async with Bar().run_test() as pilot:
        bar = pilot.app.query_one(StatusBar)
        bar.set_stats(stats)
        assert "lookup 12/16 (75%)" in str(bar.render())
        bar.set_stats(ReplyStats(**{**stats.as_dict(), "draft_tokens": 0, "accepted_tokens": 0}))
        assert "lookup" not in str(bar.render())
