"""The real trained model (SmolLM2-135M-Instruct, imported from its GGUF) end to end.

Its own tokenizer ends turns with `<|im_end|>` (id 2) and adds no BOS: the Zephyr
template must use that, generation must stop at it, and every command must run.
"""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from zephyr_local.engine import Engine
from zephyr_local.sampling import SamplingOptions

FACTS = [("What is the capital of France?", "paris"),
         ("What color is the sky on a clear day?", "blue"),
         ("What is the chemical symbol for gold?", "au"),
         ("Who wrote Romeo and Juliet?", "shakespeare")]


@pytest.fixture(scope="module")
def real_engine(smollm2_model):
    eng = Engine.load(str(smollm2_model))
    yield eng
    eng.close()


def greedy(engine, prompt: str, max_tokens: int = 48):
    parts, last = [], None
    for last in engine.session().reply([{"role": "user", "content": prompt}],
                                       SamplingOptions(temperature=0.0, max_tokens=max_tokens)):
        parts.append(last.text)
    return "".join(parts), last


@pytest.mark.parametrize("prompt, word", FACTS)
def test_greedy_factual_replies_are_right_and_stop(real_engine, prompt, word):
    text, last = greedy(real_engine, prompt)
    assert last.finish_reason == "stop", text
    assert word in text.lower(), text
    assert "<|im_end|>" not in text and "</s>" not in text


def test_prompt_ends_turns_with_the_models_own_eos(real_engine):
    """No literal `</s>` (three plain tokens for this tokenizer): each turn ends with id 2."""
    from zephyr_local.template import encode

    tok = real_engine.tokenizer
    ids = encode(tok, [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "Hi"}])
    assert ids.count(tok.eos_token_id) == 2
    assert tok.encode("</s>") != [tok.eos_token_id] and "</s>" not in tok.decode(ids)
    assert tok.decode(ids).startswith("<|system|>\nBe brief.<|im_end|>\n<|user|>")


def test_generate_says_once_that_the_zephyr_template_is_used(run_cli, real_store):
    r = run_cli("--models-dir", str(real_store), "generate", "-m", "smollm2", "--temp", "0",
                "--max-tokens", "8", "--prompt", "Hi")
    assert r.exit_code == 0, r.output
    assert r.stderr.count("ships its own chat template") == 1
    plain = run_cli("generate", "-m", "zephyr-test", "--temp", "0", "--max-tokens", "2", "-p", "Hi")
    assert "ships its own chat template" not in plain.stderr


def test_sft_evaluate_fuse_on_the_imported_model(run_cli, real_store, tmp_path, monkeypatch):
    monkeypatch.setenv("ZEPHYR_LOCAL_HOME", str(tmp_path / "home"))
    rows = [{"messages": [{"role": "user", "content": f"Say the number {i}."},
                          {"role": "assistant", "content": f"The number is {i}."}]}
            for i in range(8)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store, out = str(real_store), tmp_path / "sft"
    r = run_cli("--models-dir", store, "sft", "-m", "smollm2", "--data", str(data), "--out",
                str(out), "--iters", "2", "--batch-size", "2", "--lora-layers", "2",
                "--max-length", "64")
    assert r.exit_code == 0, r.output
    e = run_cli("--models-dir", store, "evaluate", "-m", "smollm2", "--adapter", str(out),
                "--data", str(data))
    assert e.exit_code == 0, e.output
    assert json.loads(e.stdout)["rows"] == 8
    fused = tmp_path / "fused"
    f = run_cli("--models-dir", store, "fuse", "-m", "smollm2", "--adapter", str(out), "--out",
                str(fused))
    assert f.exit_code == 0, f.output
    # Fusing into a 4-bit base re-quantizes the adapted layers: each fused weight is the
    # base weight plus the LoRA delta (scale * A @ B), within one quantization step (MLX
    # moves the grid so that zero is exact, so the bound is not half a step).
    fw, base = mx.load(str(fused / "model.safetensors")), mx.load(
        str(real_store / "smollm2" / "model.safetensors"))
    adapter = mx.load(str(out / "adapters.safetensors"))
    scale = json.loads((out / "adapter_config.json").read_text())["lora_parameters"]["scale"]
    layer = "model.layers.29.self_attn.q_proj"
    delta = scale * (adapter[f"{layer}.lora_a"] @ adapter[f"{layer}.lora_b"]).T

    def deq(w, p):
        return mx.dequantize(w[f"{p}.weight"], w[f"{p}.scales"], w[f"{p}.biases"], 32, 4)

    err = mx.abs(deq(fw, layer) - (deq(base, layer) + delta))
    step = mx.abs(mx.repeat(fw[f"{layer}.scales"], 32, axis=1))
    assert mx.all(err <= step + 1e-5).item() and mx.abs(delta).max().item() > 0
    untouched = "model.layers.0.self_attn.q_proj.weight"
    assert mx.array_equal(fw[untouched], base[untouched]).item()
    g = run_cli("generate", "-m", str(fused), "--temp", "0", "--max-tokens", "8", "-p", "Say 3.")
    assert g.exit_code == 0, g.output
