"""The one seam between zephyr-local and the compute backend (Metal, CUDA or CPU).

Everything that depends on which MLX backend runs lives here: the BLAS swap for
Linux CPU wheels, the dtype models are made in, the prompt-lookup proposal length,
and the description of the device that `info` prints.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# Debian/Ubuntu `libopenblas0-pthread`, then the generic alternatives link.
OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

# What preload_blas did, for `info`: (name, detail).
_blas_state: tuple[str, str] = ("not checked", "")


def preload_blas() -> tuple[str, str]:
    """Load a system OpenBLAS into the process before MLX is imported.

    The Linux CPU wheel of MLX links the slow reference (netlib) BLAS through an
    ordinary dynamic dependency; a BLAS loaded earlier with RTLD_GLOBAL provides
    the same symbols first, so fp32 matmuls run on OpenBLAS (~30-50x faster).
    `ZEPHYR_LOCAL_BLAS=off` disables it; `ZEPHYR_LOCAL_BLAS=/path/libopenblas.so`
    picks the library. A no-op on macOS (Accelerate) and once MLX is loaded.
    """
    global _blas_state
    if _blas_state[0] != "not checked":
        return _blas_state
    setting = os.environ.get("ZEPHYR_LOCAL_BLAS", "").strip()
    if sys.platform == "darwin":
        _blas_state = ("accelerate", "macOS")
    elif setting.lower() == "off":
        _blas_state = ("reference", "ZEPHYR_LOCAL_BLAS=off")
    elif "mlx" in sys.modules or "mlx.core" in sys.modules:
        _blas_state = ("reference", "mlx was imported before zephyr_local")
    else:
        candidates = (setting,) if setting else OPENBLAS_CANDIDATES
        _blas_state = ("reference", "no system OpenBLAS found")
        for path in candidates:
            if not os.path.exists(path):
                if setting:
                    _blas_state = ("reference", f"ZEPHYR_LOCAL_BLAS={path} does not exist")
                continue
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                _blas_state = ("reference", f"could not load {path}: {exc}")
                continue
            _blas_state = ("openblas", path)
            break
    return _blas_state


def blas() -> tuple[str, str]:
    """The BLAS the CPU backend uses: (name, detail)."""
    return _blas_state


def backend_name() -> str:
    """`metal`, `cuda` or `cpu`: the backend MLX computes on by default."""
    import mlx.core as mx

    if mx.default_device() == mx.cpu:
        return "cpu"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "cuda"
    return "metal"


# Prompt-lookup proposal length per backend: the most tokens one verify pass carries.
NUM_DRAFT_TOKENS = {"cpu": 6, "metal": 8, "cuda": 8}


def default_num_draft_tokens() -> int:
    """Prompt-lookup proposal length for this backend.

    On Metal and CUDA batch-1 decode is bound by reading the weights, so each extra
    token of a verify pass adds only its compute (about a tenth of a token at 7B 4-bit);
    on the CPU it adds more (measured by the `lookup` benchmark case), so proposals stay
    shorter there.
    """
    return NUM_DRAFT_TOKENS[backend_name()]


# The dtypes a model's float parameters (and a quantized model's scales and biases) can take.
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")

# The fastest per backend (`zephyr-local bench --case dtype` measures it):
# - cpu: float32. Only float32 matmuls reach BLAS, and MLX's CPU quantized matmul has a
#   vectorised kernel only for float32; float16/bfloat16 take a scalar loop in the
#   16-bit type: decode with float16 scales measured 10x to 100x+ slower.
# - metal: float16, which every Apple GPU computes at full rate (M1/M2 lack fast bfloat16).
# - cuda: float16 (not measured here). MLX's CUDA matmuls use tensor cores for float16 and
#   bfloat16 but plain FMA for float32, float32 scales would double the scale bytes that
#   memory-bound decode reads, and float16 keeps 3 more mantissa bits than bfloat16.
DEFAULT_DTYPES = {"cpu": "float32", "metal": "float16", "cuda": "float16"}


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB (getrusage counts bytes on macOS, KiB on Linux)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


def default_dtype() -> str:
    """The dtype that quantize, fuse and import write by default: the backend's fastest."""
    return DEFAULT_DTYPES[backend_name()]


def default_dtypes_text() -> str:
    """`float32 on CPU; float16 on Metal and CUDA`: the table above, for help texts."""
    by: dict[str, list[str]] = {}
    for name, dtype in DEFAULT_DTYPES.items():
        by.setdefault(dtype, []).append({"cpu": "CPU", "metal": "Metal", "cuda": "CUDA"}[name])
    return "; ".join(f"{d} on {' and '.join(names)}" for d, names in by.items())


def device_info() -> dict:
    """A description of the device and memory, for `info` and benchmark records."""
    import mlx.core as mx

    info: dict = {"backend": backend_name(), "machine": platform.machine()}
    try:
        dev = mx.device_info()
        info["device"] = (dev.get("device_name") or dev.get("architecture")
                          or str(mx.default_device()))
        if "memory_size" in dev:
            info["memory_bytes"] = int(dev["memory_size"])
    except Exception:  # older or CPU-only builds describe nothing
        info["device"] = str(mx.default_device())
    if "memory_bytes" not in info:
        try:
            info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
    info["processor"] = platform.processor() or _cpu_model()
    name, detail = blas()
    used = info["backend"] == "cpu" or sys.platform == "darwin"
    info["blas"] = name if used else f"{name} (unused)"
    info["blas_detail"] = detail
    return info


def describe() -> dict:
    """device_info() plus the versions of the packages that matter, Python and the OS."""
    from importlib.metadata import PackageNotFoundError, version

    info = device_info()
    for pkg in ("mlx", "mlx-lm", "textual", "zephyr-local"):
        try:
            info[f"{pkg}_version"] = version(pkg)
        except PackageNotFoundError:
            info[f"{pkg}_version"] = None
    info["python"] = platform.python_version()
    info["platform"] = platform.platform()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()
