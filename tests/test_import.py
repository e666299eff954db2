"""`zephyr-local import`: GGUF files (and ollama's store) into MLX models.

Oracles: an independent NumPy forward pass over the GGUF (llama.cpp's interleaved
RoPE on its permuted weights, dequantized by the `gguf` package); the original
Hugging Face test model for a float GGUF written from it; the real Zephyr tokenizer
for the sentencepiece vocabulary rebuilt from the GGUF.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from conftest import smollm2_gguf_path
from gguf_util import numpy_logits, write_gguf

from zephyr_local import template
from zephyr_local.errors import ModelFormatError, ModelNotFoundError
from zephyr_local.gguf_import import import_gguf

TEXTS = ["Hello world", "  two spaces, tabs\tand\nnewlines", "Zahlen 12345 und Ümlaute: ça va?",
         "emoji 🙂 and 日本語", "</s> literal and <|user|> markers"]


def mlx_logits(model_dir, ids):
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(model_dir))
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def assert_close(ours, ref, rel=2e-3):
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= rel * scale, np.abs(ours - ref).max() / scale
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


@pytest.fixture(scope="module")
def zephyr_float_gguf(test_model, tmp_path_factory):
    return write_gguf(test_model, tmp_path_factory.mktemp("g") / "zephyr-test.f32.gguf")


def quantized_types(name: str) -> str:
    """Every kind of tensor import handles: kept Q4_0/Q4_1/Q8_0, dequantized Q5_0."""
    if name.startswith(("token_embd", "output.")):
        return "Q8_0"
    if "attn_q" in name or "attn_k" in name:
        return "Q4_0"
    return "Q5_0" if "ffn_down" in name else "Q4_1"


@pytest.fixture(scope="module")
def zephyr_quant_gguf(test_model, tmp_path_factory):
    return write_gguf(test_model, tmp_path_factory.mktemp("g") / "zephyr-test.q.gguf",
                      quantized_types)


def test_float_gguf_equals_the_original_model(zephyr_float_gguf, test_model, tmp_path):
    out = tmp_path / "imported"
    report = import_gguf(zephyr_float_gguf, out, dtype="float32")
    assert report.model_type == "mistral" and report.bits is None
    config = json.loads((out / "config.json").read_text())
    original = json.loads((test_model / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "rope_theta", "vocab_size", "tie_word_embeddings",
                "sliding_window", "bos_token_id", "eos_token_id"):
        assert config[key] == original[key], key
    ids = [1, 523, 28766, 1838, 28766, 28767, 13, 22557, 2, 13]
    assert_close(mlx_logits(out, ids), mlx_logits(test_model, ids), rel=1e-5)


def test_sentencepiece_tokenizer_equals_zephyrs(zephyr_float_gguf, test_model, tmp_path):
    from zephyr_local.loading import load_tokenizer

    out = tmp_path / "imported"
    import_gguf(zephyr_float_gguf, out, dtype="float32")
    ours, real = load_tokenizer(out), load_tokenizer(test_model)
    for text in TEXTS:
        assert ours.encode(text) == real.encode(text), text
        assert ours.decode(ours.encode(text)) == real.decode(real.encode(text))
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert template.encode(ours, conv) == template.encode(real, conv)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"]


def test_quantized_gguf_matches_numpy_reading(zephyr_quant_gguf, tmp_path):
    out = tmp_path / "imported"
    report = import_gguf(zephyr_quant_gguf, out, dtype="float32")
    assert report.tensor_types["Q5_0"] == 4 and report.dequantized == 4
    quant = json.loads((out / "config.json").read_text())["quantization"]
    assert quant["bits"] == 4 and quant["group_size"] == 32
    assert quant["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    assert "model.layers.0.mlp.down_proj" not in quant  # dequantized to float
    ids = [1, 22557, 28725, 910, 460, 368, 28804, 2]
    assert_close(mlx_logits(out, ids), numpy_logits(zephyr_quant_gguf, ids))


def test_mlx_tensors_dequantize_to_the_gguf_values(zephyr_quant_gguf, tmp_path):
    """Kept-quantized tensors are exactly the GGUF's numbers (q/k rows unpermuted)."""
    import gguf
    import mlx.core as mx
    from gguf.quants import dequantize

    from zephyr_local.gguf_import import unpermute

    out = tmp_path / "imported"
    import_gguf(zephyr_quant_gguf, out, dtype="float32")
    ours = mx.load(str(out / "model.safetensors"))
    reader = gguf.GGUFReader(str(zephyr_quant_gguf))
    checked = 0
    for t in reader.tensors:
        if t.name not in ("blk.0.attn_q.weight", "blk.1.ffn_up.weight", "token_embd.weight"):
            continue
        ref = dequantize(t.data, t.tensor_type)
        if "attn_q" in t.name:
            ref = unpermute(ref, 4)
        base = {"blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj",
                "blk.1.ffn_up.weight": "model.layers.1.mlp.up_proj",
                "token_embd.weight": "model.embed_tokens"}[t.name]
        bits = 8 if t.tensor_type.name == "Q8_0" else 4
        deq = mx.dequantize(ours[f"{base}.weight"], ours[f"{base}.scales"],
                            ours[f"{base}.biases"], group_size=32, bits=bits)
        np.testing.assert_allclose(np.array(deq), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
        checked += 1
    assert checked == 3


def test_real_gguf_import_matches_numpy_and_loads_in_mlx_lm(smollm2_model):
    from mlx_lm import load

    _model, tok = load(str(smollm2_model))  # mlx-lm itself loads the output directory
    ids = tok.encode("The capital of France is")
    assert_close(mlx_logits(smollm2_model, ids), numpy_logits(smollm2_gguf_path(), ids))
    config = json.loads((smollm2_model / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_key_value_heads"]) == (30, 3)
    assert config["tie_word_embeddings"] is True and config["quantization"]["bits"] == 4


def test_real_tokenizer_is_byte_level_with_single_digits(smollm2_model):
    from zephyr_local.loading import load_tokenizer

    tok = load_tokenizer(smollm2_model)
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.convert_ids_to_tokens(tok.encode("x 2026"))[-4:] == ["2", "0", "2", "6"]
    assert tok.encode("<|im_end|>") == [2] and tok.eos_token_id == 2
    # The Zephyr template with this tokenizer: no BOS, each turn ends with <|im_end|> (id 2).
    ids = template.encode(tok, [{"role": "user", "content": "Hi"}])
    assert ids[0] != 1 and ids.count(2) == 1 and "</s>" not in tok.decode(ids)


def fake_ollama(root, gguf_path, name="tiny", tag="latest", layers=None):
    digest = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gguf_path, root / "blobs" / f"sha256-{digest}")
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layers = layers if layers is not None else [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64}]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return manifest


def test_import_from_a_fake_ollama_store(zephyr_float_gguf, tmp_path, monkeypatch, run_cli):
    fake_ollama(tmp_path / "ollama", zephyr_float_gguf)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    store = tmp_path / "store"
    result = run_cli("--models-dir", str(store), "import", "ollama:tiny")
    assert result.exit_code == 0, result.output
    assert (store / "tiny" / "config.json").exists()
    listed = run_cli("--models-dir", str(store), "models", "--json")
    assert json.loads(listed.stdout)[0]["source"] == "ollama:tiny"
    gen = run_cli("--models-dir", str(store), "generate", "-m", "tiny", "--temp", "0",
                  "--max-tokens", "3", "--prompt", "Hi")
    assert gen.exit_code == 0, gen.output


@pytest.mark.parametrize("ref, layers, fragment", [
    ("ollama:nothere", None, "not in the ollama store"),
    ("ollama:tiny:q8", None, "not in the ollama store"),
    ("ollama:tiny", [], "0 model layers"),
    ("ollama:../etc", None, "not an ollama model name"),
])
def test_ollama_refusals(zephyr_float_gguf, tmp_path, monkeypatch, run_cli, ref, layers, fragment):
    fake_ollama(tmp_path / "ollama", zephyr_float_gguf, layers=layers)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    result = run_cli("--models-dir", str(tmp_path / "store"), "import", ref)
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert "Traceback" not in result.output


def test_refuses_other_architectures_split_files_and_non_gguf(test_model, tmp_path):
    gpt2 = write_gguf(test_model, tmp_path / "g.gguf", arch="gpt2")
    with pytest.raises(ModelFormatError, match="architecture 'gpt2' is not supported"):
        import_gguf(gpt2, tmp_path / "out")
    split = write_gguf(test_model, tmp_path / "s.gguf", extra={"split.count": 2})
    with pytest.raises(ModelFormatError, match="split into 2 files"):
        import_gguf(split, tmp_path / "out")
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        import_gguf(tmp_path / "x.gguf", tmp_path / "out")
    with pytest.raises(ModelNotFoundError):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_import_writes_atomically_and_refuses_overwrite(zephyr_float_gguf, tmp_path, run_cli):
    store = tmp_path / "store"
    first = run_cli("--models-dir", str(store), "import", str(zephyr_float_gguf), "--name", "z")
    assert first.exit_code == 0, first.output
    again = run_cli("--models-dir", str(store), "import", str(zephyr_float_gguf), "--name", "z")
    assert again.exit_code != 0 and "--force" in again.output
    assert sorted(p.name for p in store.iterdir()) == ["z"]  # no temporary leftovers
    assert "Imported from the GGUF" in (store / "z" / "README.md").read_text()
