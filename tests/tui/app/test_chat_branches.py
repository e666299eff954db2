"""Versions of messages in the chat app: edit and regenerate add branches, [ / ] switch."""

from __future__ import annotations

import json

import pytest
from tui_helpers import (
    GREEDY,
    SIZE,
    edit_message,
    make_app,
    reference_reply,
    type_and_send,
    wait_until,
)

from zephyr_local.engine import common_prefix_len
from zephyr_local.history import History
from zephyr_local.sampling import SamplingOptions
from zephyr_local.template import encode
from zephyr_local.tui.confirm_screen import ConfirmScreen
from zephyr_local.tui.widgets.prompt import PromptInput

SHORT = SamplingOptions(temperature=0.0, max_tokens=4)


def shown(app) -> list[tuple]:
    return [(v.role, v.content, v.finish_reason) for v in app.views()]


def header(view) -> str:
    return str(view.query_one(".header").render())


def greedy_tokens(engine, messages, options) -> list[int]:
    """The tokens a fresh session samples: what the KV cache holds after that reply."""
    return [r.token for r in engine.session().reply(messages, options) if r.token is not None]


@pytest.mark.asyncio
async def test_regenerate_adds_a_version_and_switching_reuses_the_shared_prefix(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "Hello there")
        first = shown(app)
        app.chat_history.options = SHORT  # the new version is a shorter reply
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not app.generating)
        reply = app.views()[-1]
        user = [{"role": "user", "content": "Hello there"}]
        assert reply.content == reference_reply(engine, user, SHORT) != first[1][1]
        assert "2/2" in header(reply)
        reply.focus()
        await pilot.press("left_square_bracket")
        await pilot.pause()
        assert shown(app) == first  # the earlier reply, exactly
        assert "1/2" in header(app.views()[-1])

        # The cache still holds the short version: the next prompt shares the user
        # turn and the reply's common start with it, and only the rest is prefilled.
        cached = encode(engine.tokenizer, user) + greedy_tokens(engine, user, SHORT)
        app.chat_history.options = GREEDY
        app.query_one(PromptInput).focus()
        await type_and_send(pilot, "Go on")
        prompt = encode(engine.tokenizer, [*user, {"role": "assistant", "content": first[1][1]},
                                          {"role": "user", "content": "Go on"}])
        stats = app.last_final.stats
        assert stats.prompt_tokens == len(prompt)
        assert stats.prefilled_tokens == len(prompt) - common_prefix_len(cached, prompt)
        assert stats.prefilled_tokens < len(prompt) - len(encode(engine.tokenizer, user)) + 1
        assert f"prefilled {stats.prefilled_tokens} tok" in str(app.query_one("#status").render())


@pytest.mark.asyncio
async def test_edit_adds_a_version_and_switching_back_restores_the_later_turns(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "First question")
        await type_and_send(pilot, "Second question")
        original = shown(app)
        await edit_message(pilot, 0, "First question, edited")
        await wait_until(pilot, lambda: len(app.views()) == 2 and not app.generating)
        edited = [{"role": "user", "content": "First question, edited"}]
        assert shown(app)[1][1] == reference_reply(engine, edited)
        assert "2/2" in header(app.views()[0])

        app.views()[0].focus()
        await pilot.press("ctrl+left")
        await pilot.pause()
        assert shown(app) == original  # every later turn is back, as it was
        assert "1/2" in header(app.views()[0])
        await pilot.press("ctrl+right")
        await pilot.pause()
        assert shown(app)[0][1] == "First question, edited" and len(app.views()) == 2

        history = History(tmp_path / "history.sqlite")
        try:  # nothing was deleted: the tree holds both branches
            tree = history.tree(app.chat_history.conversation_id)
            assert len(tree) == 6 and len(history.messages(app.chat_history.conversation_id)) == 2
        finally:
            history.close()


@pytest.mark.asyncio
async def test_export_asks_before_overwriting_and_can_write_every_branch(engine, tmp_path):
    target = tmp_path / "chat.json"
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "Hello there")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not app.generating)
        target.write_text("keep me")
        app.query_one(PromptInput).text = f"/export {target} --all-branches"
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause()
        assert target.read_text() == "keep me"
        app.action_export(f"--all-branches {target}")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_until(pilot, lambda: target.read_text() != "keep me")
        data = json.loads(target.read_text())
        assert data["messages"] == [{"role": v.role, "content": v.content} for v in app.views()]
        assert [m["role"] for m in data["tree"]] == ["user", "assistant", "assistant"]
        assert data["tree"][1]["parent_id"] == data["tree"][2]["parent_id"] == data["tree"][0]["id"]
