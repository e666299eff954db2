"""Attached documents in SQLite: their text, their passages and a BM25 index (FTS5).

The same tables live in the history database (a chat's documents persist with
it) or in a private in-memory database (`generate --attach`). No embedding model:
FTS5's BM25 ranks passages by the question's words, offline and instantly.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass

from zephyr_local import documents as _documents
from zephyr_local.documents import Document, Passage

SCHEMA = """
CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER REFERENCES conversations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    text TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    added_at REAL NOT NULL
);
CREATE INDEX documents_by_conversation ON documents(conversation_id);
CREATE TABLE passages (
    id INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL,
    heading TEXT,
    text TEXT NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE INDEX passages_by_document ON passages(document_id, ordinal);
CREATE VIRTUAL TABLE passages_fts USING fts5(
    text, content='passages', content_rowid='id', tokenize='porter unicode61');
CREATE TRIGGER passages_fts_insert AFTER INSERT ON passages BEGIN
    INSERT INTO passages_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER passages_fts_delete AFTER DELETE ON passages BEGIN
    INSERT INTO passages_fts(passages_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""

CANDIDATES = 200  # best-ranked passages considered for one question
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class StoredDocument:
    """A document attached to a conversation, as stored."""

    id: int
    document: Document


@dataclass
class Hit:
    """A passage BM25 ranked for a question (`rank`: lower is better, as FTS5's bm25())."""

    passage_id: int
    document: str
    passage: Passage
    rank: float


def memory_index() -> sqlite3.Connection:
    """A private database with the document tables (one-shot use)."""
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    db.executescript(SCHEMA)
    return db


def add(db: sqlite3.Connection, conversation_id: int | None, doc: Document,
        passages: list[Passage]) -> int:
    """Store a document and index its passages in one transaction; returns its id."""
    db.execute("BEGIN IMMEDIATE")
    try:
        cur = db.execute(
            "INSERT INTO documents (conversation_id, name, path, text, sha256, mtime_ns, size,"
            " tokens, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (conversation_id, doc.name, doc.path, doc.text, doc.sha256, doc.mtime_ns, doc.size,
             doc.tokens, time.time()))
        doc_id = int(cur.lastrowid)
        db.executemany(
            "INSERT INTO passages (document_id, ordinal, start_line, end_line, heading, text,"
            " tokens) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(doc_id, i, p.start_line, p.end_line, p.heading, p.text, p.tokens)
             for i, p in enumerate(passages)])
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return doc_id


def add_file(db: sqlite3.Connection, conversation_id: int | None, path: str,
             tokenizer) -> StoredDocument:
    """Read, cut and store one file (documents.DocumentError if it is refused)."""
    doc = _documents.read(path, tokenizer)
    doc_id = add(db, conversation_id, doc, _documents.split(doc.text, tokenizer))
    return StoredDocument(doc_id, doc)


def remove(db: sqlite3.Connection, document_id: int) -> None:
    """Forget a document and its passages (the FTS rows go with them)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("DELETE FROM passages WHERE document_id = ?", (document_id,))
        db.execute("DELETE FROM documents WHERE id = ?", (document_id,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def documents(db: sqlite3.Connection, conversation_id: int | None) -> list[StoredDocument]:
    rows = db.execute(
        "SELECT id, name, path, text, sha256, mtime_ns, size, tokens FROM documents"
        " WHERE conversation_id IS ? ORDER BY id", (conversation_id,))
    return [StoredDocument(r[0], Document(*r[1:])) for r in rows]


def move(db: sqlite3.Connection, document_ids: list[int], conversation_id: int) -> None:
    """Give documents attached before the conversation existed to it."""
    db.executemany("UPDATE documents SET conversation_id = ? WHERE id = ?",
                   [(conversation_id, i) for i in document_ids])


def passages(db: sqlite3.Connection, document_id: int) -> list[Passage]:
    rows = db.execute("SELECT start_line, end_line, heading, text, tokens FROM passages"
                      " WHERE document_id = ? ORDER BY ordinal", (document_id,))
    return [Passage(*r) for r in rows]


def match_query(question: str) -> str | None:
    """An FTS5 query that matches passages sharing any word with the question.

    Each word is quoted (a literal, never FTS5 syntax); OR lets BM25 weigh them,
    so rare words count more than common ones. None if the question has no words.
    """
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(question)))
    if not words:
        return None
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def rank(db: sqlite3.Connection, document_ids: list[int], question: str,
         limit: int = CANDIDATES) -> list[Hit]:
    """Passages of the given documents, best BM25 match for `question` first."""
    query = match_query(question)
    if query is None or not document_ids:
        return []
    marks = ", ".join("?" * len(document_ids))
    rows = db.execute(
        "SELECT p.id, d.name, p.start_line, p.end_line, p.heading, p.text, p.tokens,"
        " bm25(passages_fts) AS score FROM passages_fts"
        " JOIN passages p ON p.id = passages_fts.rowid JOIN documents d ON d.id = p.document_id"
        f" WHERE passages_fts MATCH ? AND p.document_id IN ({marks})"
        " ORDER BY score, p.id LIMIT ?", (query, *document_ids, limit))
    return [Hit(r[0], r[1], Passage(*r[2:7]), r[7]) for r in rows]
