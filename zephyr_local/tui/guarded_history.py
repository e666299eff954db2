"""The chat app's one door to the history database: a failing database never ends the chat.

SQLite can fail after start-up in ways the user did not cause here: another process
holds the write lock, the file turned read-only, the disk is full, a page is damaged.
Every History call of the app goes through GuardedHistory, which keeps writes in
order in memory when they fail, says once why history is not being saved, and
writes them all on the next change that the database takes (the user acting again).
A damaged file is closed at the first sign and never written to again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path

from zephyr_local.history import History, HistoryError

# History methods that change the database: queued in order, retried until they land.
# A new write method of History must be listed here to be kept when the database fails.
# `switch` (showing another version) is navigation: tried once, never queued.
WRITES = frozenset({"create", "append", "truncate", "rename", "delete", "set_system_prompt",
                    "set_sampling", "set_leaf"})
READ_DEFAULTS = {"list": [], "messages": []}  # what a failed read returns (else None)
BUSY_TIMEOUT_MS = 1500  # how long a write waits for another process's lock (UI thread)
_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


class GuardedHistory:
    """History's methods, guarded: reads return a default and writes queue on failure.

    Args:
        path: the database (None: the default location).
        on_problem: called as `on_problem(reason, damaged)` when saving stops (damaged:
            for good), and `on_problem(None, False)` when it works again.
    """

    def __init__(self, path: str | Path | None, on_problem: Callable[[str | None, bool], None]):
        self.on_problem = on_problem
        self.problem: str | None = None
        self.damaged = False
        self._pending: list[tuple[str, tuple, dict]] = []
        self._ids: dict[int, int] = {}  # provisional (negative) conversation id -> real one
        self._next_provisional = -1
        self.db = History(path)  # HistoryError here: the app runs without history
        self.path = self.db.path
        self.db.set_busy_timeout(BUSY_TIMEOUT_MS)
        damage = self.db.integrity_problem()
        if damage:
            self._give_up(f"{self.path} is damaged ({damage})")

    @property
    def pending(self) -> int:
        """Changes kept in memory that the database has not taken yet."""
        return len(self._pending)

    def resolve(self, conversation_id):
        """The real id of a conversation created while the database was failing."""
        if isinstance(conversation_id, int) and conversation_id < 0:
            return self._ids.get(conversation_id, conversation_id)
        return conversation_id

    def __getattr__(self, name: str):
        if name.startswith("_") or not callable(getattr(History, name, None)):
            raise AttributeError(name)
        return partial(self._write if name in WRITES else self._read, name)

    def connection(self):
        """The open connection (the documents' tables share it), None once damaged."""
        return None if self.damaged else self.db.connection()

    def create(self, **fields) -> int:
        """A new conversation's id: a provisional negative one until the database takes it."""
        provisional, self._next_provisional = self._next_provisional, self._next_provisional - 1
        self._write("create", provisional, **fields)
        return self.resolve(provisional)

    def _write(self, name: str, *args, **kwargs) -> None:
        self._pending.append((name, args, kwargs))
        self.flush()

    def _read(self, name: str, *args, **kwargs):
        default = READ_DEFAULTS.get(name)
        if self.damaged:
            return default
        args = (self.resolve(args[0]), *args[1:]) if args else args  # a conversation id first
        try:
            return getattr(self.db, name)(*args, **kwargs)
        except sqlite3.Error as exc:
            self._failed(exc)
            return default

    def flush(self) -> bool:
        """Write every queued change, oldest first; False if the database still fails."""
        while self._pending and not self.damaged:
            name, args, kwargs = self._pending[0]
            try:
                if name == "create":
                    self._ids[args[0]] = self.db.create(**kwargs)
                else:
                    getattr(self.db, name)(*(self.resolve(a) for a in args[:1]), *args[1:],
                                           **kwargs)
            except sqlite3.Error as exc:
                self._failed(exc)
                return False
            except HistoryError:  # a refused value (an empty title): drop it, tell the caller
                self._pending.pop(0)
                raise
            self._pending.pop(0)
        if self.damaged:
            return False
        if self.problem is not None:
            self.problem = None
            self.on_problem(None, False)
        return True

    def _failed(self, exc: sqlite3.Error) -> None:
        if getattr(exc, "sqlite_errorname", "") in _DAMAGED or "malformed" in str(exc):
            self._give_up(f"{self.path} is damaged ({exc})")
            return
        reason = str(exc)
        if reason != self.problem:
            self.problem = reason
            self.on_problem(reason, False)

    def _give_up(self, reason: str) -> None:
        """Close a damaged database: nothing more is read from or written to it."""
        self.damaged, self.problem = True, reason
        self.db.close()
        self.on_problem(reason + "; it is left untouched", True)

    def close(self) -> None:
        """A last try at the queued changes, then close."""
        if not self.damaged:
            try:
                self.flush()
            except HistoryError:
                pass
            self.db.close()
