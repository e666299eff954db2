"""Attached documents in the chat app, driven by Textual's Pilot on the tiny test model."""

from __future__ import annotations

import sqlite3

import pytest
from test_documents import independent_ranking, long_markdown
from tui_helpers import GREEDY, SIZE, make_app, type_and_send, wait_until

from zephyr_local import documents, retrieval
from zephyr_local.history import History, StoredMessage
from zephyr_local.tui.widgets.chips import DocumentChips
from zephyr_local.tui.widgets.prompt import PromptInput


async def slash(pilot, text: str) -> None:
    pilot.app.query_one(PromptInput).text = text
    await pilot.press("enter")
    await pilot.pause()


def chip_texts(app) -> list[str]:
    return [str(label.render()) for label in app.query_one(DocumentChips).query(".chip")]


def notes_of(app) -> list[str]:
    notes: list[str] = []
    app.notify = lambda message, **kw: notes.append(str(message))
    return notes


@pytest.mark.asyncio
async def test_a_fitting_document_is_quoted_whole_in_the_prompt(engine, hf_tokenizer, tmp_path):
    doc = tmp_path / "notes.md"
    doc.write_text("# Notes\n\nThe secret word is pelican.\n")
    app = make_app(engine, tmp_path, system_prompt="Answer from the notes.")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await slash(pilot, f"/attach {doc}")
        tokens = len(hf_tokenizer.encode(doc.read_text(), add_special_tokens=False))
        assert chip_texts(app) == [f"📄 notes.md · {tokens} tok"]
        await type_and_send(pilot, "What is the secret word?")
        plan = app.documents.last_plan
        assert plan.mode == "whole"
        quoted = ("Attached documents, quoted in full:\n\n<document name=\"notes.md\">\n"
                  "# Notes\n\nThe secret word is pelican.\n</document>")
        expected = [{"role": "system", "content": "Answer from the notes."},
                    {"role": "user", "content": quoted},
                    {"role": "user", "content": "What is the secret word?"}]
        text = hf_tokenizer.apply_chat_template(expected, tokenize=False,
                                                add_generation_prompt=True)
        assert plan.ids == hf_tokenizer(text)["input_ids"]
        assert app.last_final.stats.prompt_tokens == len(plan.ids)  # what the engine was given
        # The gauge counts the documents: the prompt and the reply.
        used, _ = app.query_one("#status").context
        assert used == len(plan.ids) + app.last_final.stats.generation_tokens


