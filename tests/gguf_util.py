"""Test helpers for GGUF: a writer that does what llama.cpp's converter does, and an
independent NumPy forward pass that reads a GGUF as llama.cpp would.

Neither shares code with zephyr_local.gguf_import: the writer permutes q/k rows the
way llama.cpp's `convert_hf_to_gguf.py` does, and the forward pass applies llama.cpp's
interleaved RoPE to the permuted weights, so it never undoes the permutation.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize, quantize

LAYER = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf: str) -> str:
    base, kind = hf.rsplit(".", 1)
    if base in TOP:
        return f"{TOP[base]}.{kind}"
    _, _, layer, rest = base.split(".", 3)
    return f"blk.{layer}.{LAYER[rest]}.{kind}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `permute` (rotate-half rows -> interleaved pairs)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _spm_vocab(tokenizer_model: Path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1)
    return tokens, scores, types


def write_gguf(model_dir: Path, out: Path, type_of=lambda name: "F32", *, arch="llama",
               name="zephyr-test", extra: dict | None = None) -> Path:
    """A GGUF of a Hugging Face llama/mistral model dir with a sentencepiece tokenizer.

    `type_of(gguf_tensor_name)` picks each tensor's GGML type ("F32", "Q8_0", ...).
    """
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tensors = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    tokens, scores, types = _spm_vocab(model_dir / "tokenizer.model")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    if tok_cfg.get("chat_template"):
        w.add_chat_template(tok_cfg["chat_template"])
    for key, value in (extra or {}).items():
        (w.add_uint32 if isinstance(value, int) else w.add_string)(key, value)
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    for hf, value in sorted(tensors.items()):
        gname = gguf_name(hf)
        value = np.asarray(value, dtype=np.float32)
        part = gname.split(".")[-2]
        if part in heads:
            value = llama_cpp_permute(value, heads[part])
        kind = type_of(gname) if value.ndim == 2 else "F32"
        if kind == "F32":
            w.add_tensor(gname, value)
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            w.add_tensor(gname, quantize(value, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _rms(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rope_interleaved(x, base, positions):
    """llama.cpp's RoPE for llama: rotate adjacent pairs (x[2i], x[2i+1]). x: [T, H, D]."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # [D/2]
    ang = positions[:, None] * inv[None, :]  # [T, D/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def numpy_logits(path: Path, ids: list[int]) -> np.ndarray:
    """Logits [T, vocab] of a llama GGUF, computed in float64 NumPy from dequantized tensors."""
    r = gguf.GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()

    def meta(key, default=None):
        f = r.fields.get(f"{arch}.{key}")
        return default if f is None else f.contents()

    t = {x.name: dequantize(x.data, x.tensor_type).astype(np.float64) for x in r.tensors}
    n_head, n_kv = meta("attention.head_count"), meta("attention.head_count_kv")
    eps, base = meta("attention.layer_norm_rms_epsilon"), meta("rope.freq_base", 10000.0)
    x = t["token_embd.weight"][ids]
    steps = np.arange(len(ids), dtype=np.float64)
    mask = np.triu(np.full((len(ids), len(ids)), -np.inf), 1)
    for i in range(meta("block_count")):
        p = f"blk.{i}."
        h = _rms(x, t[p + "attn_norm.weight"], eps)
        q = (h @ t[p + "attn_q.weight"].T).reshape(len(ids), n_head, -1)
        k = (h @ t[p + "attn_k.weight"].T).reshape(len(ids), n_kv, -1)
        v = (h @ t[p + "attn_v.weight"].T).reshape(len(ids), n_kv, -1)
        q, k = _rope_interleaved(q, base, steps), _rope_interleaved(k, base, steps)
        k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(q.shape[-1]) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(len(ids), -1)
        x = x + o @ t[p + "attn_output.weight"].T
        h = _rms(x, t[p + "ffn_norm.weight"], eps)
        g, u = h @ t[p + "ffn_gate.weight"].T, h @ t[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ t[p + "ffn_down.weight"].T
    x = _rms(x, t["output_norm.weight"], eps)
    head = t.get("output.weight", t["token_embd.weight"])
    return x @ head.T
