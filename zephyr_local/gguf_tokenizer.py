"""Hugging Face tokenizer files from a GGUF's tokenizer metadata.

A GGUF carries its vocabulary (tokens, scores, token types, BPE merges), the
special token ids, whether BOS is added, the name of the pre-tokenizer, and the
chat template. Transformers can rebuild a tokenizer from a GGUF only through its
torch-based GGUF reader, so this module builds the files itself with the libraries
that define them: a sentencepiece `tokenizer.model` (protobuf, for llama/mistral
vocabularies such as Zephyr's) or a byte-level BPE `tokenizer.json` (`tokenizers`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from zephyr_local.errors import ModelFormatError

# Token types as llama.cpp writes them; sentencepiece's ModelProto uses the same numbers.
CONTROL, USER_DEFINED, BYTE = 3, 4, 6

# How each named pre-tokenizer splits text before BPE (llama.cpp's `tokenizer.ggml.pre`).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2_pre(single_digits: bool = False):
    from tokenizers import pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if single_digits:  # SmolLM: each digit its own piece, then GPT-2's split
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    return byte_level


def _llama3_pre():
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    return pt.Sequence([pt.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                        pt.ByteLevel(add_prefix_space=False, use_regex=False)])


PRE_TOKENIZERS = {
    "default": _gpt2_pre,
    "gpt2": _gpt2_pre,
    "smollm": lambda: _gpt2_pre(single_digits=True),
    "llama3": _llama3_pre,
    "llama-v3": _llama3_pre,
    "llama-bpe": _llama3_pre,
}


@dataclass
class TokenizerFiles:
    kind: str  # "sentencepiece" or "byte-level BPE (<pre-tokenizer>)"
    template: str  # the GGUF's own chat template: "zephyr", "other" or "none"


def metadata_value(reader, key: str, default=None):
    """A GGUF metadata value (the `gguf` reader's field contents), or `default`."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def template_kind(template: str | None) -> str:
    if not template:
        return "none"
    return "zephyr" if "<|assistant|>" in template and "<|user|>" in template else "other"


def write_tokenizer(reader, dst: Path) -> TokenizerFiles:
    """Write tokenizer.model or tokenizer.json, tokenizer_config.json, special_tokens_map.json."""
    model = metadata_value(reader, "tokenizer.ggml.model")
    tokens = metadata_value(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise ModelFormatError("the GGUF has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    types = metadata_value(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if model == "llama":
        add_bos = bool(metadata_value(reader, "tokenizer.ggml.add_bos_token", True))
        _write_sentencepiece(reader, tokens, types, dst)
        kind, tokenizer_class = "sentencepiece", "LlamaTokenizer"
    elif model == "gpt2":
        add_bos = bool(metadata_value(reader, "tokenizer.ggml.add_bos_token", False))
        pre = metadata_value(reader, "tokenizer.ggml.pre", "default")
        _write_bpe(reader, tokens, types, pre, add_bos, dst)
        kind, tokenizer_class = f"byte-level BPE ({pre})", "PreTrainedTokenizerFast"
    else:
        raise ModelFormatError(
            f"the GGUF's tokenizer {model!r} is not supported (llama sentencepiece and gpt2 "
            "byte-level BPE are)")
    template = metadata_value(reader, "tokenizer.chat_template")
    special = _special_tokens(reader, tokens)
    config = {
        "tokenizer_class": tokenizer_class,
        **special,
        "add_bos_token": add_bos,
        "add_eos_token": bool(metadata_value(reader, "tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_context_length(reader)),
    }
    if model == "llama":
        config["legacy"] = True  # as Zephyr's and Mistral's own tokenizer_config.json
    if template:
        config["chat_template"] = template
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (dst / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    if model == "llama":
        _convert_to_fast(dst)
    return TokenizerFiles(kind, template_kind(template))


def _context_length(reader) -> int:
    arch = metadata_value(reader, "general.architecture")
    return int(metadata_value(reader, f"{arch}.context_length", 4096))


def _special_tokens(reader, tokens: list[str]) -> dict:
    special = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        idx = metadata_value(reader, f"tokenizer.ggml.{key}")
        if idx is not None and 0 <= int(idx) < len(tokens):
            special[name] = tokens[int(idx)]
    if "eos_token" not in special:
        raise ModelFormatError("the GGUF names no EOS token (tokenizer.ggml.eos_token_id)")
    return special


def _write_sentencepiece(reader, tokens, types, dst: Path) -> None:
    """tokenizer.model: a BPE sentencepiece model of the GGUF's pieces, scores and types."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    scores = metadata_value(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    proto = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, float(score), int(kind)
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = BYTE in types
    for name, key, default in (("unk_id", "unknown_token_id", 0), ("bos_id", "bos_token_id", 1),
                               ("eos_id", "eos_token_id", 2), ("pad_id", "padding_token_id", -1)):
        setattr(spec, name, int(metadata_value(reader, f"tokenizer.ggml.{key}", default)))
    if spec.pad_id in (spec.unk_id, spec.bos_id, spec.eos_id):
        spec.pad_id = -1  # Zephyr pads with EOS; sentencepiece wants distinct ids
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(metadata_value(reader, "tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    (dst / "tokenizer.model").write_bytes(proto.SerializeToString())


def _convert_to_fast(dst: Path) -> None:
    """tokenizer.json beside tokenizer.model, converted by transformers (as Zephyr ships both)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(dst), local_files_only=True)
    tok.backend_tokenizer.save(str(dst / "tokenizer.json"))


def _write_bpe(reader, tokens, types, pre: str, add_bos: bool, dst: Path) -> None:
    """tokenizer.json: byte-level BPE with the GGUF's merges and pre-tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    if pre not in PRE_TOKENIZERS:
        raise ModelFormatError(
            f"the GGUF's pre-tokenizer {pre!r} is not known to zephyr-local "
            f"(known: {', '.join(sorted(PRE_TOKENIZERS))})")
    merges = metadata_value(reader, "tokenizer.ggml.merges")
    if not merges:
        raise ModelFormatError("the GGUF's BPE tokenizer has no merges (tokenizer.ggml.merges)")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                     fuse_unk=False, byte_fallback=False)
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tk.decoder = decoders.ByteLevel()
    added = [AddedToken(tok, special=kind == CONTROL, normalized=False)
             for tok, kind in zip(tokens, types) if kind in (CONTROL, USER_DEFINED)]
    tk.add_tokens(added)
    if add_bos:
        bos = tokens[int(metadata_value(reader, "tokenizer.ggml.bos_token_id"))]
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, vocab[bos])])
    tk.save(str(dst / "tokenizer.json"))
