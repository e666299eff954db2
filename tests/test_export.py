"""Exports: PEFT adapters against the LoRA math, fused models (tokenizer bytes, GGUF read back
with the `gguf` package, Modelfile, model card), and DoRA adapters made by mlx-lm."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from zephyr_local.quantize_files import TOKENIZER_PATTERNS
from zephyr_local.store import SOURCE_FILE

REPO = "HuggingFaceH4/zephyr-7b-beta"
IDS = mx.array([[1, 523, 28766, 1838, 28766, 28767, 13, 23809, 736]])


def _save(out: Path, model, config: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def pulled_model(test_model, tmp_path_factory) -> Path:
    """The test model as if `pull` had fetched it from REPO."""
    import shutil

    dst = tmp_path_factory.mktemp("pulled") / "zephyr-test"
    shutil.copytree(test_model, dst)
    (dst / SOURCE_FILE).write_text(json.dumps({"repo_id": REPO, "revision": "main"}))
    return dst


@pytest.fixture(scope="module")
def lora_adapter(pulled_model, tmp_path_factory) -> Path:
    """A LoRA adapter (rank 4, alpha 8: scale 2) on the last 2 blocks, B not zero."""
    from zephyr_local.loading import load
    from zephyr_local.train.config import LoRAConfig
    from zephyr_local.train.lora import adapter_config, apply_lora

    model = load(pulled_model).model
    cfg = LoRAConfig(rank=4, alpha=8.0, dropout=0.0, layers=2,
                     targets=("q_proj", "v_proj", "down_proj"))
    mx.random.seed(3)
    apply_lora(model, cfg)
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.05
    config = adapter_config(cfg, len(model.layers), {"base_model": str(pulled_model)})
    return _save(tmp_path_factory.mktemp("lora") / "adapter", model, config)


@pytest.fixture(scope="module")
def dora_adapter(pulled_model, tmp_path_factory) -> Path:
    """A DoRA adapter as mlx-lm makes it (fine_tune_type: dora, with magnitudes m)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from zephyr_local.loading import load

    model = load(pulled_model).model
    model.freeze()
    params = {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "mlp.up_proj"]}
    linear_to_lora_layers(model, 2, params, use_dora=True)
    mx.random.seed(4)
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.05
            m.m = m.m * (1 + 0.1 * mx.random.normal(m.m.shape))
    config = {"fine_tune_type": "dora", "num_layers": 2, "lora_parameters": params}
    return _save(tmp_path_factory.mktemp("dora") / "adapter", model, config)


def test_peft_export_matches_the_lora_math(run_cli, pulled_model, lora_adapter, tmp_path):
    """PEFT's delta B @ A * alpha / r equals what mlx-lm's LoRALinear.fuse adds to W."""
    from safetensors.numpy import load_file

    from zephyr_local.loading import load
    from zephyr_local.train.lora import load_adapter_into

    out = tmp_path / "peft"
    r = run_cli("export-peft", str(lora_adapter), "--out", str(out))
    assert r.exit_code == 0, r.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == REPO
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert config["layers_to_transform"] == [2, 3]  # mlx-lm adapts the last blocks
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 3 * 2
    model = load(pulled_model).model
    load_adapter_into(model, lora_adapter)
    modules = dict(model.named_modules())
    for layer in (2, 3):
        for path in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"):
            prefix = f"base_model.model.model.layers.{layer}.{path}"
            a, b = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
            lora = modules[f"model.layers.{layer}.{path}"]
            out_dims, in_dims = lora.linear.weight.shape
            assert a.shape == (4, in_dims) and b.shape == (out_dims, 4)  # nn.Linear (out, in)
            ours = np.array(lora.fuse().weight) - np.array(lora.linear.weight)
            peft = b @ a * config["lora_alpha"] / config["r"]
            np.testing.assert_allclose(peft, ours, rtol=1e-4, atol=1e-6)
    refused = run_cli("export-peft", str(lora_adapter), "--out", str(out))
    assert refused.exit_code != 0 and "--force" in refused.stderr


def test_fuse_copies_tokenizer_bytes_and_writes_a_hub_card(run_cli, pulled_model, lora_adapter,
                                                           tmp_path):
    fused = tmp_path / "fused"
    r = run_cli("fuse", "-m", str(pulled_model), "--adapter-path", str(lora_adapter),
                "--save-path", str(fused))
    assert r.exit_code == 0, r.output
    names = [n for n in TOKENIZER_PATTERNS if (pulled_model / n).is_file()]
    assert "tokenizer.model" in names and "tokenizer_config.json" in names
    for name in names:
        assert (fused / name).read_bytes() == (pulled_model / name).read_bytes(), name
    card = (fused / "README.md").read_text()
    header = card.split("---\n")[1]
    assert f'base_model: "{REPO}"' in header and "library_name: mlx" in header
    assert "tags:" in header


def _field(reader, key):
    field = reader.fields[key]
    return field.contents()


