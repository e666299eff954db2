"""A conversation reopened after a restart of the chat resumes from its saved KV cache,
and `generate --messages` with the same history resumes from it too."""

from __future__ import annotations

import json

import pytest
from tui_helpers import GREEDY, SIZE, make_app, type_and_send, wait_until

from zephyr_local import kv_store
from zephyr_local.engine import common_prefix_len
from zephyr_local.history import History
from zephyr_local.safetensors_header import read_header_and_metadata
from zephyr_local.template import encode
from zephyr_local.tui.widgets.sidebar import HistorySidebar

FIRST = "Tell me about the sea, the sky and the long river."


@pytest.fixture(autouse=True)
def saved_caches_on(monkeypatch):
    monkeypatch.delenv(kv_store.MAX_GB_ENV, raising=False)


def _held(path):
    return json.loads(read_header_and_metadata(path)[1]["0.tokens"])


def _oracle_text(engine, ids, max_tokens):
    """mlx-lm's plain greedy stream_generate on the whole prompt: no cache at all."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    def run():
        eos, parts = set(engine.tokenizer.eos_token_ids), []
        for r in stream_generate(engine.loaded.model, engine.tokenizer, mx.array(ids),
                                 max_tokens=max_tokens):
            if r.token in eos:
                break
            parts.append(r.text)
        return "".join(parts)

    return engine.worker.call(run)


async def _reopen_and_send(pilot, text):
    app = pilot.app
    await pilot.press("ctrl+b")
    sidebar = app.query_one(HistorySidebar)
    await wait_until(pilot, lambda: len(sidebar.list_view.children) == 1)
    await pilot.press("enter")
    await wait_until(pilot, lambda: len(app.views()) == 2)
    await type_and_send(pilot, text)


@pytest.mark.asyncio
async def test_restarted_chat_prefills_only_the_new_message(engine, tmp_path, monkeypatch,
                                                            run_cli):
    monkeypatch.setenv("ZEPHYR_LOCAL_HOME", str(tmp_path))  # generate's default history
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, FIRST)
        cid = app.chat_history.conversation_id
        assert app.last_final.stats.loaded_tokens == 0
    path = tmp_path / kv_store.DIR_NAME / f"history-{cid}.safetensors"
    held = _held(path)

    app = make_app(engine, tmp_path)  # a restart: a new session, nothing in memory
    async with app.run_test(size=SIZE) as pilot:
        await _reopen_and_send(pilot, "And the mountains?")
        stats = app.last_final.stats
        assert f"resumed {stats.loaded_tokens} tok" in str(app.query_one("#status").render())
    db = History(tmp_path / "history.sqlite")
    messages = [m.as_chat() for m in db.messages(cid)]
    db.close()
    ids = encode(engine.tokenizer, messages[:3])
    common = common_prefix_len(held, ids)
    assert common >= len(encode(engine.tokenizer, messages[:1]))
    assert stats.loaded_tokens == stats.reused_tokens == common
    assert stats.prefilled_tokens == len(ids) - common
    assert messages[3]["content"] == _oracle_text(engine, ids, GREEDY.max_tokens)

    # The same history through `generate --messages`: it finds the chat's saved cache.
    longer = messages + [{"role": "user", "content": "And the forests?"}]
    (tmp_path / "chat.json").write_text(json.dumps({"messages": longer}))
    r = run_cli("generate", "-m", "zephyr-test", "--temp", "0", "--max-tokens", "8",
                "--messages", str(tmp_path / "chat.json"), "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.splitlines()[-1])
    ids = encode(engine.tokenizer, longer)
    common = common_prefix_len(_held(path), ids)
    assert common >= len(encode(engine.tokenizer, messages[:3]))  # the reopened prompt
    assert record["loaded_tokens"] == common
    assert record["prefilled_tokens"] == len(ids) - common
    assert record["text"] == _oracle_text(engine, ids, 8)


@pytest.mark.asyncio
async def test_deleting_a_conversation_deletes_its_saved_cache(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, FIRST)
        cid = app.chat_history.conversation_id
        path = tmp_path / kv_store.DIR_NAME / f"history-{cid}.safetensors"
        assert path.exists()
        app.chat_history.delete(cid)
        assert not path.exists()
