"""Conversation history in SQLite: versioned schema, WAL, one transaction per change.

Every completed message is committed as soon as it exists, so a crash or kill -9
loses at most the reply being generated. A file that is not a SQLite database, or
that a newer zephyr-local wrote, raises HistoryError and is never touched.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from zephyr_local import store
from zephyr_local.errors import ZephyrError

SCHEMA_VERSION = 1
FILE_NAME = "history.sqlite"
TITLE_LENGTH = 60

_SCHEMA_V1 = """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT,
    sampling TEXT,              -- JSON of SamplingOptions fields, NULL = app defaults
    model TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    finish_reason TEXT,         -- assistant replies: stop / length / cancelled
    stats TEXT,                 -- JSON of ReplyStats
    created_at REAL NOT NULL,
    UNIQUE (conversation_id, position)
);
CREATE INDEX messages_by_conversation ON messages(conversation_id, position);
"""


class HistoryError(ZephyrError):
    """The history database cannot be used (corrupt, newer version, unwritable)."""

    exit_code = 2


@dataclass
class StoredMessage:
    """One message of a stored conversation."""

    role: str
    content: str
    finish_reason: str | None = None
    stats: dict | None = None

    def as_chat(self) -> dict:
        return {"role": self.role, "content": self.content}


@dataclass
class Conversation:
    """A stored conversation's header (messages are read separately)."""

    id: int
    title: str
    system_prompt: str | None = None
    sampling: dict | None = None
    model: str | None = None
    updated_at: float = field(default=0.0)


def default_path() -> Path:
    """`<ZEPHYR_LOCAL_HOME>/history.sqlite`."""
    return store.home_dir() / FILE_NAME


def make_title(text: str) -> str:
    """A one-line title from the first user message."""
    line = " ".join(text.split())
    return (line[: TITLE_LENGTH - 1] + "…") if len(line) > TITLE_LENGTH else (line or "New chat")


