"""The dtype models are written in: the backend's fastest by default, chosen in backend.py.

The backend is monkeypatched, so each default is checked on any machine; the files
written are read back through their safetensors headers, not through our reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zephyr_local import backend
from zephyr_local import quantize as q
from zephyr_local.safetensors_header import read_header

HEADER_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
# What the backends must get: float32 where MLX's CPU kernels are fast, float16 on GPUs.
EXPECTED = {"cpu": "float32", "metal": "float16", "cuda": "float16"}


@pytest.fixture
def on_backend(monkeypatch):
    def set_backend(name: str) -> None:
        monkeypatch.setattr(backend, "backend_name", lambda: name)

    return set_backend


def _headers(path: Path) -> dict:
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(read_header(shard))
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_dtype_follows_the_backend(on_backend, name):
    on_backend(name)
    assert backend.default_dtype() == EXPECTED[name]
    assert q.QuantizeOptions().dtype == EXPECTED[name]


def test_every_compute_dtype_is_accepted_and_others_refused():
    for dtype in backend.COMPUTE_DTYPES:
        assert q.QuantizeOptions(dtype=dtype).validate().dtype == dtype
    with pytest.raises(q.ZephyrError, match="--dtype float64 is not supported: choose one of "
                                            "float32, float16, bfloat16"):
        q.QuantizeOptions(dtype="float64").validate()


@pytest.mark.parametrize("name", ["cpu", "metal"])
def test_quantize_without_dtype_writes_the_backend_default(run_cli, on_backend, tmp_path, name):
    on_backend(name)
    out = tmp_path / "q8"
    r = run_cli("quantize", "zephyr-test", "--bits", "8", "--group-size", "32", "--no-eval",
                "--out", str(out))
    assert r.exit_code == 0, r.output
    want = EXPECTED[name]
    headers = _headers(out)
    assert {headers[k]["dtype"] for k in headers if k.endswith((".scales", ".biases"))} == \
        {HEADER_DTYPE[want]}
    assert headers["model.norm.weight"]["dtype"] == HEADER_DTYPE[want]
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == want
    assert json.loads((out / q.REPORT_FILE).read_text())["dtype"] == want


@pytest.fixture
def zero_adapter(test_model, tmp_path) -> Path:
    """A LoRA adapter on the test model whose B matrices are zero (fusing changes nothing)."""
    import mlx.core as mx

    from zephyr_local import loading
    from zephyr_local.train.config import LoRAConfig
    from zephyr_local.train.lora import adapter_config, apply_lora, save_adapter

    model = loading.load(test_model).model
    cfg = LoRAConfig(rank=2, dropout=0.0, layers=-1, targets=("q_proj",))
    apply_lora(model, cfg)
    mx.eval(model.parameters())
    out = tmp_path / "adapter"
    out.mkdir()
    save_adapter(out, model, adapter_config(cfg, len(model.layers)))
    return out


@pytest.mark.parametrize("name,flags,want", [
    ("metal", ["--bits", "4"], "float16"),
    ("cpu", ["--bits", "4"], "float32"),
    ("metal", [], "float32"),  # without --bits the base's dtype is kept (the test model's)
    ("cpu", ["--bits", "4", "--dtype", "bfloat16"], "bfloat16"),
])
def test_fuse_dtype(run_cli, on_backend, zero_adapter, tmp_path, name, flags, want):
    on_backend(name)
    out = tmp_path / "fused"
    r = run_cli("fuse", "-m", "zephyr-test", "--adapter", str(zero_adapter), "--out", str(out),
                "--group-size", "32", *flags)
    assert r.exit_code == 0, r.output
    headers = _headers(out)
    floats = {h["dtype"] for k, h in headers.items() if h["dtype"] != "U32"}
    assert floats == {HEADER_DTYPE[want]}
    if flags:
        assert headers["lm_head.scales"]["dtype"] == HEADER_DTYPE[want]
        assert json.loads((out / "config.json").read_text())["torch_dtype"] == want


def test_dtype_bench_dequantizes_a_quantized_source_once(test_model, tmp_path):
    """The dtype case's float32 copy of a quantized model equals MLX's own dequantize."""
    import mlx.core as mx

    from zephyr_local.bench.dtype import float_source

    src = tmp_path / "src-8bit"
    q.quantize(test_model, src, q.QuantizeOptions(bits=8, group_size=32, dtype="float16",
                                                  evaluate=False))
    copy = float_source(src, tmp_path / "cache")
    assert copy != src and float_source(test_model, tmp_path / "other") == test_model
    assert "quantization" not in json.loads((copy / "config.json").read_text())
    qw = mx.load(str(src / "model.safetensors"))
    fw = mx.load(str(copy / "model.safetensors"))
    layer = "model.layers.1.mlp.down_proj"
    expected = mx.dequantize(qw[f"{layer}.weight"], qw[f"{layer}.scales"], qw[f"{layer}.biases"],
                             group_size=32, bits=8).astype(mx.float32)
    assert fw[f"{layer}.weight"].dtype == mx.float32
    assert mx.allclose(fw[f"{layer}.weight"], expected, atol=1e-6).item()
    mtime = (copy / "config.json").stat().st_mtime_ns
    assert float_source(src, tmp_path / "cache") == copy  # made once
    assert (copy / "config.json").stat().st_mtime_ns == mtime
