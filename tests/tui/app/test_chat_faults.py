"""The chat app through a failing history database and hostile text, driven by Pilot.

Each database fault is a real one: another process holding the write lock, a file
that cannot be written, SQLite's own "database or disk is full", a damaged page.
Whatever happens, every message typed and every reply stays in the app, and the
database receives them in order once it works again (or, when damaged, never).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tui_helpers import make_app, type_and_send, wait_until

from zephyr_local.history import History, StoredMessage

SIZE = (100, 30)


def _record_notices(app) -> list[str]:
    notes: list[str] = []
    original = app.notify

    def notify(message, **kwargs):
        notes.append(message)
        original(message, **kwargs)

    app.notify = notify
    return notes


def _screen(app) -> list[tuple[str, str]]:
    return [(v.role, v.content) for v in app.views()]


def _stored(db: Path) -> list[list[tuple[str, str]]]:
    history = History(db)
    try:
        return [[(m.role, m.content) for m in history.messages(c.id)]
                for c in reversed(history.list())]
    finally:
        history.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
db.execute("COMMIT")
"""


@pytest.mark.asyncio
async def test_lock_held_by_another_process(engine, tmp_path):
    db = tmp_path / "history.sqlite"
    app = make_app(engine, tmp_path)
    notes = _record_notices(app)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "before the lock")
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert locker.stdout.readline().strip() == "locked"
            await type_and_send(pilot, "while locked")
            assert app.is_running and app.chat_history.db.pending > 0
            assert any("not being saved" in n and "locked" in n for n in notes), notes
        finally:
            locker.stdin.close()
            locker.wait(timeout=30)
        await type_and_send(pilot, "after the lock")
        screen = _screen(app)
        assert [text for role, text in screen if role == "user"] == [
            "before the lock", "while locked", "after the lock"]
        assert app.chat_history.db.pending == 0 and "History is being saved again." in notes
    assert _stored(db) == [screen]


@pytest.fixture
def read_only_db(tmp_path):
    """A history database that this process cannot write (chattr +i where we are root)."""
    db = tmp_path / "history.sqlite"
    History(db).close()
    db.chmod(0o444)
    immutable = False
    if os.access(db, os.W_OK):  # root ignores permissions: make it immutable instead
        chattr = shutil.which("chattr") and subprocess.run(
            ["chattr", "+i", str(db)], capture_output=True, check=False)
        if not chattr or chattr.returncode:
            pytest.skip("cannot make a file read-only for this user")
        immutable = True
    yield db
    if immutable:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    db.chmod(0o644)


@pytest.mark.asyncio
async def test_read_only_database(engine, tmp_path, read_only_db):
    before = _digest(read_only_db)
    app = make_app(engine, tmp_path)
    notes = _record_notices(app)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "one")
        await type_and_send(pilot, "two")
        assert [t for r, t in _screen(app) if r == "user"] == ["one", "two"]
        assert len(_screen(app)) == 4 and app.chat_history.db.pending == 5  # create + 4 messages
        assert sum("readonly" in n for n in notes) == 1, notes  # said once, not per write
    assert _digest(read_only_db) == before


@pytest.mark.asyncio
async def test_full_database(engine, tmp_path):
    """SQLite's SQLITE_FULL (what a full disk gives), from a page limit on the connection."""
    db = tmp_path / "history.sqlite"
    app = make_app(engine, tmp_path)
    notes = _record_notices(app)
    big = "word " * 1200  # 6 kB: more than a page, so new pages are needed
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "small")
        conn = app.chat_history.db.db._db
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")
        await type_and_send(pilot, big)
        assert any("full" in n for n in notes), notes
        assert app.chat_history.db.pending > 0
        conn.execute("PRAGMA max_page_count=1073741823")  # space freed
        await type_and_send(pilot, "after")
        assert app.chat_history.db.pending == 0
        screen = _screen(app)
    assert _stored(db) == [screen] and screen[2] == ("user", big)


