"""Quantize a float model to 2-8 bit MLX affine format, and measure what it cost.

mlx-lm does the quantization (`quantize_model`, `save_config`). What it lacks and
this module adds: checks that fail before any work, a write that evaluates one
layer at a time and streams it to small shards (mlx-lm's `save_model` evaluates a
whole 5 GB shard at once), an atomic output directory, and the report.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from zephyr_local.atomic import check_writable, dir_size, replace_dir, temp_dir, writing
from zephyr_local.backend import COMPUTE_DTYPES, default_dtype, peak_rss_gb
from zephyr_local.errors import ModelFormatError, ZephyrError
from zephyr_local.quantize_files import copy_tokenizer_files, write_model_card, write_weights

ALLOWED_BITS = (2, 3, 4, 5, 6, 8)
ALLOWED_GROUP_SIZES = (32, 64, 128)
SOURCE_DTYPES = ("F32", "F16", "BF16")
HEAD_LAYERS = ("model.embed_tokens", "lm_head")
REPORT_FILE = "quantization_report.json"
DISK_MARGIN_BYTES = 64 << 20  # tokenizer files, config, report

Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class QuantizeOptions:
    """How to quantize; `validate()` checks every field before any work."""

    bits: int = 4  # per quantized weight: one of ALLOWED_BITS
    group_size: int = 64  # weights sharing a scale and bias: one of ALLOWED_GROUP_SIZES
    dtype: str | None = None  # scales, biases, unquantized parameters (None: the backend's)
    head_bits: int | None = None  # the embedding and output head (None: the same as bits)
    force: bool = False  # replace an existing output
    evaluate: bool = True  # measure perplexity and KL against the source

    def __post_init__(self) -> None:
        if self.dtype is None:
            self.dtype = default_dtype()

    def validate(self) -> QuantizeOptions:
        """Raise ZephyrError naming the bad value and the allowed ones."""
        _one_of("--bits", self.bits, ALLOWED_BITS)
        _one_of("--group-size", self.group_size, ALLOWED_GROUP_SIZES)
        _one_of("--dtype", self.dtype, COMPUTE_DTYPES)
        if self.head_bits is not None:
            _one_of("--head-bits", self.head_bits, ALLOWED_BITS)
        return self


def _one_of(flag: str, value, allowed) -> None:
    if value not in allowed:
        raise ZephyrError(
            f"{flag} {value} is not supported: choose one of {', '.join(map(str, allowed))}")


def output_name(source_name: str, opts: QuantizeOptions) -> str:
    """`<name>-<bits>bit`, plus `-g<group>` when not 64 and `-head<bits>` when set."""
    name = f"{source_name}-{opts.bits}bit"
    if opts.group_size != 64:
        name += f"-g{opts.group_size}"
    if opts.head_bits is not None and opts.head_bits != opts.bits:
        name += f"-head{opts.head_bits}"
    return name


@dataclass
class QuantizeReport:
    """What `quantize` did; saved as quantization_report.json beside the model."""

    source: str
    output: str
    bits: int
    group_size: int
    dtype: str
    head_bits: int | None
    source_bytes: int
    output_bytes: int
    bits_per_weight: float  # over the layers at `bits`: bits + 2 * dtype bits / group_size
    head_bits_per_weight: float | None  # embedding and head, when --head-bits differs
    overall_bits_per_weight: float  # every parameter, norms included
    parameters: int
    quantized_parameters: int
    seconds: float
    quantize_seconds: float  # checks, quantization and writing the weights
    quantize_peak_rss_gb: float  # the process (getrusage) when the weights were written
    quantize_peak_mlx_gb: float  # MLX's own allocator, likewise
    peak_rss_gb: float  # the whole run, quality evaluation included
    peak_mlx_gb: float
    quality: dict | None = None
    tool_version: str = ""
    mlx_lm_version: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuantizePlan:
    """What `plan` checked and `run` executes: the source, the output and the model."""

    source: Path
    out: Path
    config: dict
    model: object  # lazily loaded: nothing read yet
    estimate_bytes: int


def _check_source(source: Path) -> dict:
    from zephyr_local.loading import check_model_dir
    from zephyr_local.safetensors_header import read_header

    config = check_model_dir(source)
    quant = config.get("quantization") or config.get("quantization_config")
    if quant:
        desc = f"{quant.get('bits', '?')}-bit" if isinstance(quant, dict) else "quantized"
        raise ModelFormatError(
            f"{source}: already quantized ({desc}); quantize the original float model "
            "(fp32/fp16/bf16 safetensors) instead")
    for shard in sorted(source.glob("*.safetensors")):
        for name, entry in read_header(shard).items():
            if entry["dtype"] not in SOURCE_DTYPES:
                raise ModelFormatError(
                    f"{shard}: tensor {name} is {entry['dtype']}; the source must be "
                    f"fp32/fp16/bf16 safetensors")
    return config


def _quantized_modules(model, opts: QuantizeOptions) -> dict:
    """{path: (bits, module)} for each layer to quantize; raises on bad dimensions."""
    out, bad = {}, []
    for path, module in model.named_modules():
        if not hasattr(module, "to_quantized"):
            continue
        bits = opts.head_bits if (opts.head_bits and path in HEAD_LAYERS) else opts.bits
        dim = module.weight.shape[-1]
        if dim % opts.group_size:
            bad.append((_natural(path), path, dim))
        out[path] = (bits, module)
    if bad:
        _, path, dim = min(bad)
        ok = [g for g in ALLOWED_GROUP_SIZES if all(d % g == 0 for *_, d in bad)]
        more = f" and {len(bad) - 1} more layers" if len(bad) > 1 else ""
        raise ZephyrError(
            f"--group-size {opts.group_size} does not divide the input dimension {dim} of "
            f"{path}{more}: choose one of {', '.join(map(str, ok)) or '(none fits this model)'}")
    return out


def _natural(path: str) -> tuple:
    """Sort key that puts layers.2 before layers.10."""
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def _estimate_bytes(model, layers: dict, opts: QuantizeOptions) -> int:
    """Output size: quantized layers at bits + a scale and a bias per group, the rest in dtype."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    size = getattr(mx, opts.dtype).size
    total = sum(v.size for _, v in tree_flatten(model.parameters())) * size
    for bits, module in layers.values():
        n = module.weight.size
        total += int(n * (bits + 16 * size / opts.group_size) / 8) - n * size
    return total


