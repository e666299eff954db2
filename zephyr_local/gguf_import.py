"""`zephyr-local import`: a llama/mistral GGUF file into the model store as an MLX model.

Q4_0, Q4_1 and Q8_0 tensors are exactly MLX's affine quantization with group size
32, so they stay quantized (repacked in gguf_tensors.py); float tensors stay float;
every other type (K-quants, IQ) is dequantized to float by the `gguf` package, which
also reads the file. This module adds the checks, the tensor names mlx-lm expects,
undoing llama.cpp's q/k row permutation, config.json from the metadata, the
tokenizer files (gguf_tokenizer.py), and an atomic write into the store.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from zephyr_local import backend, gguf_tensors, gguf_tokenizer
from zephyr_local.atomic import atomic_dir, dir_size, human_bytes
from zephyr_local.errors import ModelFormatError, ModelNotFoundError, ZephyrError
from zephyr_local.gguf_tokenizer import metadata_value

ARCHITECTURES = ("llama", "mistral")
GROUP_SIZE = gguf_tensors.GROUP_SIZE
SHARD_BYTES = 2 << 30

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


@dataclass
class ImportReport:
    """What an import did and cost."""

    source: str
    output: str
    architecture: str
    model_type: str
    parameters: int
    tensor_types: dict  # GGUF type name -> tensor count
    kept_quantized: int
    dequantized: int
    bits: int | None
    dtype: str
    source_bytes: int
    output_bytes: int
    seconds: float
    peak_memory_gb: float
    tokenizer: str
    chat_template: str  # "zephyr", "other" or "none": the one the GGUF ships
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def hf_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m:
        layer, part, kind = m.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    raise ModelFormatError(f"tensor {gguf_name!r} has no place in a llama/mistral model")


def unpermute(w, n_head: int):
    """Undo llama.cpp's `permute` of q/k rows (interleaved RoPE -> mlx-lm's rotate-half).

    llama.cpp's converter reshapes rows to (heads, 2, head_dim/2) and swaps the
    last two axes; swapping them back restores the Hugging Face order. Works on
    any array whose first axis is the output rows (weights, packed quantized
    weights, scales, biases).
    """
    rows = w.shape[0]
    rest = tuple(w.shape[1:])
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def read_header(path: Path):
    """The `gguf` package's reader of `path` (memory-mapped), after the checks.

    Raises:
        ModelFormatError: not a GGUF, a split GGUF, or an unsupported architecture.
    """
    import gguf

    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFormatError(f"{path}: not a GGUF file (it starts with {magic!r})")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as exc:
        raise ModelFormatError(f"{path}: cannot read the GGUF ({exc})") from None
    split = metadata_value(reader, "split.count", 1)
    if split and int(split) > 1:
        raise ModelFormatError(
            f"{path}: part of a GGUF split into {int(split)} files; merge them first "
            "(llama.cpp's `llama-gguf-split --merge`)")
    arch = metadata_value(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelFormatError(
            f"{path}: architecture {arch!r} is not supported (import takes "
            f"{' and '.join(ARCHITECTURES)} GGUFs)")
    return reader


def _is_mistral(reader, arch: str) -> bool:
    """llama.cpp writes Mistral-7B (and so Zephyr) as `llama`; its name tells them apart."""
    if arch == "mistral":
        return True
    keys = ("general.name", "general.basename")
    names = " ".join(str(metadata_value(reader, k, "")) for k in keys)
    return bool(re.search(r"mistral|zephyr", names, re.IGNORECASE))


def build_config(reader, tensor_names: set[str], dtype: str) -> dict:
    """config.json for mlx-lm (Hugging Face names) from the GGUF metadata and tensor names."""
    arch = metadata_value(reader, "general.architecture")

    def key(name, default=None):
        return metadata_value(reader, f"{arch}.{name}", default)

    required = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")
    for name in required:
        if key(name) is None:
            raise ModelFormatError(f"GGUF metadata has no {arch}.{name}")
    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    tokens = metadata_value(reader, "tokenizer.ggml.tokens") or []
    mistral = _is_mistral(reader, arch)
    config = {
        "architectures": ["MistralForCausalLM" if mistral else "LlamaForCausalLM"],
        "model_type": "mistral" if mistral else "llama",
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(key("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(key("context_length", 4096)),
        "vocab_size": int(key("vocab_size", len(tokens))),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "hidden_act": "silu",
        "torch_dtype": dtype,
    }
    if mistral:
        config["sliding_window"] = int(key("attention.sliding_window", 4096))
    scaling = key("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ModelFormatError(f"GGUF rope scaling {scaling!r} is not supported (linear is)")
        config["rope_scaling"] = {"type": "linear", "factor": float(key("rope.scaling.factor"))}
    for name in ("bos_token_id", "eos_token_id"):
        value = metadata_value(reader, f"tokenizer.ggml.{name}")
        if value is not None:
            config[name] = int(value)
    return config


def convert_tensors(
    reader, config: dict, dtype: str, dst: Path, progress=None, dequantize: bool = False
) -> tuple:
    """Write the weights with mlx-lm's names into `dst`, one tensor at a time.

    Returns:
        (quantization, stats): `quantization` is the config.json block (None when
        nothing stays quantized); stats counts tensor types, kept and dequantized.
    """
    import mlx.core as mx

    mx_dtype = getattr(mx, dtype)
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    writer = gguf_tensors.ShardWriter(dst, SHARD_BYTES)
    layer_bits, types = {}, {}
    for i, tensor in enumerate(reader.tensors):
        kind = tensor.tensor_type.name
        types[kind] = types.get(kind, 0) + 1
        target = hf_name(tensor.name)
        base = target.rsplit(".", 1)[0]
        if kind in gguf_tensors.LAYOUT and not dequantize:
            weight, scales, biases = gguf_tensors.repack(tensor.data, kind)
            arrays = {f"{base}.weight": weight, f"{base}.scales": scales,
                      f"{base}.biases": biases}
            layer_bits[base] = gguf_tensors.LAYOUT[kind][0]
        else:
            arrays = {target: gguf_tensors.to_float(tensor)}
        part = tensor.name.split(".")[-2]
        for name, value in arrays.items():
            if part in heads:
                value = unpermute(value, heads[part])
            value = mx.array(np.ascontiguousarray(value))
            writer.add(name, value if value.dtype == mx.uint32 else value.astype(mx_dtype))
        if progress:
            progress(i + 1, len(reader.tensors), tensor.name)
    writer.close()
    kept = 0 if dequantize else sum(n for k, n in types.items() if k in gguf_tensors.LAYOUT)
    floats = sum(n for k, n in types.items() if k in gguf_tensors.FLOAT_TYPES)
    stats = {"types": types, "kept": kept, "dequantized": sum(types.values()) - kept - floats}
    return _quantization_block(layer_bits), stats


def _quantization_block(layer_bits: dict) -> dict | None:
    """The most common bit width as the default, the other layers listed by path."""
    if not layer_bits:
        return None
    counts: dict[int, int] = {}
    for b in layer_bits.values():
        counts[b] = counts.get(b, 0) + 1
    main = max(counts, key=counts.get)
    block = {"group_size": GROUP_SIZE, "bits": main, "mode": "affine"}
    for base, b in sorted(layer_bits.items()):
        if b != main:
            block[base] = {"group_size": GROUP_SIZE, "bits": b}
    return block


def default_name(path: Path) -> str:
    """The store name of an imported file: its file name without `.gguf`, made safe.

    An ollama blob (`sha256-<hex>`) has no useful file name: the model's own name is
    read from its header instead (only then, as that reads the whole vocabulary).
    """
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    if re.fullmatch(r"sha256[-:][0-9a-f]{64}", stem):
        stem = str(metadata_value(read_header(path), "general.name", "imported")).replace(" ", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "imported"


def import_gguf(
    path: Path,
    out: Path,
    *,
    dtype: str = "float32",
    force: bool = False,
    dequantize: bool = False,
    origin: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> ImportReport:
    """Import one GGUF file into the model directory `out` (written atomically).

    Args:
        path: the .gguf file.
        out: the model directory to write.
        dtype: float type of scales, biases and float tensors.
        force: replace `out` if it exists.
        dequantize: write every tensor as float (a source for `quantize`).
        origin: what the user named (an `ollama:` reference), for the model card.
        progress: called as progress(done, total, tensor_name).
    """
    import mlx.core as mx

    if dtype not in backend.COMPUTE_DTYPES:
        raise ZephyrError(
            f"--dtype {dtype!r} is not one of {', '.join(backend.COMPUTE_DTYPES)}")
    path, out = Path(path).expanduser(), Path(out).expanduser()
    if out.exists() and not force:
        raise ZephyrError(f"{out} already exists: pass --force to replace it")
    t0 = time.perf_counter()
    mx.reset_peak_memory()
    reader = read_header(path)
    names = {t.name for t in reader.tensors}
    for name in names:
        hf_name(name)  # refuse tensors with no place in the model before any work
    config = build_config(reader, names, dtype)
    with atomic_dir(out) as tmp:
        report = _write_model(reader, config, path, tmp, dtype, dequantize, origin, progress)
        report.output = str(out)
        report.seconds = round(time.perf_counter() - t0, 2)
        report.peak_memory_gb = round(max(mx.get_peak_memory() / 1e9, backend.peak_rss_gb()), 3)
        _write_card(tmp, report)
    return report


def _write_model(reader, config: dict, path: Path, tmp: Path, dtype: str, dequantize: bool,
                 origin: str | None, progress) -> ImportReport:
    """Tensors, config.json, tokenizer and source record into `tmp`; the report of it."""
    from zephyr_local import store

    quantization, stats = convert_tensors(reader, config, dtype, tmp, progress, dequantize)
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tok = gguf_tokenizer.write_tokenizer(reader, tmp)
    source = {"imported_from": origin or str(path), "format": "gguf",
              "file_type": stats["types"], "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (tmp / store.SOURCE_FILE).write_text(json.dumps(source, indent=2))
    report = ImportReport(
        source=origin or str(path), output=str(tmp), architecture=str(
            metadata_value(reader, "general.architecture")), model_type=config["model_type"],
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        tensor_types=stats["types"], kept_quantized=stats["kept"],
        dequantized=stats["dequantized"], bits=(quantization or {}).get("bits"),
        dtype=dtype, source_bytes=path.stat().st_size, output_bytes=dir_size(tmp),
        seconds=0.0, peak_memory_gb=0.0, tokenizer=tok.kind, chat_template=tok.template)
    if stats["dequantized"]:
        report.notes.append(
            f"{stats['dequantized']} tensors of types MLX cannot keep quantized were "
            f"dequantized to {dtype}: `zephyr-local quantize` makes them small again")
    return report


def _write_card(dst: Path, r: ImportReport) -> None:
    types = ", ".join(f"{n} {k}" for k, n in sorted(r.tensor_types.items()))
    quant = f"{r.bits}-bit affine, group {GROUP_SIZE}" if r.bits else "none (float)"
    lines = [
        f"# {Path(r.output).name}",
        "",
        (f"Imported from the GGUF `{r.source}` by zephyr-local: {r.architecture} architecture "
        f"(mlx-lm `{r.model_type}`), {r.parameters / 1e6:.0f}M parameters."),
        "",
        "| setting | value |",
        "|---|---|",
        f"| GGUF tensor types | {types} |",
        f"| kept quantized (exact) | {r.kept_quantized} tensors |",
        f"| dequantized to float | {r.dequantized} tensors |",
        f"| MLX quantization | {quant} |",
        f"| scales, biases, float tensors | {r.dtype} |",
        f"| tokenizer | {r.tokenizer} |",
        f"| chat template in the GGUF | {r.chat_template} (zephyr-local chats in Zephyr's) |",
        f"| size | {human_bytes(r.source_bytes)} -> {human_bytes(r.output_bytes)} |",
        "",
        "Use: `zephyr-local chat -m <this directory>`, or `mlx_lm.load(<this directory>)`.",
        "",
    ]
    (dst / "README.md").write_text("\n".join(lines), encoding="utf-8")
