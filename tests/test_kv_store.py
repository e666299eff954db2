"""Saved KV caches: resume equals a cache-less run, foreign or broken caches are never used,
the size cap evicts the least recently used, and quantized caches stay lossless with lookup."""

from __future__ import annotations

import json
import os

import pytest

from zephyr_local import kv_store, template
from zephyr_local.engine import Engine, common_prefix_len
from zephyr_local.errors import ZephyrError
from zephyr_local.kv_store import KVStore
from zephyr_local.lookup import LookupOptions
from zephyr_local.sampling import SamplingOptions

GREEDY = SamplingOptions(temperature=0.0, max_tokens=10)
CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me about the sea, the sky and the long river."}]


def _reply(session, messages, options=GREEDY):
    records = list(session.reply(messages, options))
    tokens = [r.token for r in records if r.token is not None]
    return "".join(r.text for r in records), tokens, records[-1].stats


def _oracle(engine, ids, max_tokens, kv_bits=None):
    """mlx-lm's plain greedy stream_generate, no cache carried over (quantized: a fresh
    QuantizedKVCache from the first token, as the engine makes it)."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    from zephyr_local.kv_layout import new_cache

    group = kv_store.group_size_for(engine.loaded.config, kv_bits)

    def run():
        cache = new_cache(engine.loaded.model, kv_bits, group)
        eos = set(engine.tokenizer.eos_token_ids)
        out = []
        for r in stream_generate(engine.loaded.model, engine.tokenizer, mx.array(ids),
                                 max_tokens=max_tokens, prompt_cache=cache):
            out.append(r.token)
            if r.token in eos:
                break
        return out

    return engine.worker.call(run)


def _turn2(text):
    return CHAT + [{"role": "assistant", "content": text},
                   {"role": "user", "content": "And the mountains?"}]


def _saved_tokens(path):
    from zephyr_local.safetensors_header import read_header_and_metadata

    return json.loads(read_header_and_metadata(path)[1]["0.tokens"])


@pytest.fixture
def saved(tmp_path):
    return KVStore(tmp_path / "kv-cache", kv_store.max_bytes(1.0))


@pytest.mark.parametrize("kv_bits", [None, 8])
def test_a_new_session_resumes_from_the_saved_cache_and_replies_the_same(engine, saved, kv_bits):
    first = engine.session(kv_bits=kv_bits)
    first.keep_cache(saved, "chat-1")
    text, _, stats = _reply(first, CHAT)
    assert stats.loaded_tokens == 0 and saved.path("chat-1").exists()
    held = _saved_tokens(saved.path("chat-1"))
    assert held[: stats.prompt_tokens] == template.encode(engine.tokenizer, CHAT)

    resumed = engine.session(kv_bits=kv_bits)  # what a restarted app has: nothing in memory
    resumed.keep_cache(saved, "chat-1")
    turn2 = _turn2(text)
    ids2 = template.encode(engine.tokenizer, turn2)
    _, tokens, stats = _reply(resumed, turn2)
    common = common_prefix_len(held, ids2)
    assert common > len(ids2) // 2
    assert stats.loaded_tokens == stats.reused_tokens == common
    assert stats.prefilled_tokens == len(ids2) - common
    assert tokens == _oracle(engine, ids2, GREEDY.max_tokens, kv_bits)[: len(tokens)]
    assert _saved_tokens(saved.path("chat-1"))[: len(ids2)] == ids2  # the file moved on


def test_quantized_cache_with_prompt_lookup_is_lossless(engine):
    echo = [{"role": "user", "content": "Repeat exactly: one two three four five six seven "
             "eight nine ten, one two three four five six seven eight nine ten."}]
    ids = template.encode(engine.tokenizer, echo)
    for bits in (8, 4):
        session = engine.session(lookup=LookupOptions(num_draft_tokens=4), kv_bits=bits)
        _, tokens, stats = _reply(session, echo, SamplingOptions(temperature=0.0, max_tokens=24))
        assert tokens == _oracle(engine, ids, 24, bits)[: len(tokens)]
        assert stats.generation_tokens == len(tokens)


def test_content_addressed_lookup_finds_the_longest_prefix(engine, saved):
    first = engine.session()
    first.keep_cache(saved)
    text, _, _ = _reply(first, CHAT)
    (path,) = saved.entries()
    assert path.name.startswith("gen-")
    second = engine.session()
    second.keep_cache(saved)
    _, _, stats = _reply(second, _turn2(text))
    assert stats.loaded_tokens > 0
    (after,) = saved.entries()  # the longer cache replaced the one it grew from
    assert after != path and not path.exists()


def test_cache_of_another_model_is_rejected(engine, saved, model_copy):
    first = engine.session()
    first.keep_cache(saved, "chat-1")
    _reply(first, CHAT)
    other = Engine.load(str(model_copy))  # same weights, another model directory
    try:
        session = other.session()
        session.keep_cache(saved, "chat-1")
        _, _, stats = _reply(session, CHAT)
    finally:
        other.close()
    assert stats.loaded_tokens == 0 and stats.prefilled_tokens == stats.prompt_tokens
    assert any("model" in reason for _, reason in saved.rejected)
    assert _meta(saved.path("chat-1"))["0.model"] == str(model_copy.resolve())  # replaced


def _meta(path):
    from zephyr_local.safetensors_header import read_header_and_metadata

    return read_header_and_metadata(path)[1]


def test_fingerprint_changes_with_the_weights_and_the_adapter(model_copy, tmp_path):
    before = kv_store.model_fingerprint(model_copy)
    shard = next(model_copy.glob("*.safetensors"))
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert kv_store.model_fingerprint(model_copy) != before
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapters.safetensors").write_bytes(b"a")
    one = kv_store.adapter_fingerprint(adapter)
    (adapter / "adapters.safetensors").write_bytes(b"b")
    assert kv_store.adapter_fingerprint(adapter) != one != ""


def test_edited_history_reuses_only_what_is_unchanged(engine, saved):
    first = engine.session()
    first.keep_cache(saved, "chat-1")
    _reply(first, CHAT)
    held = _saved_tokens(saved.path("chat-1"))
    edited = [CHAT[0], {"role": "user", "content": "Tell me about the desert instead."}]
    ids = template.encode(engine.tokenizer, edited)
    session = engine.session()
    session.keep_cache(saved, "chat-1")
    _, tokens, stats = _reply(session, edited)
    common = common_prefix_len(held, ids)
    assert 0 < common < len(template.encode(engine.tokenizer, CHAT))
    assert stats.loaded_tokens == common and stats.prefilled_tokens == len(ids) - common
    assert tokens == _oracle(engine, ids, GREEDY.max_tokens)[: len(tokens)]


def test_changed_template_rejects_the_cache(engine, saved, monkeypatch):
    first = engine.session()
    first.keep_cache(saved, "chat-1")
    _reply(first, CHAT)
    old = _meta(saved.path("chat-1"))["0.template"]
    monkeypatch.setattr(template, "GENERATION_PROMPT", "<|assistant|>\n\n")
    monkeypatch.setattr(engine, "_identities", {})
    session = engine.session()
    session.keep_cache(saved, "chat-1")
    _, tokens, stats = _reply(session, CHAT)
    assert stats.loaded_tokens == 0 and stats.prefilled_tokens == stats.prompt_tokens
    assert any("template" in reason for _, reason in saved.rejected)
    assert _meta(saved.path("chat-1"))["0.template"] != old
    ids = template.encode(engine.tokenizer, CHAT)
    assert tokens == _oracle(engine, ids, GREEDY.max_tokens)[: len(tokens)]


def _rewrite(path, change):
    """Save the file again with `change(arrays, metadata)` applied (a crafted cache)."""
    import mlx.core as mx

    arrays, meta = mx.load(str(path), return_metadata=True)
    change(arrays, meta)
    mx.save_safetensors(str(path), arrays, meta)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _garbage(path):
    path.write_bytes(b"\x00" * 64)


def _more_tokens(arrays, meta):
    meta["0.tokens"] = json.dumps(json.loads(meta["0.tokens"]) + [5, 6])


def _foreign_class(arrays, meta):
    meta["1.0"] = "RotatingKVCache"


def _wrong_shape(arrays, meta):
    arrays["0.0"] = arrays["0.0"][..., :-1, :]


CORRUPTIONS = {"truncated": _truncate, "garbage": _garbage,
               "tokens and tensors disagree": lambda p: _rewrite(p, _more_tokens),
               "another cache class": lambda p: _rewrite(p, _foreign_class),
               "a tensor of the wrong shape": lambda p: _rewrite(p, _wrong_shape)}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_cache_is_ignored_and_replaced(engine, saved, corrupt):
    first = engine.session()
    first.keep_cache(saved, "chat-1")
    text, _, _ = _reply(first, CHAT)
    path = saved.path("chat-1")
    corrupt(path)
    session = engine.session()
    session.keep_cache(saved, "chat-1")
    ids = template.encode(engine.tokenizer, _turn2(text))
    _, tokens, stats = _reply(session, _turn2(text))
    assert stats.loaded_tokens == 0 and stats.prefilled_tokens == len(ids)
    assert saved.rejected, "the file was looked at and refused"
    assert tokens == _oracle(engine, ids, GREEDY.max_tokens)[: len(tokens)]
    assert _saved_tokens(path)[: len(ids)] == ids  # a good cache took its place


def test_the_cap_evicts_the_least_recently_used(engine, tmp_path):
    probe = KVStore(tmp_path / "probe", kv_store.max_bytes(1.0))
    session = engine.session()
    session.keep_cache(probe, "x")
    _reply(session, CHAT)
    size = probe.path("x").stat().st_size
    saved = KVStore(tmp_path / "kv", int(size * 2.5))  # room for two files of this size
    for i, name in enumerate(("a", "b")):
        s = engine.session()
        s.keep_cache(saved, name)
        _reply(s, CHAT)
        os.utime(saved.path(name), (1000 + i, 1000 + i))  # a is older than b
    reopened = engine.session()
    reopened.keep_cache(saved, "a")
    _, _, stats = _reply(reopened, CHAT)  # loading a makes it the most recently used
    assert stats.loaded_tokens > 0
    c = engine.session()
    c.keep_cache(saved, "c")
    _reply(c, CHAT)
    assert sorted(p.stem for p in saved.entries()) == ["a", "c"]
    assert saved.total_bytes() <= saved.max_bytes


def test_a_cap_smaller_than_one_cache_keeps_nothing(engine, tmp_path):
    saved = KVStore(tmp_path / "kv", 1000)
    session = engine.session()
    session.keep_cache(saved, "a")
    _, _, stats = _reply(session, CHAT)
    assert stats.generation_tokens > 0 and saved.entries() == []


def test_cap_from_flag_env_and_default(monkeypatch):
    monkeypatch.delenv(kv_store.MAX_GB_ENV, raising=False)
    assert kv_store.max_bytes() == int(kv_store.DEFAULT_MAX_GB * 1e9)
    monkeypatch.setenv(kv_store.MAX_GB_ENV, "0.5")
    assert kv_store.max_bytes() == 500_000_000
    assert kv_store.max_bytes(2) == 2_000_000_000
    monkeypatch.setenv(kv_store.MAX_GB_ENV, "lots")
    with pytest.raises(ZephyrError, match=kv_store.MAX_GB_ENV):
        kv_store.max_bytes()
    with pytest.raises(ZephyrError, match=">= 0"):
        kv_store.max_bytes(-1)


def test_kv_bits_are_checked(engine):
    with pytest.raises(ZephyrError, match="4 or 8"):
        engine.session(kv_bits=3)
    assert kv_store.group_size_for({"head_dim": 128}, 8) == 64
    assert kv_store.group_size_for({"head_dim": 32}, 4) == 32
    with pytest.raises(ZephyrError, match="divisible"):
        kv_store.group_size_for({"head_dim": 24}, 4)


def test_quantized_cache_barely_moves_the_next_token_distribution(engine):
    from zephyr_local.bench.kv_resume import long_conversation, next_token_kl

    ids = template.encode(engine.tokenizer, long_conversation(engine.tokenizer, 600))
    kl = next_token_kl(engine, ids, (8, 4), positions=32)
    kl8, kl4 = kl[8], kl[4]
    assert 0 < kl8["mean_kl"] < 1e-3 and kl8["top1_agreement"] >= 0.9
    assert kl8["mean_kl"] < kl4["mean_kl"] < 0.1
