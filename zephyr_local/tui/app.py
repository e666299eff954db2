"""The chat app: conversation view, input, status bar, history sidebar.

The app owns the engine, the ChatHistory (the conversation as the database keeps it,
chat_history.py) and the ChatDocuments (attached documents, chat_documents.py), and
coordinates its widgets, which do their own display and post what the app must act on:
PromptInput parses slash commands (CommandEntered) and messages (Submitted); ChatView
(widgets/chat_view.py) shows the messages, switches versions, edits, and streams each
reply on a thread worker (ReplyFinished, ReplyFailed); the model loads on a worker
thread while the app is already usable (model_loading.py).

Per-conversation state outside the database (such as a saved KV cache) hooks in
at two points: `conversation_opened` (after a stored conversation is shown, or a
new chat started) and `_reply_done` (after a reply is committed).
"""

from __future__ import annotations

import inspect
from dataclasses import asdict
from functools import partial

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Static

from zephyr_local.errors import ZephyrError
from zephyr_local.history import StoredMessage
from zephyr_local.sampling import SamplingOptions
from zephyr_local.tui.attach_screen import AttachScreen
from zephyr_local.tui.chat_documents import ChatDocuments
from zephyr_local.tui.chat_history import ChatHistory
from zephyr_local.tui.commands import APP_BINDINGS, COMMANDS
from zephyr_local.tui.config import DISCLAIMER, ChatConfig
from zephyr_local.tui.confirm_screen import ConfirmScreen
from zephyr_local.tui.help_screen import HelpScreen
from zephyr_local.tui.missing_screen import ModelMissingScreen
from zephyr_local.tui.model_loading import load_engine, template_notice
from zephyr_local.tui.sampling_screen import SamplingScreen
from zephyr_local.tui.widgets.chat_view import ChatView
from zephyr_local.tui.widgets.chips import DocumentChips
from zephyr_local.tui.widgets.message import MessageView
from zephyr_local.tui.widgets.prompt import PromptInput
from zephyr_local.tui.widgets.sidebar import HistorySidebar
from zephyr_local.tui.widgets.status import StatusBar


