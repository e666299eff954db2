"""Merge a LoRA or DoRA adapter into the base weights, optionally quantize, save a model dir.

mlx-lm does the merging (`LoRALinear.fuse` / `DoRALinear.fuse`), the quantization
(`quantize_model`), the dequantization and the weight saving; this adds the adapter
check, atomic output, `--bits` on a base that is already quantized (dequantized
first, then requantized), tokenizer files copied byte for byte (re-saving them
through transformers rewrites them and drops `tokenizer.model`), a model card
with the Hub's header, and the GGUF export with an ollama Modelfile.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlx.utils import tree_unflatten

from zephyr_local import loading
from zephyr_local.atomic import atomic_dir, check_writable
from zephyr_local.backend import COMPUTE_DTYPES, default_dtype
from zephyr_local.cards import FUSE_FILE, hub_id, yaml_header
from zephyr_local.errors import ZephyrError
from zephyr_local.quantize import ALLOWED_BITS, cast_floating
from zephyr_local.quantize_files import copy_tokenizer_files
from zephyr_local.train.lora import load_adapter_into

Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class FuseOptions:
    """What `fuse` writes besides the merged weights."""

    bits: int | None = None
    group_size: int = 64
    dequantize: bool = False  # a float16 model even from a quantized base
    export_gguf: bool = False  # also <out>/<gguf_name> (float16) and a Modelfile
    gguf_name: str = "ggml-model-f16.gguf"
    force: bool = False
    # Float parameters (and with bits the scales and biases); None keeps the base's,
    # except with bits, where it is the backend's fastest (backend.default_dtype).
    dtype: str | None = None

    def validate(self) -> FuseOptions:
        if self.bits is not None and self.bits not in ALLOWED_BITS:
            raise ZephyrError(f"--bits {self.bits}: choose {', '.join(map(str, ALLOWED_BITS))}")
        if self.dtype is not None and self.dtype not in COMPUTE_DTYPES:
            raise ZephyrError(f"--dtype {self.dtype}: choose {', '.join(COMPUTE_DTYPES)}")
        if self.bits is not None and (self.dequantize or self.export_gguf):
            raise ZephyrError("--bits cannot go with --dequantize or --export-gguf "
                              "(GGUF export writes float16)")
        if "/" in self.gguf_name or not self.gguf_name.endswith(".gguf"):
            raise ZephyrError(f"--gguf-path {self.gguf_name!r}: give a file name ending .gguf")
        return self


def fuse(model_path: Path, adapter: Path, out: Path, opts: FuseOptions | None = None,
         progress: Progress | None = None) -> Path:
    """Write base + adapter as a plain model directory at `out` (built beside it, renamed).

    `opts.dtype` casts the float parameters (with `bits`: the scales and biases too);
    None keeps the base's, except with `bits`, where it is the backend's fastest.

    Raises:
        ZephyrError: out exists (without force), bad options, or an adapter for another model.
    """
    from mlx_lm.utils import dequantize_model, quantize_model

    opts = (opts or FuseOptions()).validate()
    step = progress or (lambda done, total, what: None)
    out = Path(out).expanduser()
    if out.exists() and not opts.force:
        raise ZephyrError(f"{out} already exists: pass --force to replace it")
    check_writable(out.parent)
    if opts.export_gguf:
        from zephyr_local.gguf_export import check_tokenizer

        check_tokenizer(Path(model_path))  # before any work, not after the merge
    total = 4 + opts.export_gguf
    step(0, total, "loading")
    loaded = loading.load(Path(model_path))
    model, config = loaded.model, dict(loaded.config)
    load_adapter_into(model, Path(adapter))
    step(1, total, "merging the adapter")
    # A float result wanted from a quantized base: dequantize while merging.
    to_float = bool(config.get("quantization")) and (
        opts.bits is not None or opts.dequantize or opts.export_gguf)
    fused = [(n, m.fuse(dequantize=to_float)) for n, m in model.named_modules()
             if hasattr(m, "fuse")]
    model.update_modules(tree_unflatten(fused))
    if to_float:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    dtype = opts.dtype or (default_dtype() if opts.bits is not None else None)
    if dtype is not None:
        cast_floating(model, dtype)
        config["torch_dtype"] = dtype
    if opts.bits is not None:
        step(2, total, "quantizing")
        model, config = quantize_model(model, config, opts.group_size, opts.bits)
    with atomic_dir(out) as tmp:
        step(3, total, "saving")
        _save(tmp, out.name, Path(model_path), Path(adapter), model, config, opts)
        if opts.export_gguf:
            step(4, total, "writing GGUF")
            from zephyr_local.gguf_export import export_gguf

            export_gguf(tmp, model, config, tmp / opts.gguf_name, out.name)
        loading.check_model_dir(tmp)
    step(total, total, "done")
    return out


def _save(tmp: Path, title: str, model_path: Path, adapter: Path, model, config: dict,
          opts: FuseOptions) -> None:
    from mlx_lm.utils import save_config, save_model

    save_model(tmp, model, donate_model=False)
    save_config(config, config_path=tmp / "config.json")
    copy_tokenizer_files(model_path, tmp)
    base = hub_id(model_path)
    record = {"base_model": base or str(model_path), "base_path": str(model_path),
              "adapter": str(adapter), "bits": opts.bits}
    (tmp / FUSE_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    (tmp / "README.md").write_text(_model_card(title, base, adapter, opts), encoding="utf-8")


def _model_card(title: str, base: str | None, adapter: Path, opts: FuseOptions) -> str:
    tags = ["mlx", "zephyr-local", "lora", "fused"] + (["gguf"] if opts.export_gguf else [])
    quant = f", quantized to {opts.bits} bits (group {opts.group_size})" if opts.bits else ""
    lines = [
        yaml_header(base, tags),
        f"# {title}",
        "",
        (f"Base model `{base or 'a local model'}` with the adapter `{Path(adapter).name}` "
         f"merged in{quant},"),
        "made by `zephyr-local fuse`.",
        "",
        "Use: `zephyr-local chat -m <this directory>`, or `mlx_lm.load(<this directory>)`.",
    ]
    if opts.export_gguf:
        lines.append(f"llama.cpp / ollama: `{opts.gguf_name}`; `ollama create NAME -f Modelfile`.")
    return "\n".join(lines) + "\n"
