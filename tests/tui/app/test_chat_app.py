"""The whole chat app, driven by Textual's Pilot on the tiny test model."""

from __future__ import annotations

import json

import pytest
from tui_helpers import (
    GREEDY,
    SIZE,
    edit_message,
    make_app,
    reference_reply,
    roles,
    stored,
    type_and_send,
    wait_until,
)

from zephyr_local.cli import read_messages
from zephyr_local.engine import Response
from zephyr_local.history import History, StoredMessage
from zephyr_local.sampling import SamplingOptions
from zephyr_local.template import encode, fit_to_budget
from zephyr_local.tui.app import ChatApp
from zephyr_local.tui.config import ChatConfig
from zephyr_local.tui.generation import (
    clean_for_display,
)
from zephyr_local.tui.missing_screen import ModelMissingScreen
from zephyr_local.tui.sampling_screen import SamplingScreen
from zephyr_local.tui.text_screen import TextEditScreen
from zephyr_local.tui.widgets.prompt import PromptInput
from zephyr_local.tui.widgets.sidebar import ConversationItem, HistorySidebar


@pytest.mark.asyncio
async def test_send_streams_the_engines_reply_and_commits_it(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "Hello there")
        assert roles(app) == ["user", "assistant"]
        reply = app.views()[1]
        expected = reference_reply(engine, [{"role": "user", "content": "Hello there"}])
        assert reply.content == expected and reply.finish_reason == "length"
        assert reply.markdown.source == clean_for_display(expected)
        assert app.query_one(PromptInput).text == ""
        stats = app.last_final.stats
        assert stats.generation_tokens == GREEDY.max_tokens
        status = str(app.query_one("#status").render())
        assert f"prefilled {stats.prefilled_tokens} tok" in status and "cpu" in status
        used = stats.prompt_tokens + stats.generation_tokens
        assert f"{used}/{engine.context_window}" in status
        rows = stored(tmp_path, app.chat_history.conversation_id)
        assert [(m.role, m.content, m.finish_reason) for m in rows] == [
            ("user", "Hello there", None), ("assistant", expected, "length")]
        assert rows[1].stats["generation_tokens"] == GREEDY.max_tokens


@pytest.mark.asyncio
async def test_keys_typed_just_before_enter_are_sent(engine, tmp_path):
    """A paste or `tmux send-keys "text" Enter`: the keys arrive together, Enter last."""
    from textual import events

    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        prompt = app.query_one(PromptInput)
        prompt.focus()
        await pilot.pause()
        for ch in "Hi there":  # queued at once, as a terminal delivers them
            app.post_message(events.Key(ch, ch))
        app.post_message(events.Key("enter", "\r"))
        # The input is cleared once the reply has started; wait for that too.
        await wait_until(pilot, lambda: len(app.views()) == 2 and not app.generating
                         and prompt.text == "")
        assert app.views()[0].role == "user"
        assert stored(tmp_path, app.chat_history.conversation_id)[0].content == "Hi there"


@pytest.mark.asyncio
async def test_escape_stops_and_the_conversation_goes_on(engine, tmp_path):
    app = make_app(engine, tmp_path, options=SamplingOptions(temperature=0, max_tokens=3000))
    async with app.run_test(size=SIZE) as pilot:
        app.query_one(PromptInput).text = "Write a long story"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.generating and app.views()[-1].markdown.source)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.generating)
        reply = app.views()[1]
        assert reply.finish_reason == "cancelled" and reply.has_class("stopped")
        assert "stopped" in str(reply.query_one(".header").render())
        assert 0 < app.last_final.stats.generation_tokens < 3000
        assert stored(tmp_path, app.chat_history.conversation_id)[1].finish_reason == "cancelled"
        app.chat_history.options = GREEDY
        await type_and_send(pilot, "Go on")
        assert roles(app) == ["user", "assistant", "user", "assistant"]
        assert app.views()[-1].finish_reason == "length"


@pytest.mark.asyncio
async def test_follow_up_regenerate_and_edit_reuse_the_cache(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "First question")
        first = app.last_final.stats
        await type_and_send(pilot, "Second question")
        second = app.last_final.stats
        # The follow-up did not prefill the first turn again.
        assert second.prefilled_tokens < second.prompt_tokens - first.prompt_tokens
        old_reply = app.views()[-1].content

        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not app.generating)
        regen = app.last_final.stats
        assert roles(app) == ["user", "assistant"] * 2
        assert app.views()[-1].content == old_reply  # greedy: the same reply again
        assert regen.prefilled_tokens == 1  # the whole prompt came from the cache

        await edit_message(pilot, 0, "First question, edited")
        await wait_until(pilot, lambda: len(app.views()) == 2 and not app.generating)
        edited = app.last_final.stats
        messages = [{"role": "user", "content": "First question, edited"}]
        assert edited.prompt_tokens == len(encode(engine.tokenizer, messages))
        assert 0 < edited.prefilled_tokens < edited.prompt_tokens  # the shared prefix was kept
        rows = stored(tmp_path, app.chat_history.conversation_id)
        assert [m.content for m in rows] == ["First question, edited",
                                             reference_reply(engine, messages)]


