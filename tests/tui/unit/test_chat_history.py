"""ChatHistory alone, no app: what it writes is read back through History itself."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

from zephyr_local.history import History, StoredMessage
from zephyr_local.sampling import SamplingOptions
from zephyr_local.tui.chat_history import ChatHistory

OPTIONS = SamplingOptions(temperature=0.0, max_tokens=8)


def open_history(path, system_prompt=None, notes=None, saved=None) -> ChatHistory:
    notes = [] if notes is None else notes
    chat = ChatHistory(path, system_prompt, OPTIONS, lambda: "zephyr-test",
                       lambda message, **kw: notes.append(message),
                       (lambda: saved.append(1)) if saved is not None else (lambda: None))
    chat.open()
    return chat


def test_the_first_message_creates_the_conversation_and_each_is_committed(tmp_path):
    saved: list[int] = []
    chat = open_history(tmp_path / "h.sqlite", "Be brief.", saved=saved)
    assert chat.conversation_id is None  # nothing in the database before a message
    chat.save(StoredMessage("user", "hello"))
    chat.save(StoredMessage("assistant", "hi", "stop"))
    db = History(tmp_path / "h.sqlite")  # a second reader sees it before close
    [conv] = db.list()
    assert conv.id == chat.conversation_id
    assert (conv.system_prompt, conv.model, conv.sampling) == ("Be brief.", "zephyr-test",
                                                              asdict(OPTIONS))
    assert [(m.role, m.content) for m in db.messages(conv.id)] == [("user", "hello"),
                                                                   ("assistant", "hi")]
    db.close()
    chat.close()
    assert saved == [1, 1]


def test_load_takes_the_stored_system_prompt_and_sampling_and_reset_the_defaults(tmp_path):
    db = History(tmp_path / "h.sqlite")
    cid = db.create(system_prompt="Old prompt", sampling={"top_p": 0.5, "gone_field": 1})
    db.append(cid, StoredMessage("user", "stored question"))
    db.close()
    chat = open_history(tmp_path / "h.sqlite", "Default prompt")
    assert chat.load(cid + 1) is None and chat.conversation_id is None
    messages = chat.load(cid)
    assert [m.content for m in messages] == ["stored question"]
    assert (chat.conversation_id, chat.system_prompt) == (cid, "Old prompt")
    assert (chat.options.top_p, chat.options.max_tokens) == (0.5, OPTIONS.max_tokens)
    chat.reset()
    assert (chat.conversation_id, chat.system_prompt, chat.options) == (None, "Default prompt",
                                                                       OPTIONS)
    chat.close()


def test_a_regenerate_that_fails_gets_the_replaced_reply_back(tmp_path):
    chat = open_history(tmp_path / "h.sqlite")
    chat.save(StoredMessage("user", "q"))
    chat.save(StoredMessage("assistant", "first answer", "stop"))
    reply = chat.messages()[-1]
    view = SimpleNamespace(message_id=reply.id, parent_id=reply.parent_id)
    assert chat.branch_at(view)  # the next reply would be another version of this one
    assert [m.content for m in chat.messages()] == ["q"]
    assert chat.restore_replaced() == 0  # show the branch again from the question on
    assert [m.content for m in chat.messages()] == ["q", "first answer"]
    assert chat.restore_replaced() is None  # the branch ends in a reply: nothing to restore
    chat.close()


def test_without_a_database_it_says_so_once_and_exports_what_is_shown(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    notes: list[str] = []
    chat = open_history(tmp_path / "not-a-dir" / "h.sqlite", "Sys", notes=notes)
    assert chat.db is None and len(notes) == 1 and "will not be saved" in notes[0]
    chat.save(StoredMessage("user", "kept on screen only"))
    assert chat.conversation_id is None and not chat.branching and chat.messages() == []
    shown = [{"role": "user", "content": "q", "finish_reason": None},
             {"role": "assistant", "content": "part", "finish_reason": "cancelled"}]
    data, markdown = chat.export_texts(False, shown)
    assert data == {"messages": [{"role": "system", "content": "Sys"},
                                 {"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "part"}]}
    assert "**Assistant (stopped):**\n\npart" in markdown and "**System:**\n\nSys" in markdown
    assert chat.export_texts(False, []) is None
