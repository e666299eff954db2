"""Zephyr's chat template, rendered exactly, and the context budget.

The template is Zephyr's Jinja template written out in Python so that it needs no
Jinja, rejects what the Jinja template would silently drop (unknown roles), and can
fit a conversation into a token budget. Like the Jinja template it ends each turn
with the tokenizer's own EOS token (`</s>` for Zephyr's), so any Llama/Mistral
tokenizer works: that turn end is what the recipe's SFT step teaches a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zephyr_local.errors import ContextOverflowError, TemplateError

ROLES = ("system", "user", "assistant")
EOS_TOKEN = "</s>"  # Zephyr's tokenizer's EOS
GENERATION_PROMPT = "<|assistant|>\n"
DEFAULT_CONTEXT_BUDGET = 4096  # Zephyr's sliding window


def validate(messages: Any) -> list[dict]:
    """Check a conversation and return it as a list of {"role", "content"} dicts.

    Raises:
        TemplateError: naming the index of the first bad message.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TemplateError("the conversation is empty: give at least one message")
    clean = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise TemplateError(f"message {i}: expected an object with 'role' and 'content'")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise TemplateError(
                f"message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)})"
            )
        if not isinstance(content, str):
            raise TemplateError(
                f"message {i}: content must be a string, not {type(content).__name__}"
            )
        clean.append({"role": role, "content": content})
    return clean


def render(
    messages: Sequence[dict], add_generation_prompt: bool = True, eos: str = EOS_TOKEN
) -> str:
    """Render a conversation as Zephyr's template does (without BOS).

    Each turn is `<|role|>\\n{content}{eos}\\n`; the generation prompt is
    `<|assistant|>\\n`.
    """
    messages = validate(messages)
    text = "".join(f"<|{m['role']}|>\n{m['content']}{eos}\n" for m in messages)
    if add_generation_prompt:
        text += GENERATION_PROMPT
    return text


def encode(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a rendered conversation, as Hugging Face encodes them.

    `tokenizer` is the model's Hugging Face tokenizer (or mlx-lm's wrapper of it):
    encoding with special tokens adds BOS once when the tokenizer adds one, and maps
    each turn's EOS token to its single id (2 for Zephyr's `</s>`).
    """
    return list(tokenizer.encode(render(messages, add_generation_prompt, eos_token(tokenizer))))


def eos_token(tokenizer) -> str:
    """The tokenizer's EOS token text, which ends every turn of the template."""
    token = getattr(tokenizer, "eos_token", None)
    if not isinstance(token, str) or not token:
        raise TemplateError("the tokenizer has no EOS token: the Zephyr template needs one")
    return token


def eos_id(tokenizer) -> int:
    """The id the template's turn end encodes to (one token, checked)."""
    ids = tokenizer.convert_tokens_to_ids([eos_token(tokenizer)])
    if not ids or ids[0] is None or ids[0] == getattr(tokenizer, "unk_token_id", -1):
        raise TemplateError(f"the EOS token {eos_token(tokenizer)!r} is not in the vocabulary")
    return int(ids[0])


def uses_own_template(tokenizer) -> str | None:
    """A one-line notice when the model ships a chat template other than Zephyr's."""
    own = getattr(tokenizer, "chat_template", None)
    if not own or ("<|assistant|>" in own and "<|user|>" in own):
        return None
    return ("this model ships its own chat template; zephyr-local uses Zephyr's "
            f"(<|user|> ... {eos_token(tokenizer)}), which the recipe's SFT step teaches it")


@dataclass
class FittedPrompt:
    """A conversation cut to the context budget."""

    ids: list[int]
    messages: list[dict]
    dropped_turns: int  # user/assistant turns removed from the front
    dropped_messages: int


def fit_to_budget(
    tokenizer,
    messages: Sequence[dict],
    budget: int = DEFAULT_CONTEXT_BUDGET,
    reserve: int = 0,
    add_generation_prompt: bool = True,
) -> FittedPrompt:
    """Drop the oldest user/assistant turns until the prompt fits.

    The prompt must leave `reserve` tokens (room for the reply) inside `budget`.
    System messages are always kept. The newest turn is never dropped: if it
    alone does not fit, ContextOverflowError says by how much.
    """
    messages = validate(messages)
    if budget <= 0:
        raise TemplateError(f"context budget must be positive (got {budget})")
    limit = budget - max(0, reserve)
    user_starts = [i for i, m in enumerate(messages) if m["role"] == "user"]
    # Cut k drops every non-system message before the (k+1)-th user turn.
    cuts = [0] + user_starts[1:]
    for dropped, cut in enumerate(cuts):
        kept = [m for i, m in enumerate(messages) if m["role"] == "system" or i >= cut]
        ids = encode(tokenizer, kept, add_generation_prompt)
        if len(ids) <= limit:
            return FittedPrompt(ids, kept, dropped, len(messages) - len(kept))
    raise ContextOverflowError(
        f"the newest turn needs {len(ids)} tokens but the context budget leaves {limit} "
        f"({budget} minus {reserve} reserved for the reply): shorten it or raise the budget"
    )