def plan(source: Path, out: Path, opts: QuantizeOptions) -> QuantizePlan:
    """Every check that can fail, before any work: options, source, output, disk."""
    opts.validate()
    source, out = Path(source), Path(out)
    config = _check_source(source)
    if out.exists() and not opts.force:
        raise ZephyrError(f"{out} already exists: pass --force to replace it")
    if out.resolve() == source.resolve():
        raise ZephyrError(f"{out} is the source model: choose another --out")
    check_writable(out.parent)
    from mlx_lm.utils import load_model

    try:
        model, config = load_model(source, lazy=True)  # reads headers only
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelFormatError(f"{source}: cannot load weights ({exc})") from None
    layers = _quantized_modules(model, opts)
    need = _estimate_bytes(model, layers, opts) + DISK_MARGIN_BYTES
    parent = out.parent
    with writing(out):
        parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < need:
        raise ZephyrError(
            f"not enough disk space for {out}: need about {need / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free on {parent}")
    return QuantizePlan(source, out, config, model, need)


def cast_floating(model, dtype: str) -> None:
    """Cast the model's float parameters to `dtype` (lazily); quantize_model keeps the
    dtype it finds for the scales and biases, so this is what chooses theirs."""
    import mlx.core as mx
    from mlx.utils import tree_map

    target = getattr(mx, dtype)
    model.update(tree_map(
        lambda x: x.astype(target) if mx.issubdtype(x.dtype, mx.floating) else x,
        model.parameters()))


def _quantize_lazily(model, config: dict, opts: QuantizeOptions):
    """mlx-lm's quantize_model on the lazy model: builds the graph, computes nothing."""
    from mlx_lm.utils import quantize_model

    cast_floating(model, opts.dtype)
    head = {"group_size": opts.group_size, "bits": opts.head_bits, "mode": "affine"}

    def predicate(path, module):
        return head if (opts.head_bits and path in HEAD_LAYERS) else True

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its own bits/weight line
        return quantize_model(model, config, opts.group_size, opts.bits,
                              quant_predicate=predicate if opts.head_bits else None)


