"""Quantization quality on real weights (SmolLM2-135M-Instruct, dequantized from its GGUF).

The source was 4-bit (Q4_1) already, so 8-bit output is near-lossless against it and
every lower width must cost more: perplexity and KL are ordered by bits.
"""

from __future__ import annotations

import pytest
from conftest import smollm2_gguf_path

from zephyr_local import quantize as q
from zephyr_local.gguf_import import import_gguf


@pytest.fixture(scope="module")
def float_source(tmp_path_factory):
    out = tmp_path_factory.mktemp("real-quant") / "smollm2-f32"
    import_gguf(smollm2_gguf_path(), out, dtype="float32", dequantize=True)
    return out


def test_quality_is_ordered_by_bits_on_real_weights(float_source, tmp_path):
    quality = {}
    for bits in (8, 4, 3):
        opts = q.QuantizeOptions(bits=bits, group_size=64, dtype="float32").validate()
        quality[bits] = q.quantize(float_source, tmp_path / f"q{bits}", opts).quality
    source = quality[8]["source_perplexity"]
    assert 5 < source < 60, source  # a trained model: tens, not the random model's 46,000
    kl = [quality[b]["mean_kl"] for b in (8, 4, 3)]
    assert 0 < kl[0] < kl[1] < kl[2], kl
    assert quality[8]["quantized_perplexity"] == pytest.approx(source, rel=0.02)
    assert quality[3]["quantized_perplexity"] > quality[4]["quantized_perplexity"] > source
