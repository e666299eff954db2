"""The history database's schema and its migrations, one step per version.

Version 1: conversations and a flat list of messages (one per position).
Version 2: messages form a tree (each has a parent; siblings are the versions an
edit or a regenerate made), the conversation remembers the leaf of the branch on
screen, message text is indexed with FTS5 for search, and attached documents are
stored with their passages and BM25 index (retrieval.SCHEMA).
"""

from __future__ import annotations

import sqlite3

from zephyr_local import retrieval

SCHEMA_VERSION = 2

SCHEMA_V1 = """
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

# SQLite cannot drop a UNIQUE constraint in place: the table is rebuilt
# (create, copy, drop, rename), with foreign keys off while it happens.
_MESSAGES_V2 = """
CREATE TABLE messages_v2 (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,  -- NULL: a first message
    position INTEGER NOT NULL,  -- depth in the tree: index in its branch
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    finish_reason TEXT,
    stats TEXT,
    sources TEXT,               -- JSON list of the passages a reply was given
    created_at REAL NOT NULL
);
INSERT INTO messages_v2 (id, conversation_id, parent_id, position, role, content,
                         finish_reason, stats, created_at)
    SELECT id, conversation_id,
           LAG(id) OVER (PARTITION BY conversation_id ORDER BY position),
           position, role, content, finish_reason, stats, created_at
    FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
CREATE INDEX messages_by_parent ON messages(conversation_id, parent_id);
ALTER TABLE conversations ADD COLUMN current_leaf INTEGER;
UPDATE conversations SET current_leaf = (
    SELECT m.id FROM messages m WHERE m.conversation_id = conversations.id
    ORDER BY m.position DESC LIMIT 1);
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content='messages', content_rowid='id', tokenize='trigram');
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
"""

_STEPS = {1: SCHEMA_V1, 2: _MESSAGES_V2 + retrieval.SCHEMA}


def migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring the schema from `version` to SCHEMA_VERSION in one transaction.

    Foreign keys must be off (they cannot be switched inside a transaction):
    dropping the old messages table would otherwise cascade into the copy.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _statements(_STEPS[step]):
                db.execute(statement)
        problems = db.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise sqlite3.IntegrityError(f"foreign key check failed: {problems[:3]}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a script at top-level semicolons (trigger bodies hold their own)."""
    statements, current = [], []
    for line in script.splitlines():
        if not line.strip() or line.lstrip().startswith("--") and not current:
            continue
        current.append(line)
        text = "\n".join(current)
        if line.rstrip().endswith(";") and sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    if current and "\n".join(current).strip():
        statements.append("\n".join(current))
    return statements
