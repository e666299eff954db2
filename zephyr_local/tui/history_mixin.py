"""The chat app's conversation bookkeeping: the SQLite history, the sidebar, export.

Every message is committed when it is complete (history.py), so a crash loses
at most the reply in flight. Without a usable database the app still chats,
and says that nothing is being saved.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from rich.text import Text

from zephyr_local import store
from zephyr_local.atomic import write_text
from zephyr_local.history import History, HistoryError, StoredMessage
from zephyr_local.sampling import SamplingOptions
from zephyr_local.tui.confirm_screen import ConfirmScreen
from zephyr_local.tui.generation import clean_for_display
from zephyr_local.tui.text_screen import TextEditScreen
from zephyr_local.tui.widgets.message import MessageView
from zephyr_local.tui.widgets.sidebar import HistorySidebar


class HistoryMixin:
    """Mixed into ChatApp: conversation state that lives in the history database."""

    def _init_history(self) -> None:
        self.history: History | None = None
        self.conversation_id: int | None = None
        self.system_prompt: str | None = None
        self.options: SamplingOptions = self.config.options
        self._search = ""

    def _open_history(self) -> None:
        try:
            self.history = History(self.config.history_path)
        except HistoryError as exc:
            self.notify(f"{exc}. Conversations will not be saved.", severity="error", timeout=30)

    def _close_history(self) -> None:
        if self.history is not None:
            self.history.close()

    def _reset_conversation_state(self) -> None:
        self.conversation_id = None
        self.options = self.config.options
        self.set_system_prompt_quietly(self.config.system_prompt)

    def set_system_prompt_quietly(self, text: str | None) -> None:
        self.system_prompt = text or None
        note = self.query_one("#system-note")
        note.update(Text(f"System: {clean_for_display(text)}" if text else ""))
        note.set_class(not text, "hidden")

    # -- writes ----------------------------------------------------------------

    def ensure_conversation(self) -> int | None:
        """The current conversation's id, creating it in the database if needed."""
        if self.history is None:
            return None
        if self.conversation_id is None:
            model = self.engine.loaded.path.name if self.engine else self.config.model
            self.conversation_id = self.history.create(
                system_prompt=self.system_prompt, sampling=asdict(self.options), model=model)
        return self.conversation_id

    def save_message(self, message: StoredMessage) -> None:
        """Commit one complete message (creating the conversation on its first), after
        the current branch's last message."""
        if self.ensure_conversation() is None:
            return
        self.history.append(self.conversation_id, message)
        self.call_later(self.refresh_sidebar)

    def truncate_messages(self, keep: int) -> None:
        if self.history is not None and self.conversation_id is not None:
            self.history.truncate(self.conversation_id, keep)

    def store_system_prompt(self) -> None:
        if self.history is not None and self.conversation_id is not None:
            self.history.set_system_prompt(self.conversation_id, self.system_prompt)

    def store_sampling(self) -> None:
        if self.history is not None and self.conversation_id is not None:
            self.history.set_sampling(self.conversation_id, asdict(self.options))

    # -- conversations -----------------------------------------------------------

    async def action_new_chat(self) -> None:
        if self.generating:
            self.notify("Stop the reply (Esc) first.", severity="warning")
            return
        await self.query_one("#chat").remove_children(MessageView)
        self._reset_conversation_state()
        self.query_one("#status").set_stats(None)
        await self.load_documents(None)
        self.query_one("#prompt").focus()

    async def open_conversation(self, conversation_id: int) -> None:
        """Resume a stored conversation: its messages, system prompt and sampling."""
        if self.generating:
            self.notify("Stop the reply (Esc) first.", severity="warning")
            return
        conv = self.history.get(conversation_id) if self.history else None
        if conv is None:
            self.notify("That conversation no longer exists.", severity="error")
            return
        chat = self.query_one("#chat")
        await chat.remove_children(MessageView)
        views = [MessageView.from_stored(m) for m in self.history.messages(conversation_id)]
        await chat.mount_all(views)
        self.conversation_id = conversation_id
        self.set_system_prompt_quietly(conv.system_prompt)
        fields = SamplingOptions.__dataclass_fields__
        saved = {k: v for k, v in (conv.sampling or {}).items() if k in fields}
        self.options = replace(self.config.options, **saved)
        self.query_one("#status").set_stats(None)
        await self.load_documents(conversation_id)
        chat.scroll_end(animate=False)
        chat.anchor()

    async def refresh_sidebar(self) -> None:
        sidebar = self.query_one(HistorySidebar)
        if self.history is None or sidebar.has_class("hidden"):
            return
        await sidebar.show(self.history.list(self._search), self.conversation_id)

    async def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(HistorySidebar)
        sidebar.toggle_class("hidden")
        if sidebar.has_class("hidden"):
            self.query_one("#prompt").focus()
            return
        if self.history is None:
            self.notify("No history database is open.", severity="error")
        await self.refresh_sidebar()
        sidebar.list_view.focus()

    async def on_history_sidebar_search_changed(self, event: HistorySidebar.SearchChanged) -> None:
        self._search = event.text
        await self.refresh_sidebar()

    async def on_history_sidebar_selected(self, event: HistorySidebar.Selected) -> None:
        await self.open_conversation(event.conversation_id)
        self.query_one("#prompt").focus()

    def on_history_sidebar_rename_requested(self, event: HistorySidebar.RenameRequested) -> None:
        async def renamed(title: str | None) -> None:
            if title is None or self.history is None:
                return
            try:
                self.history.rename(event.conversation_id, title)
            except HistoryError as exc:
                self.notify(str(exc), severity="error")
            await self.refresh_sidebar()

        self.push_screen(TextEditScreen("Rename conversation", event.title), renamed)

    async def on_history_sidebar_delete_requested(
        self, event: HistorySidebar.DeleteRequested
    ) -> None:
        if self.history is None:
            return
        if event.conversation_id == self.conversation_id:
            if self.generating:
                self.notify("Stop the reply (Esc) first.", severity="warning")
                return
            await self.action_new_chat()
        self.history.delete(event.conversation_id)
        self.notify("Conversation deleted.")
        await self.refresh_sidebar()

    # -- export ------------------------------------------------------------------

    def action_export(self, target: str | None = None) -> None:
        """Write the current branch as Markdown and/or JSON (`{"messages": [...]}`);
        `--all-branches` adds every version to the JSON. Asks before overwriting."""
        if self.history is None or self.conversation_id is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        words = (target or "").split()
        all_branches = "--all-branches" in words
        target = " ".join(w for w in words if w != "--all-branches")
        if target:
            paths = [Path(target).expanduser()]
        else:
            base = store.home_dir() / "exports" / f"chat-{self.conversation_id}"
            paths = [base.with_suffix(".md"), base.with_suffix(".json")]
        existing = [p for p in paths if p.exists()]
        if not existing:
            self._write_export(paths, all_branches)
            return

        def answered(overwrite: bool | None) -> None:
            if overwrite:
                self._write_export(paths, all_branches)
            else:
                self.notify("Not exported: the existing file is unchanged.")

        names = ", ".join(str(p) for p in existing)
        self.push_screen(ConfirmScreen(f"{names} exists. Overwrite it?", "Overwrite"), answered)

    def _write_export(self, paths: list[Path], all_branches: bool) -> None:
        try:
            for path in paths:
                if path.suffix.lower() == ".json":
                    data = self.history.export_json(self.conversation_id, all_branches)
                    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
                else:
                    write_text(path, self.history.export_markdown(self.conversation_id))
        except OSError as exc:
            self.notify(f"Export failed: {exc}", severity="error")
            return
        self.notify("Exported to " + ", ".join(str(p) for p in paths))
