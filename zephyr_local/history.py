"""Conversation history in SQLite: versioned schema, WAL, one transaction per change.

Messages form a tree: an edit or a regenerated reply is a sibling of the message it
replaces, and each conversation remembers the leaf of the branch on screen.

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
from zephyr_local.history_schema import SCHEMA_VERSION, migrate

FILE_NAME = "history.sqlite"
TITLE_LENGTH = 60
_CURRENT = object()  # append()'s default parent: the leaf of the branch on screen
_MESSAGE_COLUMNS = ("m.id, m.parent_id, m.role, m.content, m.finish_reason, m.stats, m.sources,"
                    " (SELECT count(*) FROM messages s WHERE s.conversation_id = m.conversation_id"
                    " AND s.parent_id IS m.parent_id AND s.id <= m.id),"
                    " (SELECT count(*) FROM messages s WHERE s.conversation_id = m.conversation_id"
                    " AND s.parent_id IS m.parent_id)")


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
    sources: list | None = None  # passages a reply was given (doc_prompt.UsedPassage fields)
    id: int | None = None
    parent_id: int | None = None
    version: int = 1  # 1-based index among its siblings (edits / regenerations)
    versions: int = 1

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
            db.execute("PRAGMA busy_timeout=5000")
            if version < SCHEMA_VERSION:
                migrate(db, version)  # before foreign keys: they cannot change in a transaction
            db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise HistoryError(f"{self.path}: cannot use the history database ({exc})") from None
        return db

    def close(self) -> None:
        self._db.close()

    def connection(self) -> sqlite3.Connection:
        """The connection: the attached documents' tables (retrieval.py) live here too."""
        return self._db

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
        """Conversations, newest first; `search` matches titles and the text of any
        message in any branch (case-insensitive substring, as FTS5's trigram index
        finds it; under 3 characters, too short for trigrams, a scan)."""
        query = "SELECT id, title, system_prompt, sampling, model, updated_at FROM conversations c"
        args: tuple = ()
        text = search.strip()
        if text:
            pattern = "%" + _escape_like(text) + "%"
            if len(text) >= 3:
                in_messages = ("c.id IN (SELECT m.conversation_id FROM messages_fts f JOIN"
                               " messages m ON m.id = f.rowid WHERE messages_fts MATCH ?)")
                needle = '"' + text.replace('"', '""') + '"'
            else:
                in_messages = ("EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id"
                               " AND m.content LIKE ? ESCAPE '\\')")
                needle = pattern
            query += f" WHERE c.title LIKE ? ESCAPE '\\' OR {in_messages}"
            args = (pattern, needle)
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
        """The branch on screen: from the first message to the conversation's current leaf."""
        conv = self._db.execute("SELECT current_leaf FROM conversations WHERE id = ?",
                                (conversation_id,)).fetchone()
        return self.branch(conv[0]) if conv and conv[0] is not None else []

    def branch(self, leaf_id: int) -> list[StoredMessage]:
        """The messages from the first one down to `leaf_id`, in order."""
        rows = self._db.execute(
            "WITH RECURSIVE up(id) AS (SELECT ? UNION ALL SELECT m.parent_id FROM messages m"
            " JOIN up ON m.id = up.id WHERE m.parent_id IS NOT NULL)"
            f" SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN up ON m.id = up.id"
            " ORDER BY m.position", (leaf_id,))
        return [_message(r) for r in rows]

    def tree(self, conversation_id: int) -> list[StoredMessage]:
        """Every message of every branch, parents before children."""
        rows = self._db.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages m"
                                " WHERE m.conversation_id = ? ORDER BY m.position, m.id",
                                (conversation_id,))
        return [_message(r) for r in rows]

    def append(self, conversation_id: int, message: StoredMessage, parent_id=_CURRENT) -> int:
        """Add a message (committed on return) under `parent_id` (default: the current
        leaf; None: a new first message); it becomes the current leaf. Returns its id.

        A new child of a message that already has one is a sibling branch: an edit
        or a regenerated reply. The first user message also names an untitled
        conversation.
        """
        now = time.time()
        with _transaction(self._db):
            if parent_id is _CURRENT:
                parent_id = self._db.execute("SELECT current_leaf FROM conversations WHERE id = ?",
                                             (conversation_id,)).fetchone()[0]
            position = 0 if parent_id is None else self._db.execute(
                "SELECT position + 1 FROM messages WHERE id = ?", (parent_id,)).fetchone()[0]
            cur = self._db.execute(
                "INSERT INTO messages (conversation_id, parent_id, position, role, content,"
                " finish_reason, stats, sources, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, parent_id, position, message.role, message.content,
                 message.finish_reason, _dump(message.stats), _dump(message.sources), now))
            if message.role == "user" and position == 0:
                self._db.execute("UPDATE conversations SET title = ? WHERE id = ?"
                                 " AND title = 'New chat'", (make_title(message.content),
                                                             conversation_id))
            self._db.execute("UPDATE conversations SET current_leaf = ?, updated_at = ?"
                             " WHERE id = ?", (cur.lastrowid, now, conversation_id))
        return int(cur.lastrowid)

    def switch(self, conversation_id: int, message_id: int, step: int) -> int | None:
        """Show the version `step` away (-1 previous, +1 next) of message `message_id`;
        the branch below follows its newest path. Returns the new current leaf, or
        None where there is no such version."""
        row = self._db.execute("SELECT parent_id FROM messages WHERE id = ?",
                               (message_id,)).fetchone()
        if row is None:
            return None
        siblings = [r[0] for r in self._db.execute(
            "SELECT id FROM messages WHERE conversation_id = ? AND parent_id IS ? ORDER BY id",
            (conversation_id, row[0]))]
        index = siblings.index(message_id) + step
        if not 0 <= index < len(siblings):
            return None
        leaf, child = siblings[index], siblings[index]
        while child is not None:
            leaf = child
            child = self._db.execute("SELECT max(id) FROM messages WHERE parent_id = ?",
                                     (leaf,)).fetchone()[0]
        self.set_leaf(conversation_id, leaf)
        return leaf

    def set_leaf(self, conversation_id: int, leaf_id: int | None) -> None:
        """Make the branch ending at `leaf_id` the one on screen (None: empty)."""
        with _transaction(self._db):
            self._db.execute("UPDATE conversations SET current_leaf = ? WHERE id = ?",
                             (leaf_id, conversation_id))

    def truncate(self, conversation_id: int, keep: int) -> None:
        """Delete the current branch's messages from position `keep` on, with every
        branch under them (a failed message given back to edit)."""
        branch = self.messages(conversation_id)
        if keep >= len(branch):
            return
        with _transaction(self._db):
            self._db.execute("DELETE FROM messages WHERE id = ?", (branch[keep].id,))
            self._db.execute("UPDATE conversations SET current_leaf = ? WHERE id = ?",
                             (branch[keep - 1].id if keep > 0 else None, conversation_id))

    def export_json(self, conversation_id: int, all_branches: bool = False) -> dict:
        """`{"messages": [{"role", "content"}, ...]}` for the current branch, system
        prompt first: what `generate --messages` and the training commands read.
        `all_branches` adds `"tree"`: every message with its id and parent id."""
        conv = self.get(conversation_id)
        chat = [m.as_chat() for m in self.messages(conversation_id)]
        if conv and conv.system_prompt:
            chat.insert(0, {"role": "system", "content": conv.system_prompt})
        data: dict = {"messages": chat}
        if all_branches:
            data["tree"] = [{"id": m.id, "parent_id": m.parent_id, "role": m.role,
                             "content": m.content, "finish_reason": m.finish_reason}
                            for m in self.tree(conversation_id)]
            current = self.messages(conversation_id)
            data["current_leaf"] = current[-1].id if current else None
        return data

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
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _has_tables(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _message(r) -> StoredMessage:
    return StoredMessage(r[2], r[3], r[4], json.loads(r[5]) if r[5] else None,
                         json.loads(r[6]) if r[6] else None, r[0], r[1], r[7], r[8])


def _dump(value: dict | list | None) -> str | None:
    return json.dumps(value) if value is not None else None


def _conversation(row) -> Conversation:
    return Conversation(row[0], row[1], row[2], json.loads(row[3]) if row[3] else None, row[4],
                        row[5])
