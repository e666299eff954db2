"""`info`: the facts a bug report needs, as one block to paste (or one JSON object)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGES = ("mlx", "mlx-lm", "transformers", "huggingface_hub", "textual", "zephyr-local")


def gather(models_dir: Path) -> dict:
    """backend.describe() plus the other package versions, paths and the offline state."""
    from importlib.metadata import PackageNotFoundError, version

    from huggingface_hub import constants

    from zephyr_local import backend, store

    data = backend.describe()
    for pkg in PACKAGES:
        try:
            data[f"{pkg}_version"] = version(pkg)
        except PackageNotFoundError:
            data[f"{pkg}_version"] = None
    data["models_dir"] = str(models_dir)
    data["home_dir"] = str(store.home_dir())
    data["hf_cache"] = str(constants.HF_HUB_CACHE)
    data["hf_offline"] = bool(constants.HF_HUB_OFFLINE)
    data["zephyr_local_blas_env"] = os.environ.get("ZEPHYR_LOCAL_BLAS")
    return data


def block(data: dict) -> str:
    """The paste-ready report: a fenced block of `key: value` lines."""
    gib = data.get("memory_bytes", 0) / 2**30
    rows = [
        ("OS", data.get("platform")),
        ("Python", data.get("python")),
        *((pkg, data.get(f"{pkg}_version") or "not installed") for pkg in PACKAGES),
        ("backend", data.get("backend")),
        ("device", data.get("device")),
        ("processor", data.get("processor")),
        ("memory", f"{gib:.1f} GiB"),
        ("BLAS", f"{data.get('blas')} ({data.get('blas_detail')})"),
        ("models dir", data.get("models_dir")),
        ("HF cache", data.get("hf_cache")),
        ("offline", "yes (HF_HUB_OFFLINE=1)" if data.get("hf_offline") else "no"),
    ]
    if "distributed" in data:
        d = data["distributed"]
        rows.append(("distributed", f"{d['size']} ranks, this is rank {d['rank']}" if d["active"]
                     else "no group (single process; start several with mlx.launch)"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:>{width}}: {v}" for k, v in rows]
    return "\n".join(["```text", "zephyr-local info", *lines, "```"])
