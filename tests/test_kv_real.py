"""Saved and quantized KV caches on the real trained model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import pytest

from zephyr_local import template
from zephyr_local.bench.kv_resume import long_conversation, next_token_kl
from zephyr_local.bench.lookup import float32_engine
from zephyr_local.engine import Engine
from zephyr_local.kv_store import KVStore
from zephyr_local.sampling import SamplingOptions

GREEDY = SamplingOptions(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def real_engine(smollm2_model):
    """A float32 copy: on the CPU, prefill through 4-bit weights is a slow path."""
    eng = Engine.load(str(smollm2_model))
    with float32_engine(eng) as f32:
        yield f32
    eng.close()


def _tokens(session, ids):
    return [r.token for r in session.reply_to_ids(ids, GREEDY) if r.token is not None]


@pytest.mark.parametrize("kv_bits", [None, 8])
def test_resumed_greedy_reply_equals_a_cache_less_one(real_engine, tmp_path, kv_bits):
    tok = real_engine.tokenizer
    messages = long_conversation(tok, 150)
    saved = KVStore(tmp_path / "kv", 10**9)
    first = real_engine.session(kv_bits=kv_bits)
    first.keep_cache(saved, "c")
    reply = _tokens(first, template.encode(tok, messages))
    longer = messages + [{"role": "assistant", "content": tok.decode(reply)},
                         {"role": "user", "content": "Who kept the lighthouse?"}]
    ids = template.encode(tok, longer)
    resumed = real_engine.session(kv_bits=kv_bits)
    resumed.keep_cache(saved, "c")
    records = list(resumed.reply_to_ids(ids, GREEDY))
    stats = records[-1].stats
    assert stats.loaded_tokens > len(ids) // 2
    assert stats.prefilled_tokens == len(ids) - stats.loaded_tokens
    fresh = _tokens(real_engine.session(kv_bits=kv_bits), ids)
    assert [r.token for r in records if r.token is not None] == fresh


def test_kv_bits_cost_little_next_token_kl(real_engine):
    tok = real_engine.tokenizer
    ids = template.encode(tok, long_conversation(tok, 300))
    kl = next_token_kl(real_engine, ids, (8, 4), positions=32)
    kl8, kl4 = kl[8], kl[4]
    assert 0 < kl8["mean_kl"] < 0.01 and kl8["top1_agreement"] >= 0.9
    assert kl8["mean_kl"] < kl4["mean_kl"] < 0.5
