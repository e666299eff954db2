"""A float16 GGUF of a fused model (llama.cpp, ollama) and the ollama Modelfile beside it.

Built on mlx-lm's GGUF exporter (`mlx_lm.gguf`): its tensor names, its permutation
of the q/k rows for llama.cpp's RoPE layout, and its llama metadata. What it lacks,
added here: sentencepiece's real token scores and types (mlx-lm writes -1000 for
every token, and llama.cpp's sentencepiece tokenizer picks merges by score), a
byte-level BPE vocabulary as llama.cpp's "gpt2" tokenizer (tokens, merges, and the
pre-tokenizer's name, see gguf_bpe; mlx-lm writes every vocabulary as sentencepiece),
the chat template in the metadata, every tensor in float16 (norms in float32, as
llama.cpp's own converter writes them), and a Modelfile with Zephyr's template and
stop token so `ollama create NAME -f Modelfile` works.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

MODELFILE = "Modelfile"
# Zephyr's chat template in ollama's Go template syntax (as ollama's library `zephyr`).
OLLAMA_TEMPLATE = (
    "{{ if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}"
    "{{ if .Prompt }}<|user|>\n{{ .Prompt }}</s>\n{{ end }}"
    "<|assistant|>\n{{ .Response }}</s>\n"
)
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "top_k": 50, "num_ctx": 4096}  # Zephyr's card


def _vocab(model_dir: Path):
    """mlx-lm's HfVocab, with sentencepiece's scores and types when tokenizer.model exists."""
    from mlx_lm.gguf import HfVocab, TokenType

    spm_path = model_dir / "tokenizer.model"

    class Vocab(HfVocab):
        def __init__(self, path: Path):
            super().__init__(path)
            self.spm = None
            if spm_path.exists():
                import sentencepiece

                self.spm = sentencepiece.SentencePieceProcessor(model_file=str(spm_path))

        def get_token_score(self, token_id: int) -> float:
            if self.spm is not None and token_id < self.spm.get_piece_size():
                return float(self.spm.get_score(token_id))
            return super().get_token_score(token_id)

        def get_token_type(self, token_id, token_text, special_ids):
            if self.spm is not None and token_id < self.spm.get_piece_size():
                if self.spm.is_unknown(token_id):
                    return TokenType.UNKNOWN
                if self.spm.is_control(token_id):
                    return TokenType.CONTROL
                if self.spm.is_byte(token_id):
                    return TokenType.BYTE
            return super().get_token_type(token_id, token_text, special_ids)

    return Vocab(model_dir)


def check_tokenizer(model_dir: Path) -> None:
    """The tokenizer files the export needs, or a ZephyrError naming what is missing.

    A sentencepiece tokenizer (tokenizer.model beside tokenizer.json: Zephyr, Mistral,
    Llama 2), or a byte-level BPE tokenizer.json whose pre-tokenizer llama.cpp names.
    """
    from zephyr_local.errors import ZephyrError
    from zephyr_local.gguf_bpe import check_bpe

    if not (model_dir / "tokenizer.json").exists():
        raise ZephyrError(f"{model_dir}: no tokenizer.json, which the GGUF vocabulary is read from")
    if not (model_dir / "tokenizer.model").exists():
        check_bpe(model_dir)


def gguf_tensors(weights: dict, config: dict) -> dict:
    """mlx-lm's names and q/k permutation; float16 except norms (float32)."""
    import mlx.core as mx
    from mlx_lm.gguf import permute_weights, translate_weight_names

    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads")
    out = {}
    for name, w in weights.items():
        if "self_attn.q_proj.weight" in name:
            w = permute_weights(w, heads, heads)
        elif "self_attn.k_proj.weight" in name:
            w = permute_weights(w, heads, kv or heads)
        gguf_name = translate_weight_names(name)
        out[gguf_name] = w.astype(mx.float32 if "norm" in gguf_name else mx.float16)
    return out


def export_gguf(model_dir: Path, model, config: dict, path: Path, name: str) -> Path:
    """Write `model` (float, not quantized) as a float16 GGUF at `path`, and a Modelfile.

    `model_dir` holds the tokenizer files (tokenizer.json is required, as by mlx-lm).
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.gguf import prepare_metadata

    from zephyr_local.errors import ZephyrError

    if config.get("quantization"):
        raise ZephyrError("a GGUF export needs float weights: dequantize first")
    check_tokenizer(model_dir)
    weights = dict(tree_flatten(model.parameters()))
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the command's own output
        metadata = prepare_metadata(config, _vocab(model_dir))
    if not (model_dir / "tokenizer.model").exists():
        from zephyr_local.gguf_bpe import bpe_metadata

        metadata = {k: v for k, v in metadata.items() if not k.startswith("tokenizer.ggml.")}
        metadata.update(bpe_metadata(model_dir))
    metadata["general.file_type"] = mx.array(1, dtype=mx.uint32)  # mostly F16
    metadata["general.name"] = name
    template = _chat_template(model_dir)
    if template:
        metadata["tokenizer.chat_template"] = template
    mx.save_gguf(str(path), gguf_tensors(weights, config), metadata)
    write_modelfile(path.parent / MODELFILE, path.name, _eos_text(model_dir))
    return path


def _chat_template(model_dir: Path) -> str | None:
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template")
    return template if isinstance(template, str) else None


def _eos_text(model_dir: Path) -> str:
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "</s>"
    eos = config.get("eos_token", "</s>")
    return eos.get("content", "</s>") if isinstance(eos, dict) else str(eos)


def write_modelfile(path: Path, gguf_name: str, eos: str = "</s>") -> None:
    """ollama's Modelfile: the GGUF beside it, Zephyr's template, its stop tokens."""
    template = OLLAMA_TEMPLATE.replace("</s>", eos)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    for stop in dict.fromkeys([eos, "<|user|>", "<|system|>"]):
        lines.append(f'PARAMETER stop "{stop}"')
    lines += [f"PARAMETER {k} {v}" for k, v in SAMPLING.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
