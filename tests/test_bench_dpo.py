"""The DPO step benchmark runs both designs; the naive one holds a second weight copy."""

from __future__ import annotations


def test_dpo_benchmark_reports_both_designs(test_model):
    from zephyr_local.bench.dpo import dpo_step_benchmark
    from zephyr_local.safetensors_header import read_header
    from zephyr_local.train.config import LoRAConfig

    d = dpo_step_benchmark(test_model, steps=1, max_length=64,
                           lora=LoRAConfig(rank=4, layers=2, dropout=0.0))
    ours, naive = d["ours"], d["naive"]
    assert ours["forward_passes_per_step"] == 1 and naive["forward_passes_per_step"] == 4
    assert ours["time_per_step_s"] > 0 and naive["time_per_step_s"] > 0
    # The naive design keeps a second copy of the weights resident: at least most of it shows.
    header = read_header(test_model / "model.safetensors")
    weight_bytes = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in header.values())
    assert naive["peak_memory_gb"] - ours["peak_memory_gb"] > 0.5 * weight_bytes / 1e9