class History:
    """The conversation store. Use from one thread (the UI thread)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_path()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        existed = self.path.exists()
        if not existed:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise HistoryError(f"{self.path.parent}: cannot create ({exc.strerror})") from None
        try:
            # mode=rw for an existing file: never create a fresh file in its place.
            uri = f"{self.path.resolve().as_uri()}?mode={'rw' if existed else 'rwc'}"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if existed and version == 0 and _has_tables(db):
                raise HistoryError(f"{self.path}: not a zephyr-local history database; "
                                   "move it away or pass another path")
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"{self.path}: unreadable history database ({exc}); it was left "
                               "untouched: move it away to start a new history") from None
        if version > SCHEMA_VERSION:
            db.close()
            raise HistoryError(f"{self.path}: written by a newer zephyr-local (schema {version}, "
                               f"this one reads up to {SCHEMA_VERSION}); upgrade zephyr-local")
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            if version < SCHEMA_VERSION:
                self._migrate(db, version)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise HistoryError(f"{self.path}: cannot use the history database ({exc})") from None
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection, version: int) -> None:
        """Bring the schema from `version` to SCHEMA_VERSION in one transaction."""
        with _transaction(db):
            if version < 1:
                for statement in _SCHEMA_V1.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def set_busy_timeout(self, milliseconds: int) -> None:
        """How long a write waits for another connection's lock before failing."""
        self._db.execute(f"PRAGMA busy_timeout={int(milliseconds)}")

    def integrity_problem(self) -> str | None:
        """SQLite's quick_check of every page: None when sound, else its first finding."""
        try:
            result = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return None if result == "ok" else result

    # -- conversations ---------------------------------------------------------

    def create(self, title: str = "New chat", system_prompt: str | None = None,
               sampling: dict | None = None, model: str | None = None) -> int:
        """Start a conversation; returns its id."""
        now = time.time()
        with _transaction(self._db):
            cur = self._db.execute(
                "INSERT INTO conversations (title, system_prompt, sampling, model, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (title, system_prompt, _dump(sampling), model, now, now),
            )
        return int(cur.lastrowid)

    def get(self, conversation_id: int) -> Conversation | None:
        row = self._db.execute(
            "SELECT id, title, system_prompt, sampling, model, updated_at FROM conversations"
            " WHERE id = ?", (conversation_id,)).fetchone()
        return _conversation(row) if row else None

    def list(self, search: str = "") -> list[Conversation]:
        """Conversations, newest first; `search` matches titles and message text."""
        query = ("SELECT id, title, system_prompt, sampling, model, updated_at FROM conversations c")
        args: tuple = ()
        if search.strip():
            pattern = "%" + _escape_like(search.strip()) + "%"
            query += (" WHERE c.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m"
                      " WHERE m.conversation_id = c.id AND m.content LIKE ? ESCAPE '\\')")
            args = (pattern, pattern)
        query += " ORDER BY c.updated_at DESC, c.id DESC"
        return [_conversation(row) for row in self._db.execute(query, args)]

    def rename(self, conversation_id: int, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            raise HistoryError("a title cannot be empty")
        self._update(conversation_id, title=title)

    def delete(self, conversation_id: int) -> None:
        with _transaction(self._db):
            self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def set_system_prompt(self, conversation_id: int, system_prompt: str | None) -> None:
        self._update(conversation_id, system_prompt=system_prompt or None)

    def set_sampling(self, conversation_id: int, sampling: dict | None) -> None:
        self._update(conversation_id, sampling=_dump(sampling))

    def _update(self, conversation_id: int, **columns) -> None:
        sets = ", ".join(f"{name} = ?" for name in columns)
        with _transaction(self._db):
            self._db.execute(
                f"UPDATE conversations SET {sets}, updated_at = ? WHERE id = ?",
                (*columns.values(), time.time(), conversation_id),
            )

    # -- messages --------------------------------------------------------------

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        rows = self._db.execute(
            "SELECT role, content, finish_reason, stats FROM messages WHERE conversation_id = ?"
            " ORDER BY position", (conversation_id,))
        return [StoredMessage(r[0], r[1], r[2], json.loads(r[3]) if r[3] else None) for r in rows]

    def append(self, conversation_id: int, message: StoredMessage) -> int:
        """Add a message at the end (committed on return); returns its position.

        The first user message also names an untitled conversation.
        """
        now = time.time()
        with _transaction(self._db):
            position = self._db.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = ?",
                (conversation_id,)).fetchone()[0]
            self._db.execute(
                "INSERT INTO messages (conversation_id, position, role, content, finish_reason,"
                " stats, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, position, message.role, message.content,
                 message.finish_reason, _dump(message.stats), now),
            )
            if message.role == "user" and position == 0:
                self._db.execute("UPDATE conversations SET title = ? WHERE id = ?"
                                 " AND title = 'New chat'", (make_title(message.content),
                                                             conversation_id))
            self._db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?",
                             (now, conversation_id))
        return position

    def truncate(self, conversation_id: int, keep: int) -> None:
        """Drop every message from position `keep` on (regenerate, edit)."""
        with _transaction(self._db):
            self._db.execute("DELETE FROM messages WHERE conversation_id = ? AND position >= ?",
                             (conversation_id, keep))

    def export_json(self, conversation_id: int) -> dict:
        """`{"messages": [{"role", "content"}, ...]}`, system prompt first: what
        `generate --messages` and the training commands read."""
        conv = self.get(conversation_id)
        chat = [m.as_chat() for m in self.messages(conversation_id)]
        if conv and conv.system_prompt:
            chat.insert(0, {"role": "system", "content": conv.system_prompt})
        return {"messages": chat}

    def export_markdown(self, conversation_id: int) -> str:
        conv = self.get(conversation_id)
        parts = [f"# {conv.title if conv else 'Conversation'}\n"]
        if conv and conv.system_prompt:
            parts.append(f"**System:**\n\n{conv.system_prompt}\n")
        for m in self.messages(conversation_id):
            note = " (stopped)" if m.finish_reason == "cancelled" else ""
            parts.append(f"**{m.role.capitalize()}{note}:**\n\n{m.content}\n")
        return "\n".join(parts)


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # also a failed COMMIT (disk full), which leaves it open
            db.execute("ROLLBACK")
        raise


def _has_tables(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _dump(value: dict | None) -> str | None:
    return json.dumps(value) if value is not None else None


def _conversation(row) -> Conversation:
    return Conversation(row[0], row[1], row[2], json.loads(row[3]) if row[3] else None, row[4],
                        row[5])
