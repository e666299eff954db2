"""The chat's attached documents: /attach, /detach, the prompt plan; a component the app owns.

Documents and their passage index are stored with the conversation in the
history database (retrieval.py); without one, in a private in-memory database.
Before each reply every document is checked against its file: a changed file is
read and indexed again, a missing one keeps the copy stored with the chat.

ChatDocuments knows nothing of the screen: the app calls it, shows the chips after
a change, and gives it the model's tokenizer once loaded; it talks back through
`notify` alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable

from zephyr_local import doc_prompt, documents, retrieval
from zephyr_local.documents import DocumentError
from zephyr_local.tui.chat_history import ChatHistory


class ChatDocuments:
    """The documents attached to the current conversation of `history`.

    Args:
        history: the conversation (its database holds the documents and their index).
        notify: shows a notice, called as `notify(message, severity=..., ...)`.
    """

    def __init__(self, history: ChatHistory, notify: Callable[..., None]) -> None:
        self.chat_history, self.notify = history, notify
        self.tokenizer = None  # the model's, once loaded: it sizes and cuts documents
        self.attached: list[retrieval.StoredDocument] = []
        self.last_plan: doc_prompt.PromptPlan | None = None
        self._memory_db = None
        self._in_memory = False  # the history database refused a document: keep them here
        self._missing_noted: set[str] = set()

    def _say(self, message: str, **kwargs) -> None:
        """A notice with file names and paths in it: shown as typed, never as markup."""
        self.notify(message, markup=False, **kwargs)

    def _documents_db(self):
        if self.chat_history.db is not None and not self._in_memory:
            db = self.chat_history.db.connection()
            if db is not None:
                return db
        if self._memory_db is None:
            self._memory_db = retrieval.memory_index()
        return self._memory_db

    def _store(self, conversation: int | None, doc, passages) -> int:
        """Store a document with the conversation, or for this session only if the
        database refuses it (locked, read-only, full)."""
        try:
            return retrieval.add(self._documents_db(), conversation, doc, passages)
        except sqlite3.Error as exc:
            if self._in_memory or self.chat_history.db is None:
                raise
            self._say(f"The history database refused the document ({exc}): documents are kept "
                      "for this session only.", severity="warning", timeout=10)
            self._in_memory = True
            self._move_to_memory()
            return self._store(None, doc, passages)

    def _move_to_memory(self) -> None:
        db, moved = self._documents_db(), []
        for stored in self.attached:
            passages = documents.split(stored.document.text, self.tokenizer)
            doc_id = retrieval.add(db, None, stored.document, passages)
            moved.append(retrieval.StoredDocument(doc_id, stored.document))
        self.attached = moved

    def _unstore(self, stored: retrieval.StoredDocument) -> None:
        try:
            retrieval.remove(self._documents_db(), stored.id)
        except sqlite3.Error as exc:
            self._say(f"{stored.document.name} stays stored with the conversation: the history "
                      f"database refused the change ({exc}).", severity="warning")

    async def attach(self, path: str) -> bool:
        """Read, cut, index and store one file; False (with a notice) if it is refused."""
        if self.tokenizer is None:
            self.notify("The model is still loading (its tokenizer sizes documents).",
                        severity="warning")
            return False
        try:  # off the UI thread: a few MB take seconds to tokenize
            doc, passages = await asyncio.to_thread(self._read_and_split, path)
        except DocumentError as exc:
            self._say(str(exc), title="Not attached", severity="error", timeout=10)
            return False
        for stored in list(self.attached):
            if stored.document.path == doc.path:  # attaching again: the file as it is now
                self._unstore(stored)
                self.attached.remove(stored)
        conversation = None if self._in_memory else self.chat_history.ensure()
        doc_id = self._store(conversation, doc, passages)
        self.attached.append(retrieval.StoredDocument(doc_id, doc))
        self._say(f"Attached {doc.name} ({doc.tokens} tokens, {len(passages)} passages).")
        return True

    def _read_and_split(self, path: str):
        doc = documents.read(path, self.tokenizer)
        return doc, documents.split(doc.text, self.tokenizer)

    def detach(self, name: str = "") -> bool:
        """`/detach NAME` (or a number, or `all`); alone, with one document attached, that
        one. False (with a notice) where nothing was detached."""
        if not self.attached:
            self.notify("No document is attached.", severity="warning")
            return False
        names = [d.document.name for d in self.attached]
        if name == "all":
            chosen = list(self.attached)
        elif name:
            chosen = [d for i, d in enumerate(self.attached)
                      if name in (d.document.name, str(i + 1), d.document.path)]
        else:
            chosen = list(self.attached) if len(self.attached) == 1 else []
        if not chosen:
            self._say(f"Detach which one? /detach NAME, a number, or all ({', '.join(names)})",
                      severity="warning")
            return False
        for stored in chosen:
            self._unstore(stored)
            self.attached.remove(stored)
        self._say("Detached " + ", ".join(d.document.name for d in chosen) + ".")
        return True

    def load(self, conversation_id: int | None) -> None:
        """The documents stored with a conversation (none for a new one)."""
        self._in_memory = False
        try:
            self.attached = (retrieval.documents(self._documents_db(), conversation_id)
                             if conversation_id is not None else [])
        except sqlite3.Error as exc:
            self.attached = []
            self._say(f"The conversation's documents cannot be read ({exc}).", severity="error")
        self._missing_noted.clear()

    def refresh(self) -> None:
        """Bring every document up to date with its file before a reply."""
        for i, stored in enumerate(list(self.attached)):
            doc = stored.document
            why = documents.changed(doc)
            if why == "missing" and doc.path not in self._missing_noted:
                self._missing_noted.add(doc.path)
                self._say(f"{doc.name} is no longer readable on disk: the copy stored with this "
                          "conversation is used.", severity="warning", timeout=8)
            elif why == "changed":
                self._reread(i, stored)

    def _reread(self, index: int, stored: retrieval.StoredDocument) -> None:
        try:
            doc = documents.read(stored.document.path, self.tokenizer)
        except DocumentError as exc:
            self._say(f"{exc}: the copy stored with this conversation is used.",
                      severity="warning")
            return
        self._unstore(stored)
        passages = documents.split(doc.text, self.tokenizer)
        conversation = None if self._in_memory else self.chat_history.conversation_id
        self.attached[index] = retrieval.StoredDocument(self._store(conversation, doc, passages),
                                                        doc)
        self._say(f"{doc.name} changed on disk: read again ({doc.tokens} tokens).")

    def reply_records(self, session, messages: list[dict], options):
        """The engine's reply stream, the documents in its prompt (doc_prompt's split).
        Runs on the reply's worker thread: fitting a long prompt takes a while."""
        if not self.attached:
            self.last_plan = None
            return session.reply(messages, options)
        plan = doc_prompt.plan(self.tokenizer, messages, session.context_budget,
                               options.max_tokens, self._documents_db(), list(self.attached))
        self.last_plan = plan
        return session.reply_to_ids(plan.ids, options, plan.dropped_turns,
                                         plan.dropped_messages)

    def fit_mode(self, session, messages: list[dict], options) -> str:
        """How the documents would go into the next prompt: "whole" or "passages"."""
        if self.tokenizer is None or session is None:
            return "whole"
        messages = [*messages, {"role": "user", "content": ""}]
        budget = session.context_budget
        reserve = doc_prompt.reply_reserve(budget, options.max_tokens)
        whole = doc_prompt.whole_prompt(self.tokenizer, messages,
                                        [d.document for d in self.attached], budget, reserve)
        return "passages" if whole is None else "whole"

    def tokens(self, session, messages: list[dict], options) -> int:
        """What the documents add to the context before the next question."""
        if not self.attached:
            return 0
        if self.fit_mode(session, messages, options) == "whole":
            return sum(d.document.tokens for d in self.attached)
        budget = session.context_budget
        reserve = doc_prompt.reply_reserve(budget, options.max_tokens)
        return (budget - reserve) // 2
