"""The benchmark harness in its smallest form, so it cannot rot (fields, not speeds)."""

from __future__ import annotations

import json

from zephyr_local.bench import harness


def test_harness_writes_results(test_model, tmp_path, monkeypatch):
    tiny = {"prompt_lengths": (16, 64), "max_tokens": 4, "repeats": 1, "turns": 3,
            "user_tokens": 8, "reply_tokens": 4, "bandwidth_mb": 8, "blas_repeats": 1,
            "dpo_dims": {}, "dpo_steps": 1, "dpo_max_length": 64, "dpo_batch_pairs": 1,
            "chat_tokens": 4, "quantize_7b": False,
            "multiturn_dims": {"num_hidden_layers": 2}, "docs_bytes": 1 << 16,
            "distributed": None}
    monkeypatch.setitem(harness.MODES, "quick", tiny)
    run = harness.run("quick", str(test_model))
    paths = harness.write(run, tmp_path)
    record = json.loads(paths["json"].read_text())
    assert record["machine"]["backend"] == "cpu" and record["machine"]["mlx_version"]
    cases = {c["name"]: c for c in record["cases"]}
    assert set(cases) == {"generation", "multi-turn", "hardware limit", "linux-cpu-blas", "dpo",
                          "chat UI", "quantize 7B", "retrieval", "distributed"}
    docs = cases["retrieval"]["details"]
    assert docs["bytes"] == 1 << 16 and docs["passages"] > 10 and docs["passages_used"] > 0
    gen = cases["generation"]
    assert len(gen["ratios"]) == 3 * 2  # three metrics per prompt length
    for r in gen["ratios"]:
        assert r["ours"] > 0 and r["baseline"] > 0 and r["goal"] == ">= 0.98"
        assert isinstance(r["met"], bool)
    turns = cases["multi-turn"]["details"]["cache_reuse"]
    assert len(turns) == 3
    # With cache reuse, later turns prefill less than their whole prompt.
    assert all(t["prefilled"] < t["prompt_tokens"] for t in turns[1:])
    rebuild = cases["multi-turn"]["details"]["re_prefill"]
    assert all(t["prefilled"] == t["prompt_tokens"] for t in rebuild)
    hw = cases["hardware limit"]["details"]
    assert hw["read_bandwidth_gb_s"] > 0 and hw["ceiling_tok_s"] > 0
    blas = cases["linux-cpu-blas"]
    assert blas["skipped"] or len(blas["ratios"]) == 3
    chat = cases["chat UI"]["ratios"][0]
    assert chat["goal"] == ">= 0.95" and chat["ours"] > 0 and chat["baseline"] > 0
    dpo = cases["dpo"]
    assert [r["metric"] for r in dpo["ratios"]] == ["peak memory of a step", "time per step (best)"]
    assert dpo["details"]["naive"]["peak_memory_gb"] > 0
    md = paths["md"].read_text()
    assert "| generation | prompt tok/s, 16-token prompt |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["json"].name.endswith("-cpu.json")


def test_bench_rejects_unknown_case(run_cli, tmp_path):
    r = run_cli("bench", "--case", "nope", "--out", str(tmp_path))
    assert r.exit_code == 1 and "unknown case(s) nope" in r.stderr
