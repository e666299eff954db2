"""The SQLite conversation store: schema, transactions, search, export, bad files."""

from __future__ import annotations

import json
import sqlite3

import pytest

from zephyr_local.cli import read_messages
from zephyr_local.history import SCHEMA_VERSION, History, HistoryError, StoredMessage, make_title


@pytest.fixture
def history(tmp_path):
    h = History(tmp_path / "history.sqlite")
    yield h
    h.close()


def _conversation(history, *texts, system=None):
    cid = history.create(system_prompt=system)
    for i, text in enumerate(texts):
        role = "user" if i % 2 == 0 else "assistant"
        history.append(cid, StoredMessage(role, text, None if role == "user" else "stop"))
    return cid


def test_new_database_is_versioned_and_in_wal_mode(history):
    db = sqlite3.connect(history.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"conversations", "messages"} <= tables
    db.close()


def test_messages_round_trip_and_are_committed_at_once(history):
    cid = _conversation(history, "What is MLX?", "An array framework.")
    history.append(cid, StoredMessage("user", "More", None))
    history.append(cid, StoredMessage("assistant", "Half a rep", "cancelled", {"ttft_s": 0.5}))
    # A second connection sees every message without the first one closing: committed.
    other = History(history.path)
    got = other.messages(cid)
    other.close()
    assert [(m.role, m.content, m.finish_reason) for m in got] == [
        ("user", "What is MLX?", None), ("assistant", "An array framework.", "stop"),
        ("user", "More", None), ("assistant", "Half a rep", "cancelled"),
    ]
    assert got[-1].stats == {"ttft_s": 0.5}


def test_title_comes_from_the_first_user_message(history):
    long = "word " * 40
    cid = _conversation(history, "  Explain\nKV caches  ", "Sure.")
    cid2 = _conversation(history, long)
    assert history.get(cid).title == "Explain KV caches"
    title = history.get(cid2).title
    assert len(title) == 60 and title.endswith("…") and title == make_title(long)


def test_truncate_drops_later_messages(history):
    cid = _conversation(history, "a", "b", "c", "d")
    history.truncate(cid, 2)
    assert [m.content for m in history.messages(cid)] == ["a", "b"]
    history.append(cid, StoredMessage("user", "c2"))
    assert [m.content for m in history.messages(cid)] == ["a", "b", "c2"]


def test_search_rename_delete(history):
    first = _conversation(history, "Tell me about llamas", "They hum.")
    second = _conversation(history, "Rust lifetimes", "100% borrowed")
    assert [c.id for c in history.list()] == [second, first]  # newest first
    assert [c.id for c in history.list("hum")] == [first]  # message text, not only titles
    assert [c.id for c in history.list("RUST")] == [second]  # case-insensitive
    assert [c.id for c in history.list("100%")] == [second]
    assert history.list("0%b") == []  # % and _ are literal, not wildcards
    history.rename(first, "  Llamas  ")
    assert history.get(first).title == "Llamas"
    with pytest.raises(HistoryError):
        history.rename(first, "   ")
    history.delete(first)
    assert history.get(first) is None and history.messages(first) == []
    orphans = history._db.execute("SELECT count(*) FROM messages WHERE conversation_id = ?",
                                  (first,)).fetchone()[0]
    assert orphans == 0


def test_system_prompt_and_sampling_are_stored(history):
    cid = history.create(system_prompt="Be terse.", sampling={"temperature": 0.0})
    history.set_sampling(cid, {"temperature": 0.3, "top_k": 5})
    history.set_system_prompt(cid, "")
    conv = History(history.path).get(cid)
    assert conv.sampling == {"temperature": 0.3, "top_k": 5}
    assert conv.system_prompt is None


def test_json_export_is_what_generate_reads(history, tmp_path):
    cid = _conversation(history, "Hi", "Hello!", "Bye", system="You are kind.")
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(history.export_json(cid)))
    assert read_messages(str(path)) == [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    md = history.export_markdown(cid)
    assert md.startswith("# Hi\n") and "**System:**\n\nYou are kind." in md
    assert md.index("**User:**\n\nHi") < md.index("**Assistant:**\n\nHello!")


def _bytes(path):
    return path.read_bytes()


def test_corrupt_file_is_reported_and_left_untouched(tmp_path):
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"this is not sqlite at all" * 100)
    before = _bytes(path)
    with pytest.raises(HistoryError, match="unreadable history database"):
        History(path)
    assert _bytes(path) == before


def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "history.sqlite"
    History(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    before = _bytes(path)
    with pytest.raises(HistoryError, match="newer zephyr-local"):
        History(path)
    assert _bytes(path) == before


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (x)")
    db.commit()
    db.close()
    with pytest.raises(HistoryError, match="not a zephyr-local history"):
        History(path)


def test_chat_command_refuses_a_corrupt_history(run_cli, tmp_path):
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"garbage" * 50)
    before = _bytes(path)
    result = run_cli("chat", "-m", "zephyr-test", "--history", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and "unreadable history database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert _bytes(path) == before


def test_default_path_is_in_the_data_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEPHYR_LOCAL_HOME", str(tmp_path / "home"))
    h = History()
    h.close()
    assert h.path == tmp_path / "home" / "history.sqlite" and h.path.exists()
