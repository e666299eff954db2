"""The Zephyr template against Hugging Face's own apply_chat_template (the oracle)."""

from __future__ import annotations

import pytest

from zephyr_local import template
from zephyr_local.errors import ContextOverflowError, TemplateError

PIRATE = "You are a friendly chatbot who always responds in the style of a pirate"

CONVERSATIONS = {
    "system+user": [
        {"role": "system", "content": PIRATE},
        {"role": "user", "content": "How many helicopters can a human eat in one sitting?"},
    ],
    "multi-turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
    "no-system": [{"role": "user", "content": "What is 2 + 2?"}],
    "unicode": [
        {"role": "user", "content": "héllo wörld, 你好, Привет, مرحبا 🎉🚀 — “quotes” ½"},
        {"role": "assistant", "content": "¡Hola! 👋"},
        {"role": "user", "content": "ñ ß ø"},
    ],
    "code": [
        {"role": "user", "content": "Fix this:\n```python\ndef f(x):\n    return x+1\n```"},
        {"role": "assistant",
         "content": "```python\ndef f(x: int) -> int:\n\treturn x + 1\n```\nDone."},
        {"role": "user", "content": "Now in C: `int f(int x) { return x + 1; }`"},
    ],
    "multi-line": [
        {"role": "system", "content": "Line one.\nLine two.\n\nLine four."},
        {"role": "user", "content": "a\n\n\nb\n  indented\n\ttabbed\n"},
    ],
    "whitespace": [
        {"role": "user", "content": "  leading and trailing spaces  "},
        {"role": "assistant", "content": "double  spaces   and    more"},
        {"role": "user", "content": " "},
    ],
    "markup-like": [
        {"role": "user", "content": "What does <|user|> mean? And <b>bold</b> & <s> tags?"},
    ],
}


@pytest.mark.parametrize("add_gen", [True, False], ids=["gen-prompt", "no-gen-prompt"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_ids_match_hugging_face(hf_tokenizer, engine, name, add_gen):
    messages = CONVERSATIONS[name]
    expected_text = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_gen
    )
    assert template.render(messages, add_gen) == expected_text
    expected_ids = hf_tokenizer(expected_text)["input_ids"]
    # The engine's tokenizer (mlx-lm's wrapper) must give the same ids.
    assert template.encode(engine.tokenizer, messages, add_gen) == expected_ids


# "markup-like" holds a literal "<s>", which Hugging Face (and so we) encode as id 1.
@pytest.mark.parametrize("name", sorted(set(CONVERSATIONS) - {"markup-like"}))
def test_token_structure(engine, name):
    messages = CONVERSATIONS[name]
    ids = template.encode(engine.tokenizer, messages)
    assert ids[0] == 1 and ids.count(1) == 1, "BOS exactly once, first"
    assert ids.count(2) == len(messages), "every turn closed by EOS id 2"
    # After each </s> the legacy tokenizer emits the dummy-prefix "▁" then "\n".
    for i, tok in enumerate(ids):
        if tok == 2:
            assert ids[i + 1 : i + 3] == [28705, 13]
    # The generation prompt is <|assistant|>\n.
    assert engine.tokenizer.decode(ids[-7:]).endswith("<|assistant|>\n")


def test_matches_sentencepiece_directly(test_model, engine):
    """An oracle independent of Hugging Face: sentencepiece itself, chunk by chunk."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(test_model / "tokenizer.model"))
    messages = CONVERSATIONS["multi-turn"] + [{"role": "assistant", "content": "Green, or red."}]
    text = template.render(messages, add_generation_prompt=False)
    expected = [1]
    for i, chunk in enumerate(text.split("</s>")):
        expected += sp.encode(chunk) if chunk else []
        expected += [2] if i < text.count("</s>") else []
    assert template.encode(engine.tokenizer, messages, False) == expected


def test_rendered_reference_example():
    text = template.render(CONVERSATIONS["system+user"])
    assert text == (
        f"<|system|>\n{PIRATE}</s>\n<|user|>\n"
        "How many helicopters can a human eat in one sitting?</s>\n<|assistant|>\n"
    )


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([], "empty"),
        ("hello", "expected a list of messages, not str"),
        ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}],
         "message 1: unknown role 'tool'"),
        ([{"role": "user", "content": ["a"]}], "message 0: content must be a string, not list"),
        ([{"role": "user", "content": "a"}, {"role": "assistant"}],
         "message 1: content must be a string"),
        ([{"role": "user", "content": "a"}, "text"], "message 1: expected an object"),
        ([{"content": "a"}], "message 0: unknown role None"),
    ],
)
def test_bad_conversations_are_rejected(messages, fragment):
    with pytest.raises(TemplateError, match=fragment.replace("(", r"\(")):
        template.render(messages)


def _long_conversation(turns: int) -> list[dict]:
    msgs = [{"role": "system", "content": "Keep me."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Question {i}: " + "tell me more " * 10})
        msgs.append({"role": "assistant", "content": f"Answer {i}: " + "here is more " * 10})
    msgs.append({"role": "user", "content": "Last question?"})
    return msgs


def test_budget_drops_oldest_turns_and_keeps_system(engine):
    tok = engine.tokenizer
    messages = _long_conversation(8)
    full = len(template.encode(tok, messages))
    budget, reserve = full // 2, 10
    fitted = template.fit_to_budget(tok, messages, budget, reserve)
    assert len(fitted.ids) <= budget - reserve
    assert fitted.ids == template.encode(tok, fitted.messages)
    assert fitted.messages[0] == messages[0], "system prompt kept"
    assert fitted.messages[-1] == messages[-1], "newest turn kept"
    assert fitted.dropped_turns > 0
    assert fitted.dropped_messages == 2 * fitted.dropped_turns
    assert fitted.messages[1:] == messages[1 + fitted.dropped_messages :]
    # Oracle: keeping one more turn would not have fit.
    one_more = [messages[0]] + messages[1 + fitted.dropped_messages - 2 :]
    assert len(template.encode(tok, one_more)) > budget - reserve


def test_budget_no_drop_when_it_fits(engine):
    messages = _long_conversation(2)
    fitted = template.fit_to_budget(engine.tokenizer, messages, 4096, 256)
    assert fitted.dropped_turns == 0 and fitted.messages == messages


def test_budget_overflow_of_newest_turn(engine):
    messages = [{"role": "user", "content": "word " * 500}]
    with pytest.raises(ContextOverflowError, match="newest turn needs"):
        template.fit_to_budget(engine.tokenizer, messages, budget=200, reserve=50)
