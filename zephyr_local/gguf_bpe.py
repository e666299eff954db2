"""A byte-level BPE tokenizer.json as llama.cpp's "gpt2" GGUF vocabulary.

llama.cpp reads such a vocabulary from `tokenizer.ggml.tokens` (the byte-level token
strings, by id), `tokenizer.ggml.token_type`, `tokenizer.ggml.merges` ("a b" strings,
by rank) and `tokenizer.ggml.pre`, the name of a pre-tokenizer it knows. The name is
found here by behaviour: the tokenizer.json's pre-tokenizer must split a probe text
exactly as one of the pre-tokenizers zephyr-local builds on import does
(gguf_tokenizer.PRE_TOKENIZERS), so an exported file imports back to the same splits.
"""

from __future__ import annotations

import json
from pathlib import Path

from zephyr_local.errors import ZephyrError

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # llama.cpp's token types
# Digits, contractions, case, runs of spaces and newlines, tabs, punctuation, non-ASCII:
# what tells the known pre-tokenizers apart.
PROBE = ("Hello world's 2024 DON'T it'll 1234567 x\n\n  y\t z...!? naïve café €3.14 "
         "\u4f60\u597d  \r\n end")
# Tried in this order; the first whose splits match names the pre-tokenizer.
CANDIDATES = ("gpt2", "smollm", "llama-bpe")


def _read(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ZephyrError(f"{model_dir}/tokenizer.json: cannot read ({exc})") from None


def _splits(pre_tokenizer) -> list[str]:
    return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(PROBE)]


def pre_tokenizer_name(model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer.json's pre-tokenizer, or a ZephyrError."""
    from tokenizers import Tokenizer

    from zephyr_local.gguf_tokenizer import PRE_TOKENIZERS

    tk = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    if tk.pre_tokenizer is None:
        raise ZephyrError(f"{model_dir}/tokenizer.json has no pre-tokenizer: GGUF export "
                          "supports byte-level BPE tokenizers")
    ours = _splits(tk.pre_tokenizer)
    for name in CANDIDATES:
        if _splits(PRE_TOKENIZERS[name]()) == ours:
            return name
    raise ZephyrError(f"{model_dir}/tokenizer.json: its pre-tokenizer splits text unlike any "
                      f"llama.cpp pre-tokenizer zephyr-local knows ({', '.join(CANDIDATES)})")


def check_bpe(model_dir: Path) -> None:
    """A ZephyrError unless tokenizer.json is a byte-level BPE that can be exported."""
    data = _read(model_dir)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(data.get("decoder")):
        raise ZephyrError(f"{model_dir}: no tokenizer.model and tokenizer.json is not byte-level "
                          f"BPE ({model.get('type')}): GGUF export supports sentencepiece and "
                          "byte-level BPE tokenizers")
    pre_tokenizer_name(model_dir)


def _tokens_by_id(data: dict) -> tuple[list[str], list[int]]:
    """Every token string by id (vocabulary and added tokens) and its llama.cpp type."""
    kinds = {t: NORMAL for t in data["model"]["vocab"]}
    ids = dict(data["model"]["vocab"])
    for added in data.get("added_tokens", []):
        ids[added["content"]] = added["id"]
        kinds[added["content"]] = CONTROL if added.get("special") else USER_DEFINED
    by_id = {i: t for t, i in ids.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ZephyrError("tokenizer.json: token ids are not contiguous from 0")
    tokens = [by_id[i] for i in range(len(by_id))]
    return tokens, [kinds[t] for t in tokens]


def _special_ids(model_dir: Path, ids: dict) -> dict:
    """bos/eos/unk/pad token ids from tokenizer_config.json (strings or added-token dicts)."""
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    out = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        value = config.get(name)
        text = value.get("content") if isinstance(value, dict) else value
        if isinstance(text, str) and text in ids:
            out[key] = ids[text]
    return out


def bpe_metadata(model_dir: Path) -> dict:
    """The `tokenizer.ggml.*` metadata of a byte-level BPE tokenizer (mx.save_gguf values)."""
    import mlx.core as mx
    from tokenizers import Tokenizer

    data = _read(model_dir)
    tokens, kinds = _tokens_by_id(data)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    if not merges:
        raise ZephyrError(f"{model_dir}/tokenizer.json: a BPE vocabulary without merges")
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre_tokenizer_name(model_dir),
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": mx.array(kinds, dtype=mx.int32),
            "tokenizer.ggml.merges": merges}
    specials = _special_ids(model_dir, {t: i for i, t in enumerate(tokens)})
    for key, idx in specials.items():
        meta[f"tokenizer.ggml.{key}"] = mx.array(idx, dtype=mx.uint32)
    encoded = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode("a").ids
    bos = specials.get("bos_token_id")
    meta["tokenizer.ggml.add_bos_token"] = mx.array(bos is not None and encoded[0] == bos)
    return meta
