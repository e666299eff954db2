"""The files of a quantized model: weight shards, tokenizer, model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SHARD_GB = 1  # small shards: one is held in memory while it is written

# Copied byte for byte: re-saving through transformers could rewrite the
# tokenizer config or the chat template.
TOKENIZER_PATTERNS = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.json", "chat_template.jinja", "generation_config.json",
)


def copy_tokenizer_files(source: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files and chat template of `source` into `dst`, unchanged."""
    copied = []
    for name in TOKENIZER_PATTERNS:
        if (source / name).is_file():
            shutil.copyfile(source / name, dst / name)
            copied.append(name)
    return copied


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def write_model_card(dst: Path, report) -> None:
    """A short README.md with the Hub's YAML header (base_model: the source's repo id):
    source, settings, bits per weight, size, quality, tool version."""
    from zephyr_local.cards import hub_id, yaml_header

    head = f"{report.head_bits}-bit" if report.head_bits else f"{report.bits}-bit (same)"
    tags = ["mlx", "zephyr-local", "quantized", f"{report.bits}-bit"]
    lines = [
        yaml_header(hub_id(Path(report.source)), tags),
        f"# {Path(report.output).name}",
        "",
        (f"MLX {report.bits}-bit quantization of `{report.source}`, "
         f"made by zephyr-local {report.tool_version} (mlx-lm {report.mlx_lm_version})."),
        "",
        "| setting | value |",
        "|---|---|",
        f"| bits | {report.bits} |",
        f"| group size | {report.group_size} |",
        f"| embedding and output head | {head} |",
        f"| scales, biases, other parameters | {report.dtype} |",
        f"| bits per weight ({report.bits}-bit layers) | {report.bits_per_weight:.3f} |",
    ]
    if report.head_bits_per_weight:
        lines.append(f"| bits per weight (embedding, head) | {report.head_bits_per_weight:.3f} |")
    lines += [
        f"| bits per weight (all parameters) | {report.overall_bits_per_weight:.3f} |",
        f"| size | {_size(report.source_bytes)} -> {_size(report.output_bytes)} |",
    ]
    q = report.quality
    if q:
        lines += [
            (f"| perplexity, source -> quantized | {q['source_perplexity']:.3f} -> "
             f"{q['quantized_perplexity']:.3f} ({q['tokens']} tokens of the built-in text) |"),
            f"| mean KL(source \\|\\| quantized) | {q['mean_kl']:.5f} nats |",
        ]
    lines += [
        "",
        "Use: `zephyr-local chat -m <this directory>`, or `mlx_lm.load(<this directory>)`.",
        "Full numbers: `quantization_report.json`.",
        "",
    ]
    (dst / "README.md").write_text("\n".join(lines), encoding="utf-8")


def write_weights(weights: dict, parameters: int, dst: Path, progress=None) -> int:
    """Evaluate one module at a time and write it to 1 GB shards in mlx-lm's layout.

    `weights` (name -> lazy array) is emptied as shards are written, so each
    array is freed once on disk; the caller must hold no other reference.

    `progress(done, total, module)` is called as each module is evaluated.

    Returns:
        The bytes of weights written.
    """
    import mlx.core as mx
    from mlx_lm.utils import make_shards

    written = 0
    shards = make_shards(weights, SHARD_GB)
    total = len({k.rsplit(".", 1)[0] for k in weights})
    fmt = "model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1 else "model.safetensors"
    index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values()),
                          "total_parameters": parameters}, "weight_map": {}}
    done = 0
    for i, shard in enumerate(shards):
        by_module: dict[str, list] = {}
        for k, v in shard.items():
            by_module.setdefault(k.rsplit(".", 1)[0], []).append(v)
        for module, arrays in by_module.items():
            mx.eval(arrays)  # one layer's source read, quantized, and kept
            done += 1
            if progress:
                progress(done, total, module)
        by_module = arrays = None
        name = fmt.format(i + 1, len(shards))
        mx.save_safetensors(str(dst / name), shard, metadata={"format": "mlx"})
        for k in shard:
            index["weight_map"][k] = name
            written += weights.pop(k).nbytes
        shards[i] = shard = None
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
    return written
