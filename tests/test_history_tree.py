"""History schema 2: the migration from schema 1, the tree of versions, FTS5 search."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from zephyr_local.history import History, StoredMessage
from zephyr_local.history_schema import SCHEMA_VERSION

# Written by the schema-1 code (History and append as they were before branches).
OLD_DB = Path(__file__).parent / "data" / "history-v1.sqlite"


def _raw(path: Path, query: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def test_migration_keeps_every_message_of_a_schema_1_database(tmp_path):
    path = tmp_path / "history.sqlite"
    shutil.copy(OLD_DB, path)
    assert _raw(path, "PRAGMA user_version") == [(1,)]
    old_conversations = _raw(path, "SELECT id, title, system_prompt, sampling, model, updated_at"
                                   " FROM conversations ORDER BY id")
    old = _raw(path, "SELECT conversation_id, role, content, finish_reason, stats"
                     " FROM messages ORDER BY conversation_id, position")
    assert len(old) == 7
    history = History(path)
    try:
        assert _raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(2,)]
        got = []
        for cid, *_ in old_conversations:
            branch = history.messages(cid)
            # One branch per old conversation: each message the child of the one before.
            assert [m.parent_id for m in branch] == [None] + [m.id for m in branch[:-1]]
            assert all((m.version, m.versions) == (1, 1) for m in branch)
            got += [(cid, m.role, m.content, m.finish_reason, m.stats) for m in branch]
        assert got == [(c, r, t, f, json.loads(s) if s else None) for c, r, t, f, s in old]
        assert [(c.id, c.title, c.system_prompt, c.model) for c in sorted(
            history.list(), key=lambda c: c.id)] == [r[:3] + (r[4],) for r in old_conversations]
        assert [c.id for c in history.list("café")] == [2]  # the FTS index holds old text
        cid = old_conversations[0][0]
        history.append(cid, StoredMessage("user", "A new question"))
        assert history.messages(cid)[-1].parent_id == history.messages(cid)[-2].id
    finally:
        history.close()
    assert _raw(path, "PRAGMA foreign_key_check") == []


def test_a_failed_migration_leaves_schema_1_intact(tmp_path, monkeypatch):
    from zephyr_local import history_schema

    path = tmp_path / "history.sqlite"
    shutil.copy(OLD_DB, path)
    broken = dict(history_schema._STEPS)
    broken[2] = history_schema._STEPS[2] + "\nINSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(history_schema, "_STEPS", broken)
    from zephyr_local.history import HistoryError

    with pytest.raises(HistoryError, match="cannot use the history database"):
        History(path)
    assert _raw(path, "PRAGMA user_version") == [(1,)]
    assert len(_raw(path, "SELECT * FROM messages")) == 7


@pytest.fixture
def history(tmp_path):
    h = History(tmp_path / "history.sqlite")
    yield h
    h.close()


def test_versions_are_siblings_and_switching_follows_the_newest_path(history):
    cid = history.create()
    u1 = history.append(cid, StoredMessage("user", "first"))
    a1 = history.append(cid, StoredMessage("assistant", "reply one", "stop"))
    history.append(cid, StoredMessage("user", "follow-up"))
    history.set_leaf(cid, u1)  # regenerate: a second reply to u1
    a2 = history.append(cid, StoredMessage("assistant", "reply two", "stop"))
    assert [m.content for m in history.messages(cid)] == ["first", "reply two"]
    assert [(m.version, m.versions) for m in history.messages(cid)] == [(1, 1), (2, 2)]
    assert history.switch(cid, a2, 1) is None  # already the last version
    leaf = history.switch(cid, a2, -1)
    assert [m.content for m in history.messages(cid)] == ["first", "reply one", "follow-up"]
    assert history.messages(cid)[1].id == a1 and leaf == history.messages(cid)[-1].id
    history.set_leaf(cid, None)  # edit the first message: a second root
    history.append(cid, StoredMessage("user", "first, edited"))
    assert [(m.content, m.version, m.versions) for m in history.messages(cid)] == [
        ("first, edited", 2, 2)]
    assert len(history.tree(cid)) == 5  # nothing was deleted
    assert [c.id for c in history.list("follow")] == [cid]  # search sees every branch
    data = history.export_json(cid, all_branches=True)
    assert data["messages"] == [{"role": "user", "content": "first, edited"}]
    assert {m["content"] for m in data["tree"]} == {
        "first", "reply one", "follow-up", "reply two", "first, edited"}
    assert data["current_leaf"] == history.messages(cid)[-1].id


def test_search_uses_the_fts_index_and_keeps_substring_semantics(history):
    cid = history.create()
    history.append(cid, StoredMessage("user", "Rust lifetimes are 100% borrowed"))
    plan = " ".join(r[-1] for r in history.connection().execute(
        "EXPLAIN QUERY PLAN SELECT m.conversation_id FROM messages_fts f JOIN messages m"
        " ON m.id = f.rowid WHERE messages_fts MATCH '\"life\"'"))
    assert "VIRTUAL TABLE INDEX" in plan  # FTS5 answers it, not a scan of messages
    for needle, found in [("lifetim", True), ("RUST", True), ("0% b", True), ("0%b", False),
                          ('"quoted', False), ("ru", True), ("zz", False)]:
        assert bool(history.list(needle)) is found, needle


def test_deleting_a_conversation_deletes_its_documents_and_their_index(history):
    from zephyr_local import documents, retrieval

    cid = history.create()
    doc = documents.Document("a.md", "/a.md", "pelican", "0", 0, 7, 2)
    retrieval.add(history.connection(), cid, doc, [documents.Passage(1, 1, None, "pelican", 2)])
    assert [d.document.name for d in retrieval.documents(history.connection(), cid)] == ["a.md"]
    history.delete(cid)
    count = "SELECT count(*) FROM passages_fts WHERE passages_fts MATCH 'pelican'"
    assert history.connection().execute(count).fetchone()[0] == 0
    assert history.connection().execute("SELECT count(*) FROM documents").fetchone()[0] == 0