class ChatApp(App):
    """Chat with Zephyr. Pass `engine` to reuse a loaded Engine (tests, benchmarks)."""

    CSS_PATH = "chat.tcss"
    TITLE = "zephyr-local chat"
    BINDINGS = APP_BINDINGS

    def __init__(self, config: ChatConfig | None = None, engine=None) -> None:
        super().__init__()
        self.config = config or ChatConfig()
        self.engine, self.session = engine, None
        self._owns_engine = engine is None
        self.load_error: ZephyrError | None = None
        self.generating = False
        self.last_final = None  # the final Response record of the last reply
        cfg = self.config
        self.chat_history = ChatHistory(cfg.history_path, cfg.system_prompt, cfg.options,
                                        self._model_name,
                                        lambda message, **kw: self.notify(message, **kw),
                                        self._history_saved, cfg.kv_cache_max_gb)
        self.documents = ChatDocuments(self.chat_history,
                                       lambda message, **kw: self.notify(message, **kw))

    def notify(self, message: str, *, markup: bool = False, **kwargs) -> None:
        """Notices carry user and model text (`/[/]`, a path with `[`): plain by default,
        since Textual would parse them as markup and raise MarkupError."""
        super().notify(message, markup=markup, **kwargs)

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield HistorySidebar(self.chat_history, id="sidebar", classes="hidden")
            with Vertical(id="conversation"):
                yield ChatView(self.chat_history, lambda: self.generating, id="chat")
                yield DocumentChips(id="chips", classes="hidden")
                yield PromptInput(id="prompt")
                yield Static(DISCLAIMER, id="disclaimer")
                yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.chat_view.anchor()
        self.query_one(PromptInput).focus()
        self.chat_history.open()
        self.chat_view.show_system_prompt(self.chat_history.system_prompt)
        if self.engine is not None:
            self._model_ready(self.engine)
        else:
            self._load_model()

    def on_unmount(self) -> None:
        if self.session is not None:
            self.session.cancel()
        if self._owns_engine and self.engine is not None:
            self.engine.close()
        self.chat_history.close()

    # -- the model -------------------------------------------------------------

    @work(thread=True, group="load", exit_on_error=False)
    def _load_model(self) -> None:
        try:
            engine = load_engine(self.config)
        except ZephyrError as exc:
            self.call_from_thread(self._model_failed, exc)
            return
        self.call_from_thread(self._model_ready, engine)

    def _model_ready(self, engine) -> None:
        self.engine, self.documents.tokenizer = engine, engine.tokenizer
        cfg = self.config
        self.session = engine.session(cfg.context_budget, cfg.lookup, cfg.kv_bits)
        self.query_one(StatusBar).show_model(engine.loaded)
        self._show_context_estimate()
        notice = template_notice(engine.tokenizer)
        if notice:
            self.notify(notice, timeout=8)

    def _history_saved(self) -> None:
        self.call_later(self.query_one(HistorySidebar).refresh_list)

    def _model_name(self) -> str | None:
        return self.engine.loaded.path.name if self.engine else self.config.model

    def _model_failed(self, exc: ZephyrError) -> None:
        self.load_error = exc
        screen = ModelMissingScreen.for_error(exc, self.config.model, self.config.adapter)
        self.query_one(StatusBar).set_model(f"no model ({screen.title_text.lower()})", "")
        self.push_screen(screen)

    def _show_context_estimate(self) -> None:
        """Context used by the conversation as it stands (before the next reply)."""
        if self.session is None:
            return
        from zephyr_local.template import encode

        messages = self.chat_view.conversation()
        used = len(encode(self.engine.tokenizer, messages)) if len(messages) > 0 else 0
        used += self.documents.tokens(self.session, messages, self.chat_history.options)
        self.query_one(StatusBar).set_context(used, self.session.context_budget)

    # -- sending and streaming -------------------------------------------------

    @property
    def chat_view(self) -> ChatView:
        return self.query_one(ChatView)

    def views(self) -> list[MessageView]:
        return self.chat_view.views()

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        if await self.send(event.text):
            self.query_one(PromptInput).accept()

    async def on_prompt_input_command_entered(self, event: PromptInput.CommandEntered) -> None:
        method = getattr(self, f"action_{event.command.action}")
        result = method(event.argument) if event.command.takes_text else method()
        if inspect.isawaitable(result):
            await result

    async def send(self, text: str) -> bool:
        """Add a user message and start the reply; False (with a notice) if it cannot."""
        if not text.strip():
            self.notify("The message is empty.", severity="warning")
            return False
        if not self._can_generate():
            return False
        self.chat_history.save(StoredMessage("user", text))
        await self.chat_view.mount(MessageView("user", text))
        self.chat_view.sync(self.chat_history.messages())
        await self._start_reply()
        return True

    def _can_generate(self) -> bool:
        if self.generating:
            self.notify("A reply is still streaming: Esc stops it.", severity="warning")
            return False
        if self.session is None:
            message = str(self.load_error) if self.load_error else "The model is still loading."
            self.notify(message, severity="error" if self.load_error else "warning")
            return False
        return True

    async def _start_reply(self) -> None:
        messages = self.chat_view.conversation()  # before the reply's own view joins it
        self.generating = True
        self.documents.refresh()
        self.session.keep_cache(*self.chat_history.kv_cache())  # resume from / save to disk
        await self.chat_view.stream_reply(partial(self.documents.reply_records, self.session,
                                                  messages, self.chat_history.options))

    async def on_chat_view_reply_finished(self, event: ChatView.ReplyFinished) -> None:
        await self._reply_done(event.view, event.text, event.final)

    async def _reply_done(self, view: MessageView, text: str, final) -> None:
        """Save the reply the view shows (finished or stopped) and show its stats."""
        reason = final.finish_reason if final else "cancelled"
        stats = final.stats if final else None
        plan = self.documents.last_plan
        sources = [asdict(u) for u in plan.used] if plan else []
        view.set_sources(sources)
        self.chat_history.save(StoredMessage("assistant", text, reason,
                                             asdict(stats) if stats else None, sources or None))
        self.chat_view.sync(self.chat_history.messages())
        self.generating, self.last_final = False, final
        if self.documents.attached and plan:
            await self.show_documents(plan.mode)
        if stats is not None:
            self.query_one(StatusBar).show_reply(stats, self.session.context_budget)
            self.chat_view.mark_dropped(stats.dropped_messages)
            if stats.dropped_turns:
                self.notify(f"{stats.dropped_turns} oldest turn(s) no longer fit the context "
                            "budget and were left out of the prompt.", severity="warning")

    def on_chat_view_reply_failed(self, event: ChatView.ReplyFailed) -> None:
        if event.unsent is not None:
            self.query_one(PromptInput).give_back(event.unsent)
        self.generating = False  # only now: the conversation on screen is settled
        self.notify(f"Generation failed: {event.error}", severity="error", timeout=10)

    # -- conversations (the history sidebar, export) ------------------------------

    def _busy(self) -> bool:
        if self.generating:
            self.notify("Stop the reply (Esc) first.", severity="warning")
        return self.generating

    async def action_new_chat(self) -> None:
        if self._busy():
            return
        await self.chat_view.remove_children(MessageView)
        self.chat_history.reset()
        await self.conversation_opened()
        self.query_one(PromptInput).focus()

    async def open_conversation(self, conversation_id: int) -> None:
        """Resume a stored conversation: its messages, system prompt and sampling."""
        if self._busy() or conversation_id == self.chat_history.conversation_id:
            return  # already on screen, with changes the database may not have yet
        messages = self.chat_history.load(conversation_id)
        if messages is None:
            self.notify("That conversation no longer exists.", severity="error")
            return
        chat = self.chat_view
        await chat.show(messages)
        await self.conversation_opened()
        chat.scroll_end(animate=False)
        chat.anchor()

    async def conversation_opened(self) -> None:
        """The screen shows another conversation (a stored one, or a new chat)."""
        self.chat_view.show_system_prompt(self.chat_history.system_prompt)
        self.query_one(StatusBar).set_stats(None)
        self.documents.load(self.chat_history.conversation_id)
        await self.show_documents()

    async def action_toggle_sidebar(self) -> None:
        if not await self.query_one(HistorySidebar).toggle():
            self.query_one(PromptInput).focus()

    async def on_history_sidebar_selected(self, event: HistorySidebar.Selected) -> None:
        await self.open_conversation(event.conversation_id)
        self.query_one(PromptInput).focus()

    async def on_history_sidebar_delete_requested(
        self, event: HistorySidebar.DeleteRequested
    ) -> None:
        if self.chat_history.db is None:
            return
        if event.conversation_id == self.chat_history.conversation_id:
            if self._busy():
                return
            await self.action_new_chat()
        self.chat_history.delete(event.conversation_id)
        await self.query_one(HistorySidebar).refresh_list()

    def action_export(self, target: str | None = None) -> None:
        """`/export [PATH] [--all-branches]` (ChatHistory.export)."""
        def confirm(question: str, answered) -> None:
            self.push_screen(ConfirmScreen(question, "Overwrite"), answered)

        self.chat_history.export(target, self.chat_view.shown(), confirm)

    def on_chat_view_prompt_changed(self, event: ChatView.PromptChanged) -> None:
        self._show_context_estimate()

    # -- documents -------------------------------------------------------------------

    async def action_attach(self, path: str | None = None) -> None:
        if not path:
            self.push_screen(AttachScreen(), lambda chosen: chosen and self.attach(chosen))
        else:
            await self.attach(path)

    async def attach(self, path: str) -> None:
        if await self.documents.attach(path):
            await self.show_documents()

    async def action_detach(self, name: str = "") -> None:
        if self.documents.detach(name):
            await self.show_documents()

    async def show_documents(self, mode: str | None = None) -> None:
        docs = self.documents
        if mode is None and docs.attached:
            mode = docs.fit_mode(self.session, self.chat_view.conversation(),
                                 self.chat_history.options)
        await self.query_one(DocumentChips).show([d.document for d in docs.attached], mode)
        self._show_context_estimate()

    # -- actions -----------------------------------------------------------------

    def action_stop(self) -> None:
        if self.generating and self.session is not None:
            self.session.cancel()

    async def action_regenerate(self) -> None:
        if not self._can_generate():
            return
        views = self.views()
        if views and views[-1].role == "assistant":
            await self.chat_view.cut(views.pop())  # a new version of it, where kept
        if not views:
            self.notify("Nothing to regenerate yet.", severity="warning")
            return
        await self._start_reply()

    async def on_chat_view_resend_requested(self, event: ChatView.ResendRequested) -> None:
        """An edited message: a new version of it (or, unsaved, the turns from it dropped)."""
        if self._can_generate():
            await self.chat_view.cut(event.view)
            await self.send(event.text)

    def action_system_prompt(self, text: str | None = None) -> None:
        self.chat_view.edit_system_prompt(text)

    def action_sampling(self) -> None:
        def chosen(options: SamplingOptions | None) -> None:
            if options is not None:
                self.chat_history.set_options(options)
                self.notify("Sampling settings saved for this conversation.")

        self.push_screen(SamplingScreen(self.chat_history.options), chosen)

    def action_copy_reply(self) -> None:
        self.chat_view.copy_last_reply()

    def action_copy_code(self) -> None:
        self.chat_view.copy_last_reply(code=True)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for command in COMMANDS:
            yield SystemCommand(command.title, command.help,
                                partial(self.run_action, command.action))
