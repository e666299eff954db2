"""`zephyr-local import`: a llama/mistral GGUF file into the model store as an MLX model.

MLX reads GGUF itself (`mx.load(..., return_metadata=True)`): Q4_0, Q4_1 and Q8_0
tensors come back as MLX affine-quantized triples with group size 32, which is
exactly those formats' arithmetic (w = d*(q-8), d*q + m, d*q), so they stay
quantized. Float tensors stay float. Every other type (K-quants, IQ) is
dequantized to float with the `gguf` package. What this module adds: the checks,
the tensor names mlx-lm expects, undoing llama.cpp's q/k row permutation,
config.json from the metadata, the tokenizer files (gguf_tokenizer.py), and an
atomic write into the store.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zephyr_local import gguf_tokenizer
from zephyr_local.atomic import atomic_dir, dir_size, human_bytes
from zephyr_local.errors import ModelFormatError, ModelNotFoundError, ZephyrError

ARCHITECTURES = ("llama", "mistral")
# GGUF tensor types that MLX maps exactly onto its affine quantization (group 32).
MLX_QUANTIZED = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
FLOAT_TYPES = ("F32", "F16", "BF16")
GROUP_SIZE = 32
SHARD_BYTES = 2 << 30
DTYPES = ("float32", "float16", "bfloat16")

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


def _meta(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


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
    split = _meta(reader, "split.count", 1)
    if split and int(split) > 1:
        raise ModelFormatError(
            f"{path}: part of a GGUF split into {int(split)} files; merge them first "
            "(llama.cpp's `llama-gguf-split --merge`)")
    arch = _meta(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelFormatError(
            f"{path}: architecture {arch!r} is not supported (import takes "
            f"{' and '.join(ARCHITECTURES)} GGUFs)")
    return reader


def _is_mistral(reader, arch: str) -> bool:
    """llama.cpp writes Mistral-7B (and so Zephyr) as `llama`; its name tells them apart."""
    if arch == "mistral":
        return True
    names = " ".join(str(_meta(reader, k, "")) for k in ("general.name", "general.basename"))
    return bool(re.search(r"mistral|zephyr", names, re.IGNORECASE))


def build_config(reader, tensor_names: set[str], dtype: str) -> dict:
    """config.json for mlx-lm (Hugging Face names) from the GGUF metadata."""
    arch = _meta(reader, "general.architecture")

    def key(name, default=None):
        return _meta(reader, f"{arch}.{name}", default)

    required = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")
    for name in required:
        if key(name) is None:
            raise ModelFormatError(f"GGUF metadata has no {arch}.{name}")
    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    tokens = _meta(reader, "tokenizer.ggml.tokens") or []
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
        value = _meta(reader, f"tokenizer.ggml.{name}")
        if value is not None:
            config[name] = int(value)
    return config


def _dequantize(tensor, dtype):
    """A GGUF tensor of any type as a float MLX array (numpy via the `gguf` package)."""
    import mlx.core as mx
    import numpy as np
    from gguf.quants import dequantize

    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise ModelFormatError(
            f"tensor {tensor.name}: type {tensor.tensor_type.name} cannot be read by the "
            "installed `gguf` package") from None
    return mx.array(np.ascontiguousarray(values, dtype=np.float32)).astype(dtype)


def convert_tensors(path: Path, reader, config: dict, dtype: str, progress=None):
    """MLX weights with mlx-lm's names, and the quantization block for config.json.

    Returns:
        (weights, quantization, stats): `quantization` is None when nothing stays quantized.
    """
    import mlx.core as mx

    mx_dtype = getattr(mx, dtype)
    by_type = {t.name: t.tensor_type.name for t in reader.tensors}
    needs_mx = any(t in MLX_QUANTIZED or t in FLOAT_TYPES for t in by_type.values())
    loaded = mx.load(str(path)) if needs_mx else {}
    weights, layer_bits = {}, {}
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    total = len(reader.tensors)
    for i, tensor in enumerate(reader.tensors):
        name, kind = tensor.name, by_type[tensor.name]
        target = hf_name(name)
        base = target.rsplit(".", 1)[0]
        part = name.split(".")[-2]
        if kind in MLX_QUANTIZED:
            arrays = {
                f"{base}.weight": loaded[name],
                f"{base}.scales": loaded[name.replace(".weight", ".scales")].astype(mx_dtype),
                f"{base}.biases": loaded[name.replace(".weight", ".biases")].astype(mx_dtype),
            }
            layer_bits[base] = MLX_QUANTIZED[kind]
        elif kind in FLOAT_TYPES:
            arrays = {target: loaded[name].astype(mx_dtype)}
        else:
            arrays = {target: _dequantize(tensor, mx_dtype)}
        if part in heads:
            arrays = {k: unpermute(v, heads[part]) for k, v in arrays.items()}
        mx.eval(list(arrays.values()))
        weights.update(arrays)
        if progress:
            progress(i + 1, total, name)
    del loaded
    quantization = None
    if layer_bits:
        counts: dict[int, int] = {}
        for b in layer_bits.values():
            counts[b] = counts.get(b, 0) + 1
        main = max(counts, key=counts.get)
        quantization = {"group_size": GROUP_SIZE, "bits": main, "mode": "affine"}
        for base, b in sorted(layer_bits.items()):
            if b != main:
                quantization[base] = {"group_size": GROUP_SIZE, "bits": b}
    types: dict[str, int] = {}
    for kind in by_type.values():
        types[kind] = types.get(kind, 0) + 1
    kept = sum(n for k, n in types.items() if k in MLX_QUANTIZED)
    dequantized = sum(
        n for k, n in types.items() if k not in MLX_QUANTIZED and k not in FLOAT_TYPES)
    return weights, quantization, {"types": types, "kept": kept, "dequantized": dequantized}


def _save_shards(weights: dict, dst: Path) -> None:
    """safetensors shards of at most SHARD_BYTES, with an index when there are several."""
    import mlx.core as mx

    shards, size = [[]], 0
    for name in sorted(weights):
        nbytes = weights[name].nbytes
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    if len(shards) == 1:
        mx.save_safetensors(str(dst / "model.safetensors"), weights, metadata={"format": "mlx"})
        return
    weight_map = {}
    for i, names in enumerate(shards):
        shard = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(dst / shard), {n: weights[n] for n in names},
                            metadata={"format": "mlx"})
        weight_map.update({n: shard for n in names})
    index = {"metadata": {"total_size": sum(w.nbytes for w in weights.values())},
             "weight_map": weight_map}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def default_name(path: Path, reader) -> str:
    """The store name of an imported file: its file name without `.gguf`, made safe."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    if re.fullmatch(r"sha256[-:][0-9a-f]{64}", stem):  # an ollama blob: use the model's name
        stem = str(_meta(reader, "general.name", "imported")).replace(" ", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "imported"


def import_gguf(
    path: Path,
    out: Path,
    *,
    dtype: str = "float32",
    force: bool = False,
    origin: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> ImportReport:
    """Import one GGUF file into the model directory `out` (written atomically).

    Args:
        path: the .gguf file.
        out: the model directory to write.
        dtype: float type of scales, biases and float tensors.
        force: replace `out` if it exists.
        origin: what the user named (an `ollama:` reference), for the model card.
        progress: called as progress(done, total, tensor_name).
    """
    import mlx.core as mx

    from zephyr_local import store

    if dtype not in DTYPES:
        raise ZephyrError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    path, out = Path(path).expanduser(), Path(out).expanduser()
    if out.exists() and not force:
        raise ZephyrError(f"{out} already exists: pass --force to replace it")
    t0 = time.perf_counter()
    mx.reset_peak_memory()
    reader = read_header(path)
    names = {hf_name(t.name) for t in reader.tensors}
    config = build_config(reader, names, dtype)
    weights, quantization, stats = convert_tensors(path, reader, config, dtype, progress)
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    params = sum(int(t.n_elements) for t in reader.tensors)
    with atomic_dir(out) as tmp:
        _save_shards(weights, tmp)
        del weights
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tok = gguf_tokenizer.write_tokenizer(reader, tmp)
        source = {"imported_from": origin or str(path), "format": "gguf",
                  "file_type": stats["types"], "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / store.SOURCE_FILE).write_text(json.dumps(source, indent=2))
        report = ImportReport(
            source=origin or str(path), output=str(out), architecture=str(
                _meta(reader, "general.architecture")), model_type=config["model_type"],
            parameters=params, tensor_types=stats["types"], kept_quantized=stats["kept"],
            dequantized=stats["dequantized"], bits=(quantization or {}).get("bits"),
            dtype=dtype, source_bytes=path.stat().st_size, output_bytes=dir_size(tmp),
            seconds=0.0, peak_memory_gb=0.0, tokenizer=tok.kind, chat_template=tok.template)
        if stats["dequantized"]:
            report.notes.append(
                f"{stats['dequantized']} tensors of types MLX cannot keep quantized were "
                f"dequantized to {dtype}: `zephyr-local quantize` makes them small again")
        report.seconds = round(time.perf_counter() - t0, 2)
        report.peak_memory_gb = round(max(mx.get_peak_memory() / 1e9, _peak_rss_gb()), 3)
        _write_card(tmp, report)
    return report


def _peak_rss_gb() -> float:
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


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