def _layer_stats(model) -> dict:
    """Parameter and byte counts, in total and over the quantized layers."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import get_total_parameters

    stats = {"parameters": get_total_parameters(model), "by_bits": {}}
    for _, m in model.named_modules():
        if hasattr(m, "bits"):  # a quantized layer: packed weight, scales, biases
            nbytes, params = stats["by_bits"].get(m.bits, (0, 0))
            stats["by_bits"][m.bits] = (
                nbytes + sum(v.nbytes for _, v in tree_flatten(m.parameters())),
                params + m.weight.size * 32 // m.bits)
    return stats


def _bpw(nbytes_params: tuple[int, int] | None) -> float | None:
    return round(8 * nbytes_params[0] / nbytes_params[1], 4) if nbytes_params else None


def _versions() -> tuple[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("zephyr-local", "mlx-lm"):
        try:
            out.append(version(pkg))
        except PackageNotFoundError:
            out.append("unknown")
    return out[0], out[1]


def quantize(
    source: Path,
    out: Path,
    opts: QuantizeOptions,
    progress: Progress | None = None,
    eval_progress: Progress | None = None,
) -> QuantizeReport:
    """Quantize the model at `source` into `out`, atomically, and report on it.

    The output is built in a hidden temporary directory beside `out` and renamed
    into place only when complete; any failure (Ctrl-C included) removes it.

    Raises:
        ZephyrError: bad options, an unusable or already-quantized source, an
            existing output without `force`, too little disk space: all before
            any work.
    """
    import mlx.core as mx

    start = time.perf_counter()
    p = plan(source, out, opts)
    mx.reset_peak_memory()
    tmp = temp_dir(p.out)
    try:
        with writing(p.out):
            report = _build(p, tmp, opts, start, eval_progress, progress)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _build(p: QuantizePlan, tmp: Path, opts: QuantizeOptions, start: float, eval_progress,
           progress) -> QuantizeReport:
    """Quantize, write, evaluate and report into `tmp`, then move it to `p.out`."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    model, qconfig = _quantize_lazily(p.model, p.config, opts)
    p.model = None
    stats = _layer_stats(model)
    weights = dict(tree_flatten(model.parameters()))
    del model  # the flat dict alone holds the arrays: writing a shard frees it
    stats["bytes"] = write_weights(weights, stats["parameters"], tmp, progress)
    stats["seconds"] = time.perf_counter() - start
    stats["rss"], stats["mlx"] = peak_rss_gb(), mx.get_peak_memory() / 1e9
    copy_tokenizer_files(p.source, tmp)
    if "torch_dtype" in qconfig:
        qconfig["torch_dtype"] = opts.dtype
    _save_config(qconfig, tmp)  # last: a directory without config.json is no model
    quality = _evaluate(p.source, tmp, eval_progress) if opts.evaluate else None
    report = _report(p, tmp, opts, stats, quality, time.perf_counter() - start)
    (tmp / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2))
    write_model_card(tmp, report)
    report.output_bytes = dir_size(tmp)
    replace_dir(tmp, p.out)
    return report


def _report(p: QuantizePlan, tmp: Path, opts: QuantizeOptions, stats: dict, quality,
            seconds: float) -> QuantizeReport:
    import mlx.core as mx

    tool, mlx_lm = _versions()
    head_bpw = None
    if opts.head_bits not in (None, opts.bits):
        head_bpw = _bpw(stats["by_bits"].get(opts.head_bits))
    return QuantizeReport(
        source=str(p.source), output=str(p.out), bits=opts.bits, group_size=opts.group_size,
        dtype=opts.dtype, head_bits=opts.head_bits,
        source_bytes=dir_size(p.source), output_bytes=dir_size(tmp),
        bits_per_weight=_bpw(stats["by_bits"].get(opts.bits)), head_bits_per_weight=head_bpw,
        overall_bits_per_weight=round(8 * stats["bytes"] / stats["parameters"], 4),
        parameters=stats["parameters"],
        quantized_parameters=sum(n for _, n in stats["by_bits"].values()),
        seconds=round(seconds, 2), quantize_seconds=round(stats["seconds"], 2),
        quantize_peak_rss_gb=round(stats["rss"], 3), quantize_peak_mlx_gb=round(stats["mlx"], 3),
        peak_rss_gb=round(peak_rss_gb(), 3), peak_mlx_gb=round(mx.get_peak_memory() / 1e9, 3),
        quality=quality.as_dict() if quality else None, tool_version=tool, mlx_lm_version=mlx_lm,
    )


def _save_config(config: dict, dst: Path) -> None:
    from mlx_lm.utils import save_config

    save_config(config, config_path=dst / "config.json")


def _evaluate(source: Path, quantized: Path, progress: Progress | None):
    from zephyr_local.loading import load_tokenizer
    from zephyr_local.quality import evaluate

    return evaluate(source, quantized, load_tokenizer(source), progress=progress)