def test_fuse_export_gguf_reads_back_with_the_gguf_package(run_cli, pulled_model, lora_adapter,
                                                             tmp_path):
    import gguf
    import sentencepiece

    from zephyr_local.loading import load

    fused = tmp_path / "g"
    r = run_cli("fuse", "-m", str(pulled_model), "--adapter", str(lora_adapter), "--out",
                str(fused), "--export-gguf")
    assert r.exit_code == 0, r.output
    reader = gguf.GGUFReader(str(fused / "ggml-model-f16.gguf"))
    config = json.loads((fused / "config.json").read_text())
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == config["num_hidden_layers"]
    assert _field(reader, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert "<|assistant|>" in _field(reader, "tokenizer.chat_template")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores")
    spm = sentencepiece.SentencePieceProcessor(model_file=str(pulled_model / "tokenizer.model"))
    assert len(tokens) == config["vocab_size"] == spm.get_piece_size()
    assert tokens[28705] == spm.id_to_piece(28705)
    assert scores[1000] == pytest.approx(spm.get_score(1000))
    tensors = {t.name: t for t in reader.tensors}
    weights = dict(tree_flatten(load(fused).model.parameters()))
    assert len(tensors) == len(weights)
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    for name, ours in (("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"),
                       ("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight"),
                       ("blk.2.attn_k.weight", "model.layers.2.self_attn.k_proj.weight"),
                       ("output_norm.weight", "model.norm.weight")):
        t = tensors[name]
        expected = np.array(weights[ours].astype(mx.float32))
        n = {"attn_q": heads, "attn_k": kv}.get(name.split(".")[-2])
        if n:  # llama.cpp's converter: permute(w, n_head) of q and k rows
            expected = expected.reshape(n, 2, -1, expected.shape[-1]).swapaxes(1, 2)
            expected = expected.reshape(weights[ours].shape)
        want = gguf.GGMLQuantizationType.F32 if "norm" in name else gguf.GGMLQuantizationType.F16
        assert t.tensor_type == want, name
        got = np.asarray(t.data, dtype=np.float32).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    modelfile = (fused / "Modelfile").read_text()
    assert "FROM ./ggml-model-f16.gguf" in modelfile and 'PARAMETER stop "</s>"' in modelfile
    assert "<|user|>\n{{ .Prompt }}</s>" in modelfile


def test_dora_adapter_from_mlx_lm_fuses_and_evaluates(run_cli, pulled_model, dora_adapter,
                                                      tmp_path):
    from mlx_lm import load as mlx_load

    from zephyr_local.loading import load
    from zephyr_local.train.logprobs import adapters_off
    from zephyr_local.train.lora import load_adapter_into

    theirs, _ = mlx_load(str(pulled_model), adapter_path=str(dora_adapter))
    fused = tmp_path / "dora-fused"
    r = run_cli("fuse", "-m", str(pulled_model), "--adapter", str(dora_adapter), "--out",
                str(fused))
    assert r.exit_code == 0, r.output
    assert mx.allclose(load(fused).model(IDS), theirs(IDS), atol=1e-4).item()
    ours = load(pulled_model).model
    load_adapter_into(ours, dora_adapter)
    assert mx.allclose(ours(IDS), theirs(IDS), atol=1e-5).item()
    with adapters_off(ours):  # the DPO reference of a DoRA adapter is the base, exactly
        assert mx.allclose(ours(IDS), load(pulled_model).model(IDS), atol=1e-5).item()
    e = run_cli("evaluate", "-m", str(pulled_model), "--adapter", str(dora_adapter), "--data",
                "example:prefs", "--json")
    assert e.exit_code == 0, e.output
    assert json.loads(e.stdout)["reference"] == "base"
    refused = run_cli("export-peft", str(dora_adapter), "--out", str(tmp_path / "p"))
    assert refused.exit_code == 2 and "only LoRA adapters" in refused.stderr


def test_fuse_dequantize_gives_a_float_model(run_cli, lora_adapter, tmp_path, pulled_model):
    q = tmp_path / "q4"
    r = run_cli("quantize", str(pulled_model), "--q-bits", "4", "--q-group-size", "32",
                "--no-eval", "--mlx-path", str(q))
    assert r.exit_code == 0, r.output
    assert 'base_model: "HuggingFaceH4/zephyr-7b-beta"' in (q / "README.md").read_text()
    out = tmp_path / "deq"
    r = run_cli("fuse", "-m", str(q), "--adapter", str(lora_adapter), "--out", str(out),
                "--dequantize")
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config
    from zephyr_local.loading import load
    from zephyr_local.train.lora import load_adapter_into

    adapted = load(q).model
    load_adapter_into(adapted, lora_adapter)
    # float16 weights either way: logits of size ~2 agree to float16 round-off
    diff = mx.abs(load(out).model(IDS).astype(mx.float32) - adapted(IDS).astype(mx.float32))
    assert diff.max().item() < 0.05 and diff.mean().item() < 5e-3


def test_gguf_round_trip_through_import_gives_the_same_model(run_cli, pulled_model,
                                                               lora_adapter, tmp_path):
    """Our GGUF, read back by `import` (which undoes llama.cpp's layout on its own):
    the same logits as the fused MLX model, and a tokenizer rebuilt from the GGUF's
    vocabulary and scores that encodes text as Zephyr's does."""
    from zephyr_local.loading import load

    fused, back = tmp_path / "g", tmp_path / "back"
    r = run_cli("fuse", "-m", str(pulled_model), "--adapter", str(lora_adapter), "--out",
                str(fused), "--export-gguf")
    assert r.exit_code == 0, r.output
    r = run_cli("import", str(fused / "ggml-model-f16.gguf"), "--out", str(back))
    assert r.exit_code == 0, r.output
    ours, theirs = load(fused), load(back)
    a = ours.model(IDS).astype(mx.float32)
    b = theirs.model(IDS).astype(mx.float32)
    assert mx.abs(a - b).max().item() < 0.05  # float16 weights in the GGUF
    from zephyr_local.quality import eval_text

    text = eval_text()[:4000] + " naïve café 3.14159"  # ordinary prose: merges by score
    assert theirs.tokenizer.encode(text) == ours.tokenizer.encode(text)