@pytest.mark.asyncio
async def test_documents_too_big_are_retrieved_by_bm25_within_the_budget(engine, tmp_path):
    big = tmp_path / "manual.md"
    big.write_text(long_markdown(sections=20))
    budget = 1024
    app = make_app(engine, tmp_path, context_budget=budget)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await slash(pilot, f"/attach {big}")
        question = "Which facts mention whiskey and xray?"
        await type_and_send(pilot, question)
        plan = app.documents.last_plan
        assert plan.mode == "passages" and plan.used
        assert len(plan.ids) + min(GREEDY.max_tokens, budget // 2) <= budget
        passages = _stored_passages(tmp_path, app.chat_history.conversation_id)
        order = independent_ranking([p[2] for p in passages], question)
        best = [(passages[i][0], passages[i][1]) for i in order][:len(plan.used)]
        assert [(u.start_line, u.end_line) for u in plan.used] == best
        reply = app.views()[-1]
        line = str(reply.query_one(".sources").render())
        assert line == "Passages used: " + ", ".join(f"manual.md:{a}-{b}" for a, b in best)
        assert "quoted whole" not in " ".join(
            str(c.render()) for c in app.query_one(DocumentChips).query(".chip-note"))


def _stored_passages(tmp_path, conversation_id):
    history = History(tmp_path / "history.sqlite")
    try:
        return history.connection().execute(
            "SELECT p.start_line, p.end_line, p.text FROM passages p JOIN documents d"
            " ON d.id = p.document_id WHERE d.conversation_id = ? ORDER BY p.id",
            (conversation_id,)).fetchall()
    finally:
        history.close()


@pytest.mark.asyncio
async def test_a_reopened_conversation_keeps_its_documents(engine, tmp_path):
    doc = tmp_path / "a.txt"
    doc.write_text("Llamas hum when they are content.\n")
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await slash(pilot, f"/attach {doc}")
        await type_and_send(pilot, "What do llamas do?")
        cid, first_ids = app.chat_history.conversation_id, app.documents.last_plan.ids
    doc.write_text("Llamas spit when they are annoyed.\n")  # changed while the chat was closed
    again = make_app(engine, tmp_path)
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await again.open_conversation(cid)
        await pilot.pause()
        kept = [d.document.text for d in again.documents.attached]
        assert kept == ["Llamas hum when they are content.\n"]
        assert chip_texts(again)[0].startswith("📄 a.txt · ")
        notes = notes_of(again)
        await type_and_send(pilot, "And now?")
        assert any("a.txt changed on disk: read again" in n for n in notes)
        assert "Llamas spit" in again.documents.last_plan.messages[0]["content"]
        assert again.documents.last_plan.ids[:5] == first_ids[:5]
        await slash(pilot, "/detach")
        assert again.documents.attached == [] and again.query_one(DocumentChips).has_class("hidden")


@pytest.mark.asyncio
async def test_binary_files_are_refused_and_nothing_is_attached(engine, tmp_path):
    blob = tmp_path / "image.png"
    blob.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        notes = notes_of(app)
        await slash(pilot, f"/attach {blob}")
        assert any("image.png: a binary file" in n for n in notes)
        assert app.documents.attached == [] and app.query_one(DocumentChips).has_class("hidden")
        db = app.chat_history.db.connection()
        count = db.execute("SELECT count(*) FROM documents").fetchone()[0]
        assert count == 0


@pytest.mark.asyncio
async def test_attach_dialog_completes_the_path(engine, tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "report-2026.md").write_text("Revenue rose.\n")
    monkeypatch.chdir(tmp_path)
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+o")
        await pilot.pause()
        for key in ("d", "o", "tab", "r", "tab", "enter"):
            await pilot.press(key)
            await pilot.pause()
        await wait_until(pilot, lambda: bool(app.documents.attached))
        assert app.documents.attached[0].document.path == str(tmp_path / "docs" / "report-2026.md")
        assert chip_texts(app)[0].startswith("📄 report-2026.md · ")
        prompt = app.query_one(PromptInput)  # Tab completes after /attach in the input too
        prompt.focus()
        prompt.text = "/attach do"
        await pilot.press("tab")
        assert prompt.text == "/attach docs/" and app.focused is prompt
        prompt.text = "plain text"
        await pilot.press("tab")  # elsewhere Tab still moves the focus
        assert app.focused is not prompt


def test_snapshot_documents_and_versions(snap_compare, engine, tmp_path):
    manual = tmp_path / "manual.md"
    manual.write_text(long_markdown(sections=20))
    history = History(tmp_path / "history.sqlite")
    cid = history.create()
    doc = documents.read(manual, engine.tokenizer)
    retrieval.add(history.connection(), cid, doc, documents.split(doc.text, engine.tokenizer))
    question = history.append(cid, StoredMessage("user", "What does section 17 say about xray?"))
    history.append(cid, StoredMessage("assistant", "It does not say.", "stop"))
    history.set_leaf(cid, question)
    sources = [{"file": "manual.md", "start_line": 171, "end_line": 175}]
    history.append(cid, StoredMessage("assistant", "Section 17 tells of **xray** facts "
                                      "(number 1702).", "stop", sources=sources))
    history.close()

    async def resume(pilot):
        pilot.app.query_one(PromptInput).cursor_blink = False  # the cursor is always drawn
        await pilot.app.open_conversation(cid)
        await pilot.pause()

    app = make_app(engine, tmp_path, context_budget=2048)
    assert snap_compare(app, terminal_size=SIZE, run_before=resume)


@pytest.mark.asyncio
async def test_documents_stay_usable_when_the_database_refuses_them(engine, tmp_path,
                                                                      monkeypatch):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("Llamas hum.\n")
    second.write_text("Alpacas spit.\n")
    app = make_app(engine, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await slash(pilot, f"/attach {first}")
        real_add = retrieval.add

        def locked(db, *args):
            if db is app.chat_history.db.connection():
                raise sqlite3.OperationalError("database is locked")
            return real_add(db, *args)

        monkeypatch.setattr(retrieval, "add", locked)
        notes = notes_of(app)
        await slash(pilot, f"/attach {second}")
        assert any("kept for this session only" in n for n in notes)
        assert [d.document.name for d in app.documents.attached] == ["a.txt", "b.txt"]
        await type_and_send(pilot, "Who spits?")
        quoted = app.documents.last_plan.messages[0]["content"]
        assert "Llamas hum." in quoted and "Alpacas spit." in quoted