@pytest.mark.asyncio
async def test_turns_that_outgrow_the_budget_are_shown_as_dropped(engine, tmp_path):
    budget = 90
    app = make_app(engine, tmp_path, context_budget=budget)
    async with app.run_test(size=SIZE) as pilot:
        for text in ("one two three four five", "six seven eight nine", "ten eleven twelve"):
            await type_and_send(pilot, text)
        stats = app.last_final.stats
        sent = [{"role": v.role, "content": v.content} for v in app.views()[:-1]]
        fitted = fit_to_budget(engine.tokenizer, sent, budget, min(GREEDY.max_tokens, budget // 2))
        assert stats.dropped_turns == fitted.dropped_turns > 0
        dropped = [v for v in app.views() if v.has_class("dropped")]
        assert dropped == app.views()[:fitted.dropped_messages]
        assert "dropped from the context" in str(dropped[0].query_one(".header").render())


@pytest.mark.asyncio
async def test_new_chat_and_system_prompt(engine, hf_tokenizer, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "One")
        first_id = app.chat_history.conversation_id
        await pilot.press("ctrl+n")
        assert app.views() == [] and app.chat_history.conversation_id is None
        await type_and_send(pilot, "/system Answer like a pirate.")
        assert app.chat_history.system_prompt == "Answer like a pirate." and app.views() == []
        await type_and_send(pilot, "Two")
        messages = [{"role": "system", "content": "Answer like a pirate."},
                    {"role": "user", "content": "Two"}]
        # HF's template emits no BOS; encoding the rendered text adds it, as at training.
        rendered = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    tokenize=False)
        oracle = hf_tokenizer(rendered)["input_ids"]
        assert app.last_final.stats.prompt_tokens == len(oracle)
        assert app.chat_history.conversation_id != first_id
        # F2 opens the editor for the same prompt.
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, TextEditScreen))
        app.screen.query_one("TextArea").text = "Be brief."
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.chat_history.system_prompt == "Be brief.")
    history = History(tmp_path / "history.sqlite")
    assert [c.system_prompt for c in history.list()] == ["Be brief.", None]
    history.close()


@pytest.mark.asyncio
async def test_restart_resumes_from_history_sidebar(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "Remember the llamas")
        contents = [v.content for v in app.views()]
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        assert app.views() == []
        await pilot.press("ctrl+b")
        sidebar = app.query_one(HistorySidebar)
        await wait_until(pilot, lambda: len(sidebar.list_view.children) == 1)
        assert sidebar.query_one(ConversationItem).title == "Remember the llamas"
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.views()) == 2)
        assert [v.content for v in app.views()] == contents
        await type_and_send(pilot, "And then?")
        assert len(stored(tmp_path, app.chat_history.conversation_id)) == 4
        # Search, rename, delete from the sidebar.
        sidebar.query_one("#history-search").value = "no such text"
        await wait_until(pilot, lambda: len(sidebar.list_view.children) == 0)
        sidebar.query_one("#history-search").value = "llamas"
        await wait_until(pilot, lambda: len(sidebar.list_view.children) == 1)
        sidebar.list_view.focus()
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, TextEditScreen))
        app.screen.query_one("TextArea").text = "Llama talk"
        await pilot.press("ctrl+s")
        chat = app.chat_history
        await wait_until(pilot, lambda: chat.db.get(chat.conversation_id).title == "Llama talk")
        await pilot.press("d")
        await wait_until(pilot, lambda: app.chat_history.db.list() == [])
        assert app.views() == [] and app.chat_history.conversation_id is None


@pytest.mark.asyncio
async def test_export_writes_markdown_and_json_that_generate_reads(engine, tmp_path, run_cli):
    app = make_app(engine, tmp_path, system_prompt="Be kind.")
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "Hi")
        reply = app.views()[1].content
        await type_and_send(pilot, f"/export {tmp_path / 'chat.json'}")
        await type_and_send(pilot, f"/export {tmp_path / 'chat.md'}")
    expected = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": reply}]
    assert read_messages(str(tmp_path / "chat.json")) == expected
    assert json.loads((tmp_path / "chat.json").read_text())["messages"] == expected
    result = run_cli("tokenize", "-m", "zephyr-test", "--messages", str(tmp_path / "chat.json"))
    assert result.exit_code == 0, result.output
    md = (tmp_path / "chat.md").read_text()
    assert "**User:**\n\nHi" in md and "**System:**\n\nBe kind." in md


@pytest.mark.asyncio
async def test_copy_message_and_code_block(engine, tmp_path):
    history = History(tmp_path / "history.sqlite")
    cid = history.create()
    history.append(cid, StoredMessage("user", "Show code"))
    history.append(cid, StoredMessage("assistant", "Here:\n```python\nprint('hi')\n```\n", "stop"))
    history.close()
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await app.open_conversation(cid)
        app.views()[1].focus()
        await pilot.press("b")
        assert app.clipboard == "print('hi')\n"
        await pilot.press("c")
        assert app.clipboard == "Here:\n```python\nprint('hi')\n```\n"


