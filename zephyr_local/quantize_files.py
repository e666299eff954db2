"""The files around a quantized model's weights: tokenizer, model card, the final rename."""

from __future__ import annotations

import shutil
from pathlib import Path

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
        f"MLX {report.bits}-bit quantization of `{report.source}`, "
        f"made by zephyr-local {report.tool_version} (mlx-lm {report.mlx_lm_version}).",
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
            f"| perplexity, source -> quantized | {q['source_perplexity']:.3f} -> "
            f"{q['quantized_perplexity']:.3f} ({q['tokens']} tokens of the built-in text) |",
            f"| mean KL(source \\|\\| quantized) | {q['mean_kl']:.5f} nats |",
        ]
    lines += [
        "",
        "Use: `zephyr-local chat -m <this directory>`, or `mlx_lm.load(<this directory>)`.",
        "Full numbers: `quantization_report.json`.",
        "",
    ]
    (dst / "README.md").write_text("\n".join(lines), encoding="utf-8")