def _damage_messages_table(db: Path) -> None:
    """Overwrite the messages table's root page, as a disk fault would, behind the app."""
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = other.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages'").fetchone()
    size = other.execute("PRAGMA page_size").fetchone()[0]
    with open(db, "r+b") as f:
        f.seek((root[0] - 1) * size)
        f.write(os.urandom(size))
    other.execute("UPDATE conversations SET title = title")  # the app's page cache is stale now
    other.close()


@pytest.mark.asyncio
async def test_damaged_database_is_never_written(engine, tmp_path):
    db = tmp_path / "history.sqlite"
    app = make_app(engine, tmp_path)
    notes = _record_notices(app)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "before")
        _damage_messages_table(db)
        damaged = _digest(db)
        await type_and_send(pilot, "after the damage")
        await type_and_send(pilot, "and more")
        assert app.chat_history.db.damaged and any("damaged" in n for n in notes), notes
        assert [t for r, t in _screen(app) if r == "user"] == ["before", "after the damage",
                                                                "and more"]
        out = tmp_path / "rescued.json"
        app.query_one("#prompt").text = f"/export {out}"
        await pilot.press("enter")
        await wait_until(pilot, out.exists)
    assert _digest(db) == damaged
    assert [m["content"] for m in json.loads(out.read_text())["messages"]][::2] == [
        "before", "after the damage", "and more"]


@pytest.mark.asyncio
async def test_damaged_at_start_runs_in_memory(engine, tmp_path):
    db = tmp_path / "history.sqlite"
    history = History(db)
    history.append(history.create(), StoredMessage("user", "old"))
    history.close()
    _damage_messages_table(db)
    damaged = _digest(db)
    app = make_app(engine, tmp_path)
    notes = _record_notices(app)
    async with app.run_test(size=SIZE) as pilot:
        await type_and_send(pilot, "hello")
        assert len(_screen(app)) == 2 and any("damaged" in n for n in notes), notes
    assert _digest(db) == damaged


@pytest.mark.parametrize("text", ["/[/]", "/[bold]x", "[/] plain text [red]"])
@pytest.mark.asyncio
async def test_markup_in_typed_text(engine, tmp_path, text):
    app = make_app(engine, tmp_path)
    notes = _record_notices(app)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await type_and_send(pilot, text)
        await pilot.pause(0.3)  # the notice's toast is rendered
        assert app.is_running and app.return_code is None
        if text.startswith("/"):
            assert any(text.split()[0] in n for n in notes), notes  # shown as typed
        else:
            assert _screen(app)[0] == ("user", text)


@pytest.mark.asyncio
async def test_export_to_a_path_with_brackets(engine, tmp_path):
    app = make_app(engine, tmp_path)
    notes = _record_notices(app)
    target = tmp_path / "a[" / "]b.md"  # the notice names ".../a[/]b.md": a closing tag
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await type_and_send(pilot, "hi")
        app.query_one("#prompt").text = f"/export {target}"
        await pilot.press("enter")
        await wait_until(pilot, lambda: any("Exported" in n for n in notes))
        await pilot.pause(0.3)
        assert app.is_running and app.return_code is None and str(target) in notes[-1]
    assert "hi" in target.read_text()


def test_queued_writes_land_in_order_under_the_real_ids(tmp_path):
    from zephyr_local.tui.guarded_history import GuardedHistory

    db = tmp_path / "history.sqlite"
    problems = []
    guarded = GuardedHistory(db, lambda reason, damaged: problems.append(reason))
    guarded.db.set_busy_timeout(0)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    cid = guarded.create()
    guarded.append(cid, StoredMessage("user", "a"))
    assert cid < 0 and guarded.pending == 2 and "locked" in problems[0]
    assert guarded.list() == []  # reads still work while the lock is held
    other.execute("COMMIT")
    guarded.append(cid, StoredMessage("assistant", "b"))
    assert guarded.pending == 0 and problems[-1] is None and guarded.resolve(cid) > 0
    assert [m.content for m in guarded.messages(cid)] == ["a", "b"]
    assert guarded.switch(guarded.resolve(cid), guarded.messages(cid)[-1].id, -1) is None
    guarded.close()
    other.close()
