"""The chat's conversation as the history database keeps it: one component the app owns.

Every message is committed when it is complete (history.py), so a crash loses at
most the reply in flight. All database calls go through GuardedHistory: without a
usable database the chat goes on, and says that nothing is being saved.

ChatHistory holds the current conversation's id, system prompt and sampling, and
knows nothing of the screen. The app calls its methods; it talks back only through
the two callbacks it was given: `notify(message, **kwargs)` for notices and
`on_saved()` after each committed message (the app refreshes the sidebar).
Where the app hooks per-conversation state (such as a saved KV cache): after
`load` or `reset` (a conversation opened: `ChatApp.conversation_opened`) and
after `save` of an assistant message (a reply completed: `ChatApp._reply_done`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from zephyr_local import store
from zephyr_local.atomic import write_text
from zephyr_local.errors import ZephyrError
from zephyr_local.history import Conversation, HistoryError, StoredMessage
from zephyr_local.sampling import SamplingOptions
from zephyr_local.tui.guarded_history import GuardedHistory

ALL_BRANCHES = "--all-branches"


class ChatHistory:
    """The current conversation and the database it is saved in.

    Args:
        path: the history database (None: the default location).
        system_prompt, options: what a new conversation starts with.
        model_name: called when a conversation is created, for its `model` column.
        notify: shows a notice, called as `notify(message, severity=..., timeout=...)`.
        on_saved: called after a message was committed (or queued) for the conversation.
    """

    def __init__(self, path: str | Path | None, system_prompt: str | None,
                 options: SamplingOptions, model_name: Callable[[], str | None],
                 notify: Callable[..., None], on_saved: Callable[[], None] = lambda: None):
        self.path = path
        self.default_system_prompt, self.default_options = system_prompt or None, options
        self.model_name, self.notify, self.on_saved = model_name, notify, on_saved
        self.db: GuardedHistory | None = None
        self.conversation_id: int | None = None
        self.system_prompt: str | None = self.default_system_prompt
        self.options: SamplingOptions = options
        self.search = ""  # the sidebar's filter

    def open(self) -> None:
        """Open the database; without one (a notice says why) nothing is saved."""
        try:
            self.db = GuardedHistory(self.path, self._problem)
        except HistoryError as exc:
            self.notify(f"{exc}. Conversations will not be saved.", severity="error", timeout=30)

    def _problem(self, reason: str | None, damaged: bool) -> None:
        """The database stopped (or resumed) taking changes: say so, keep chatting."""
        if reason is None:
            self.notify("History is being saved again.")
            return
        retry = ("This chat is kept in memory (/export saves it)." if damaged
                 else "Everything is kept in memory and saved when it works again.")
        self.notify(f"History is not being saved: {reason}. {retry}", severity="warning",
                    timeout=20)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    # -- the current conversation ----------------------------------------------

    def reset(self) -> None:
        """A new conversation (not in the database until its first message)."""
        self.conversation_id = None
        self.options = self.default_options
        self.system_prompt = self.default_system_prompt

    def load(self, conversation_id: int) -> list[StoredMessage] | None:
        """Make a stored conversation the current one (its system prompt and sampling);
        its messages on the current branch, or None if it no longer exists."""
        conv: Conversation | None = self.db.get(conversation_id) if self.db else None
        if conv is None:
            return None
        messages = self.db.messages(conversation_id)
        self.conversation_id = conversation_id
        self.system_prompt = conv.system_prompt or None
        fields = SamplingOptions.__dataclass_fields__
        saved = {k: v for k, v in (conv.sampling or {}).items() if k in fields}
        self.options = replace(self.default_options, **saved)
        return messages

    def ensure(self) -> int | None:
        """The current conversation's id, creating it in the database if needed."""
        if self.db is None:
            return None
        if self.conversation_id is None:
            self.conversation_id = self.db.create(
                system_prompt=self.system_prompt, sampling=asdict(self.options),
                model=self.model_name())
        return self.conversation_id

    def save(self, message: StoredMessage) -> None:
        """Commit one complete message (creating the conversation on its first), after
        the current branch's last message."""
        if self.ensure() is None:
            return
        self.db.append(self.conversation_id, message)
        self.conversation_id = self.db.resolve(self.conversation_id)
        self.on_saved()

    def _saved(self) -> bool:
        return self.db is not None and self.conversation_id is not None

    def truncate(self, keep: int) -> None:
        """Keep only the first `keep` messages of the current branch."""
        if self._saved():
            self.db.truncate(self.conversation_id, keep)

    def set_system_prompt(self, text: str | None) -> None:
        self.system_prompt = text or None
        if self._saved():
            self.db.set_system_prompt(self.conversation_id, self.system_prompt)

    def set_options(self, options: SamplingOptions) -> None:
        self.options = options
        if self._saved():
            self.db.set_sampling(self.conversation_id, asdict(options))

    # -- versions (the tree of branches) ----------------------------------------------

    @property
    def branching(self) -> bool:
        """Versions are kept only where there is a database to keep them in."""
        return self._saved()

    def messages(self) -> list[StoredMessage]:
        """The current branch as stored (empty without a saved conversation)."""
        return self.db.messages(self.conversation_id) if self._saved() else []

    def switch(self, message_id: int, step: int) -> int | None:
        """Show another version of a message: the new leaf, None past the first or last."""
        return self.db.switch(self.conversation_id, message_id, step)

    def branch_at(self, message) -> bool:
        """Continue the conversation from just before `message` (a MessageView: its
        message_id and parent_id), so that what follows is a new version of it; False
        where the message is not stored (nothing to keep)."""
        if not self.branching or message.message_id is None:
            return False
        self.db.set_leaf(self.conversation_id, message.parent_id)
        return True

    def restore_replaced(self) -> int | None:
        """After a failed regenerate: make the reply it was replacing current again; the
        index to show the branch from, None where there was none."""
        current = self.messages()
        if not current or current[-1].role != "user":
            return None
        leaf = self.switch(current[-1].id, 0)
        return None if leaf is None or leaf == current[-1].id else len(current) - 1

    # -- other conversations ------------------------------------------------------

    def conversations(self) -> list[Conversation]:
        """Stored conversations matching the sidebar's search, newest first."""
        return self.db.list(self.search) if self.db is not None else []

    def rename(self, conversation_id: int, title: str) -> None:
        try:
            self.db.rename(conversation_id, title)
        except HistoryError as exc:
            self.notify(str(exc), severity="error")

    def delete(self, conversation_id: int) -> None:
        self.db.delete(conversation_id)
        self.notify("Conversation deleted.")

    # -- export ------------------------------------------------------------------------

    def export(self, target: str | None, shown: list[dict],
               confirm: Callable[[str, Callable[[bool | None], None]], None]) -> None:
        """Write the current branch as Markdown and/or JSON (`{"messages": [...]}`);
        `--all-branches` adds every version to the JSON. `shown`: the messages on
        screen (role, content, finish_reason); `confirm(question, answered)` asks
        before overwriting."""
        if self.export_texts(False, shown) is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        words = (target or "").split()
        all_branches = ALL_BRANCHES in words
        target = " ".join(w for w in words if w != ALL_BRANCHES)
        try:
            if target:
                paths = [Path(target).expanduser()]
            else:
                name = f"chat-{self.conversation_id or 'unsaved'}"
                base = store.home_dir() / "exports" / name
                paths = [base.with_suffix(".md"), base.with_suffix(".json")]
        except ZephyrError as exc:
            self.notify(f"Export failed: {exc}", severity="error")
            return
        existing = [p for p in paths if p.exists()]
        if not existing:
            self._write_export(paths, all_branches, shown)
            return

        def answered(overwrite: bool | None) -> None:
            if overwrite:
                self._write_export(paths, all_branches, shown)
            else:
                self.notify("Not exported: the existing file is unchanged.")

        confirm(", ".join(str(p) for p in existing) + " exists. Overwrite it?", answered)

    def _write_export(self, paths: list[Path], all_branches: bool, shown: list[dict]) -> None:
        data, markdown = self.export_texts(all_branches, shown)
        try:
            for path in paths:
                if path.suffix.lower() == ".json":
                    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
                else:
                    write_text(path, markdown)
        except (OSError, ZephyrError) as exc:
            self.notify(f"Export failed: {exc}", severity="error")
            return
        self.notify("Exported to " + ", ".join(str(p) for p in paths))

    def export_texts(self, all_branches: bool, shown: list[dict]) -> tuple[dict, str] | None:
        """The conversation as JSON data and Markdown: from the database when it holds all
        of it, else from `shown` (while the database fails, the screen is the record)."""
        h, cid = self.db, self.conversation_id
        if h is not None and cid is not None and cid > 0 and not h.pending and not h.damaged:
            data, markdown = h.export_json(cid, all_branches), h.export_markdown(cid)
            if data is not None and markdown is not None:
                return data, markdown
        if not shown:
            return None
        parts = ["# Conversation\n"]
        messages = [{"role": m["role"], "content": m["content"]} for m in shown]
        if self.system_prompt:
            parts.append(f"**System:**\n\n{self.system_prompt}\n")
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        for m in shown:
            note = " (stopped)" if m.get("finish_reason") == "cancelled" else ""
            parts.append(f"**{m['role'].capitalize()}{note}:**\n\n{m['content']}\n")
        return {"messages": messages}, "\n".join(parts)