@pytest.mark.asyncio
async def test_sampling_modal_validates_and_saves_per_conversation(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "Hi")
        await pilot.press("f3")
        await wait_until(pilot, lambda: isinstance(app.screen, SamplingScreen))
        app.screen.query_one("#field-top_p").value = "2"
        await pilot.press("ctrl+s")
        assert "top_p must be in (0, 1]" in str(app.screen.query_one("#sampling-error").render())
        app.screen.query_one("#field-top_p").value = "0.5"
        app.screen.query_one("#field-seed").value = "7"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: not isinstance(app.screen, SamplingScreen))
        options = app.chat_history.options
        assert (options.top_p, options.seed, options.max_tokens) == (0.5, 7, 8)
        conv = app.chat_history.db.get(app.chat_history.conversation_id)
        assert conv.sampling["top_p"] == 0.5 and conv.sampling["seed"] == 7


@pytest.mark.asyncio
async def test_input_history_recall_and_palette_entries(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "first line")
        await type_and_send(pilot, "/help")
        await pilot.press("escape")
        prompt = app.query_one(PromptInput)
        prompt.focus()
        await pilot.press("up")
        assert prompt.text == "/help"
        await pilot.press("up")
        assert prompt.text == "first line"
        await pilot.press("down", "down")
        assert prompt.text == ""
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"New chat", "Regenerate reply", "Edit system prompt", "Export conversation",
                "Sampling settings", "Copy last code block", "Help"} <= titles


@pytest.mark.asyncio
async def test_model_missing_screen_and_history_still_opens(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEPHYR_LOCAL_HOME", str(tmp_path))
    history = History(tmp_path / "history.sqlite")
    history.append(history.create(), StoredMessage("user", "old chat"))
    history.close()
    app = ChatApp(ChatConfig(model="zephyr-7b-beta-4bit", models_dir=str(tmp_path / "models"),
                             history_path=tmp_path / "history.sqlite"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ModelMissingScreen)
                         and app.screen.query("#missing-message"))
        text = str(app.screen.query_one("#missing-message").render())
        assert "not found" in text and "zephyr-local pull" in text
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ModelMissingScreen))
        app.query_one(PromptInput).text = "hello"
        await pilot.press("enter")
        assert app.views() == [] and app.query_one(PromptInput).text == "hello"
        await pilot.press("ctrl+b")
        sidebar = app.query_one(HistorySidebar)
        await wait_until(pilot, lambda: len(sidebar.list_view.children) == 1)
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.views()) == 1)
        assert app.views()[0].content == "old chat"


@pytest.mark.asyncio
async def test_missing_default_model_offers_pull_and_exits_for_it(tmp_path):
    app = ChatApp(ChatConfig(models_dir=str(tmp_path / "models"),
                             history_path=tmp_path / "history.sqlite"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ModelMissingScreen)
                         and app.screen.query("#close"))
        await pilot.click("#pull")
        await wait_until(pilot, lambda: app.return_value == "pull")
    other = ChatApp(ChatConfig(model="my-model", models_dir=str(tmp_path / "models"),
                               history_path=tmp_path / "history.sqlite"))
    async with other.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(other.screen, ModelMissingScreen)
                         and other.screen.query("#close"))
        assert not other.screen.query("#pull")  # only the default model can be fetched


@pytest.mark.asyncio
async def test_generation_error_restores_input_and_keeps_conversation(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "Fine")
        notes = []
        app.notify = lambda message, **kw: notes.append(message)
        huge = "lorem ipsum dolor " * 6000  # a 100 KB paste: far past the context budget
        await type_and_send(pilot, huge)
        assert roles(app) == ["user", "assistant"]
        assert app.query_one(PromptInput).text == huge
        assert any("Generation failed" in n and "context budget" in n for n in notes)
        assert len(stored(tmp_path, app.chat_history.conversation_id)) == 2


@pytest.mark.asyncio
async def test_escape_sequences_in_model_output_do_not_reach_the_screen(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        nasty = ["Hi \x1b[2J", "\x1b]0;pw", "ned\x07there\x00\x1b[3", "1m!\x1b"]

        def fake_reply(messages, options):
            yield from (Response(t, 0) for t in nasty)
            yield Response("", None, "stop", None)

        app.session.reply = fake_reply
        await type_and_send(pilot, "Hello")
        reply = app.views()[1]
        assert reply.markdown.source == "Hi there!"
        assert reply.content == "".join(nasty)  # stored as the model wrote it


@pytest.mark.asyncio
async def test_unknown_slash_command_and_empty_message(engine, tmp_path):
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        notes = []
        app.notify = lambda message, **kw: notes.append(message)
        await type_and_send(pilot, "/frobnicate")
        await type_and_send(pilot, "   \n ")
        assert app.views() == [] and app.query_one(PromptInput).text == "   \n "
        assert "unknown command /frobnicate" in notes[0] and "/regen" in notes[0]
        assert notes[1] == "The message is empty."
