"""The chat as a process: the `chat` command, no network, a kill -9 mid-reply."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from tui_helpers import (
    GREEDY,
    SIZE,
    type_and_send,
    wait_until,
)

from zephyr_local.history import History
from zephyr_local.tui.app import ChatApp
from zephyr_local.tui.config import ChatConfig


def test_chat_command_runs_pull_then_quantize_then_reopens(run_cli, tmp_path, monkeypatch):
    from zephyr_local.cli import cli

    calls = []
    results = iter(["pull", None])
    monkeypatch.setattr(ChatApp, "run", lambda self: calls.append("chat") or next(results))
    monkeypatch.setattr(cli.commands["pull"], "callback",
                        lambda **kw: calls.append(("pull", kw["repo_id"])))
    monkeypatch.setattr(cli.commands["quantize"], "callback",
                        lambda **kw: calls.append(("quantize", kw["model"], kw["bits"])))
    result = run_cli("chat", "--history", str(tmp_path / "h.sqlite"))
    assert result.exit_code == 0, result.output
    assert calls == ["chat", ("pull", "HuggingFaceH4/zephyr-7b-beta"),
                     ("quantize", "HuggingFaceH4/zephyr-7b-beta", 4), "chat"]


@pytest.mark.asyncio
async def test_no_network_connection_while_loading_and_chatting(test_model, tmp_path,
                                                               monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network connection attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    app = ChatApp(ChatConfig(model=str(test_model), options=GREEDY,
                             history_path=tmp_path / "history.sqlite"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.session is not None or app.load_error is not None)
        assert app.load_error is None
        await type_and_send(pilot, "Offline?")
        assert app.views()[1].finish_reason == "length"


CRASH_SCRIPT = textwrap.dedent("""
    import asyncio, sys, time
    import zephyr_local
    from zephyr_local.sampling import SamplingOptions
    from zephyr_local.tui.app import ChatApp
    from zephyr_local.tui.config import ChatConfig
    from zephyr_local.tui.widgets.prompt import PromptInput

    async def main(model, db):
        app = ChatApp(ChatConfig(model=model, history_path=db,
                                 options=SamplingOptions(temperature=0, max_tokens=6)))
        async with app.run_test() as pilot:
            async def until(cond):
                while not cond():
                    await pilot.pause(0.02)
            await until(lambda: app.session is not None)
            app.query_one(PromptInput).text = "first"
            await pilot.press("enter")
            await until(lambda: len(app.views()) == 2 and not app.generating)
            app.chat_history.options = SamplingOptions(temperature=0, max_tokens=100000)
            app.query_one(PromptInput).text = "second"
            await pilot.press("enter")
            await until(lambda: app.generating and app.views()[-1].markdown.source)
            print("STREAMING", flush=True)
            await asyncio.sleep(600)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def test_kill_9_mid_reply_keeps_every_completed_message(test_model, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    db = tmp_path / "history.sqlite"
    proc = subprocess.Popen([sys.executable, str(script), str(test_model), str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STREAMING", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    history = History(db)  # reopens after the crash (WAL recovery), no error
    [conv] = history.list()
    rows = history.messages(conv.id)
    history.close()
    assert [(m.role, m.content) for m in rows[:3]] == [
        ("user", "first"), ("assistant", rows[1].content), ("user", "second")]
    assert rows[1].finish_reason == "length" and rows[1].content
    assert len(rows) == 3  # only the reply in flight is lost
