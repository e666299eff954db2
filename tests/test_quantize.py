"""`zephyr-local quantize`: every bits/group-size combination, the quality report, refusals.

The source is the test model with intermediate size 384, so that every allowed
group size (32, 64, 128) divides every layer; the conftest model (352) is the
"dimension not divisible" case. Quantized outputs are built once per module.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import Cli

import zephyr_local  # noqa: F401  (OpenBLAS before mlx)
from zephyr_local import quality
from zephyr_local import quantize as q
from zephyr_local.errors import ZephyrError
from zephyr_local.safetensors_header import read_header
from zephyr_local.testmodel import create_test_model

BITS = q.ALLOWED_BITS
GROUPS = q.ALLOWED_GROUP_SIZES
EVAL_CHARS = 1500  # ~350 tokens: one chunk keeps the KL tests fast
HEADER_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
SCALE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16}


@pytest.fixture(scope="module")
def qstore(tmp_path_factory) -> Path:
    """A store with `src` (float32, intermediate 384) and, beside it, its quantizations."""
    store = tmp_path_factory.mktemp("qstore")
    create_test_model(store / "src", seed=1, intermediate_size=384)
    return store


@pytest.fixture(scope="module")
def quantized(qstore):
    """quantized(bits, group_size, head_bits=None) -> (path, report), each built once."""
    built = {}

    def get(bits: int, group_size: int, head_bits: int | None = None):
        key = (bits, group_size, head_bits)
        if key not in built:
            opts = q.QuantizeOptions(bits=bits, group_size=group_size, head_bits=head_bits,
                                     evaluate=False)
            out = qstore / q.output_name("src", opts)
            built[key] = (out, q.quantize(qstore / "src", out, opts))
        return built[key]

    return get


def _headers(path: Path) -> dict:
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(read_header(shard))
    return out


def _nbytes(entry: dict) -> int:
    return entry["data_offsets"][1] - entry["data_offsets"][0]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
def test_every_combination_loads_in_mlx_lm_and_generates(quantized, qstore, bits, group_size):
    import mlx.nn as nn
    from mlx_lm import generate, load

    path, report = quantized(bits, group_size)
    assert path.name == q.output_name("src", q.QuantizeOptions(bits, group_size))
    model, tokenizer = load(str(path))
    layers = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert len(layers) == 4 * 7 + 1  # q k v o gate up down per layer, and the head
    assert {(m.bits, m.group_size) for m in layers} == {(bits, group_size)}
    text = generate(model, tokenizer, "Hello there", max_tokens=4)
    assert len(tokenizer.encode(text, add_special_tokens=False)) >= 1
    config = json.loads((path / "config.json").read_text())
    assert config["quantization"] == {"group_size": group_size, "bits": bits, "mode": "affine"}
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        assert (path / name).read_bytes() == (qstore / "src" / name).read_bytes()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
def test_bits_per_weight_from_the_saved_tensors(quantized, qstore, bits, group_size):
    """bits + a scale and a bias per group: saved bytes of weight+scales+biases over the
    source's weight count."""
    path, report = quantized(bits, group_size)
    saved, source = _headers(path), _headers(qstore / "src")
    scale_bits = SCALE_BITS[report.dtype]
    total_bytes = total_params = 0
    for name, entry in saved.items():
        if not name.endswith(".scales"):
            continue
        layer = name[: -len(".scales")]
        assert entry["dtype"] == HEADER_DTYPE[report.dtype]
        nbytes = sum(_nbytes(saved[f"{layer}.{k}"]) for k in ("weight", "scales", "biases"))
        params = math.prod(source[f"{layer}.weight"]["shape"])
        assert 8 * nbytes / params == bits + 2 * scale_bits / group_size, layer
        total_bytes, total_params = total_bytes + nbytes, total_params + params
    assert total_params == report.quantized_parameters
    assert report.bits_per_weight == pytest.approx(8 * total_bytes / total_params, abs=1e-4)


@pytest.mark.parametrize("bits,group_size", [(2, 128), (4, 64), (8, 32)])
def test_dequantized_error_within_one_step(quantized, qstore, bits, group_size):
    """Each weight is within one step, range / (2^bits - 1), of its source value.

    Half a step would be the bound for plain rounding; MLX stores the group's
    larger-magnitude end exactly, which can leave the far end up to one step out.
    fp16 scale, bias and output each round by up to 2^-11 of max|w|: 2^-9 in all.
    """
    import mlx.core as mx

    path, _ = quantized(bits, group_size)
    src = mx.load(str(qstore / "src" / "model.safetensors"))
    saved = {}
    for shard in path.glob("*.safetensors"):
        saved.update(mx.load(str(shard)))
    for layer in ("model.layers.0.mlp.down_proj", "lm_head", "model.embed_tokens"):
        w = np.array(src[f"{layer}.weight"], dtype=np.float64)
        deq = mx.dequantize(saved[f"{layer}.weight"], saved[f"{layer}.scales"],
                            saved[f"{layer}.biases"], group_size=group_size, bits=bits)
        groups = w.reshape(w.shape[0], -1, group_size)
        err = np.abs(np.array(deq.astype(mx.float32), dtype=np.float64) - w).reshape(groups.shape)
        step = ((groups.max(-1) - groups.min(-1)) / (2**bits - 1))[..., None]
        bound = step + 2.0**-9 * np.abs(groups).max(-1, keepdims=True)
        assert (err <= bound).all(), layer
        assert (err / step).mean() < 0.5, layer  # rounding, not clipping, for most weights


@pytest.fixture(scope="module")
def eval_setup(qstore):
    """One chunk of the built-in text and the source's log-probs on it."""
    from zephyr_local.loading import load_tokenizer

    chunks = quality.eval_chunks(load_tokenizer(qstore / "src"),
                                 quality.eval_text()[:EVAL_CHARS])
    assert len(chunks) == 1
    return chunks, quality.source_logprobs(qstore / "src", chunks)


def _plain_logprobs(path: Path, chunk) -> np.ndarray:
    """mlx-lm's own forward (quantized kernels), in float32: the oracle."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(path)
    model.set_dtype(mx.float32)
    logits = model(chunk[None, :-1])[0].astype(mx.float32)
    return np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True), dtype=np.float64)


def test_layer_streamed_logprobs_match_mlx_lm_forward(quantized, qstore, eval_setup):
    chunks, src_lp = eval_setup
    np.testing.assert_allclose(np.array(src_lp[0]), _plain_logprobs(qstore / "src", chunks[0]),
                               atol=2e-4)
    path, _ = quantized(4, 64)
    (streamed,) = list(quality.streamed_logprobs(quality.load_for_eval(path), chunks))
    np.testing.assert_allclose(np.array(streamed), _plain_logprobs(path, chunks[0]), atol=2e-3)


def test_quality_numbers_match_independent_computation(quantized, qstore, eval_setup):
    """Perplexity from mlx-lm's eval_ppl, KL from numpy on the plain forward."""
    import mlx.core as mx
    from mlx_lm.perplexity import eval_ppl
    from mlx_lm.utils import load_model

    chunks, src_lp = eval_setup
    path, _ = quantized(3, 64)
    report = quality.compare(path, chunks, src_lp)
    models = {}
    for name, p in (("source", qstore / "src"), ("quantized", path)):
        models[name], _ = load_model(p)
        models[name].set_dtype(mx.float32)
    with_ppl = {k: eval_ppl(m, chunks[0][None], batch_size=1)[0] for k, m in models.items()}
    assert report.source_perplexity == pytest.approx(with_ppl["source"], rel=1e-3)
    assert report.quantized_perplexity == pytest.approx(with_ppl["quantized"], rel=1e-3)
    p, qq = _plain_logprobs(qstore / "src", chunks[0]), _plain_logprobs(path, chunks[0])
    kl = (np.exp(p) * (p - qq)).sum(-1)
    assert report.mean_kl == pytest.approx(kl.mean(), rel=1e-2)
    assert report.tokens == chunks[0].size - 1
    assert quality.compare(qstore / "src", chunks, src_lp).mean_kl == pytest.approx(0, abs=1e-5)


def test_kl_orders_by_bits_and_head_bits_help(quantized, eval_setup):
    chunks, src_lp = eval_setup
    kl = {b: quality.compare(quantized(b, 64)[0], chunks, src_lp).mean_kl for b in BITS}
    ordered = [kl[b] for b in sorted(BITS, reverse=True)]  # 8, 6, 5, 4, 3, 2
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered), kl
    assert kl[8] < kl[4] < kl[3] < kl[2]
    head8 = quality.compare(quantized(3, 64, head_bits=8)[0], chunks, src_lp).mean_kl
    assert head8 < kl[3]


def test_head_bits_config_loads_per_layer(quantized):
    from mlx_lm import load

    path, report = quantized(3, 64, head_bits=8)
    assert path.name == "src-3bit-head8"
    model, _ = load(str(path))
    assert model.lm_head.bits == 8 and model.model.embed_tokens.bits == 8
    assert model.model.layers[0].mlp.up_proj.bits == 3
    per_group = 2 * SCALE_BITS[report.dtype] / 64  # a scale and a bias per 64 weights
    assert report.bits_per_weight == 3 + per_group
    assert report.head_bits_per_weight == 8 + per_group


def test_models_listing_counts_mixed_precision_layers(quantized):
    """`models` reads per-layer bits from the config: 3-bit body, 8-bit embedding and head."""
    from zephyr_local.store import model_info

    path, _ = quantized(3, 64, head_bits=8)
    headers = _headers(path)
    logical = nbytes = 0
    for name, entry in headers.items():
        nbytes += _nbytes(entry)
        if name.endswith((".scales", ".biases")):
            continue
        count = int(np.prod(entry["shape"]))
        if entry["dtype"] == "U32":
            head = name.startswith(("model.embed_tokens", "lm_head"))
            count = count * 32 // (8 if head else 3)
        logical += count
    assert model_info(path).bits_per_weight == round(8 * nbytes / logical, 3)


def test_cli_quantize_with_report_and_model_card(qstore, monkeypatch):
    monkeypatch.setattr(quality, "eval_text", lambda: "The lighthouse keeper. " * 60)
    run = Cli(qstore)
    flags = ["--bits", "5", "--group-size", "32", "--head-bits", "6"]
    result = run("quantize", "src", *flags, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    out = qstore / "src-5bit-g32-head6"
    assert report["output"] == str(out)
    saved = json.loads((out / q.REPORT_FILE).read_text())
    per_group = 2 * SCALE_BITS[saved["dtype"]] / 32  # a scale and a bias per 32 weights
    assert saved["bits_per_weight"] == 5 + per_group == report["bits_per_weight"]
    assert saved["head_bits_per_weight"] == 6 + per_group
    assert saved["quality"]["mean_kl"] > 0 and saved["quality"]["chunks"] == 1
    assert saved["peak_rss_gb"] > 0 and saved["output_bytes"] < saved["source_bytes"]
    card = (out / "README.md").read_text()
    head_bpw = f"{6 + per_group:.3f}"
    for needle in (str(qstore / "src"), "| bits | 5 |", "| group size | 32 |", head_bpw,
                   f"zephyr-local {saved['tool_version']}", "perplexity"):
        assert needle in card
    gen = run("generate", "-m", out.name, "--temp", "0", "--max-tokens", "3", "-p", "Hi")
    assert gen.exit_code == 0, gen.output
    table = run("quantize", "src", *flags, "--no-eval", "--force")
    assert table.exit_code == 0 and head_bpw in table.stdout and "perplexity" not in table.stdout


def _model_like(store: Path) -> set[str]:
    """Everything in the store: hidden temporaries included."""
    return {p.name for p in store.iterdir()}


def test_existing_output_is_refused_then_replaced_with_force(qstore):
    out = qstore / "src-2bit-g128-head3"
    out.mkdir()
    (out / "marker").write_text("keep me")
    run = Cli(qstore)
    flags = ["--bits", "2", "--group-size", "128", "--head-bits", "3", "--no-eval"]
    result = run("quantize", "src", *flags)
    assert result.exit_code == 1
    assert f"{out} already exists: pass --force" in result.stderr
    assert (out / "marker").exists()
    result = run("quantize", "src", *flags, "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "marker").exists() and (out / "config.json").exists()


@pytest.mark.parametrize("step", ["write_weights", "copy_tokenizer_files", "_save_config"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_failure_midway_leaves_no_model_directory(qstore, monkeypatch, step, error):
    before = _model_like(qstore)

    def boom(*args, **kwargs):
        raise error("interrupted")

    monkeypatch.setattr(q, step, boom)
    with pytest.raises(error):
        q.quantize(qstore / "src", qstore / "src-failed", q.QuantizeOptions(bits=6, evaluate=False))
    assert _model_like(qstore) == before


def test_failure_with_force_keeps_the_previous_model(quantized, monkeypatch):
    path, _ = quantized(8, 128)
    config = (path / "config.json").read_bytes()

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(q, "_save_config", interrupt)
    with pytest.raises(KeyboardInterrupt):
        q.quantize(path.parent / "src", path,
                   q.QuantizeOptions(bits=8, group_size=128, force=True, evaluate=False))
    assert (path / "config.json").read_bytes() == config
    assert {p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")} == set()


def _forbid_work(monkeypatch) -> None:
    def started(*args, **kwargs):
        raise AssertionError("quantization started")

    monkeypatch.setattr(q, "_quantize_lazily", started)


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if quantization starts: bad input must be caught before."""
    _forbid_work(monkeypatch)


@pytest.mark.parametrize("args,message", [
    (["--bits", "7"], "--bits 7 is not supported: choose one of 2, 3, 4, 5, 6, 8"),
    (["--group-size", "48"], "--group-size 48 is not supported: choose one of 32, 64, 128"),
    (["--dtype", "int8"],
     "--dtype int8 is not supported: choose one of float32, float16, bfloat16"),
    (["--head-bits", "1"], "--head-bits 1 is not supported"),
])
def test_bad_options_are_refused_before_any_work(run_cli, no_work, args, message):
    result = run_cli("quantize", "zephyr-test", *args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_group_size_not_dividing_a_dimension(run_cli, no_work, model_store):
    # the conftest model: intermediate size 352 = 11 x 32
    result = run_cli("quantize", "zephyr-test", "--group-size", "64", "--no-eval")
    assert result.exit_code == 1
    assert ("--group-size 64 does not divide the input dimension 352 of "
            "model.layers.0.mlp.down_proj and 3 more layers: choose one of 32") in result.stderr
    assert not (model_store / "zephyr-test-4bit").exists()


def test_already_quantized_source_is_refused(quantized, qstore, monkeypatch):
    path, _ = quantized(4, 64)
    _forbid_work(monkeypatch)
    result = Cli(qstore)("quantize", str(path), "--out", str(qstore / "again"))
    assert result.exit_code == 2
    assert "already quantized (4-bit)" in result.stderr
    assert not (qstore / "again").exists()


def test_not_enough_disk_space_names_the_numbers(qstore, monkeypatch, no_work):
    full = SimpleNamespace(total=10**12, used=10**12 - 10**6, free=10**6)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    with pytest.raises(ZephyrError, match=r"not enough disk space for .*: need about 0\.0\d GB, "
                                          r"0\.00 GB free on "):
        q.quantize(qstore / "src", qstore / "src-4bit-full", q.QuantizeOptions(evaluate=False))


def test_missing_model_and_default_name(run_cli, no_work):
    from zephyr_local.store import DEFAULT_MODEL, DEFAULT_REPO, store_name

    assert q.output_name(store_name(DEFAULT_REPO), q.QuantizeOptions()) == DEFAULT_MODEL
    result = run_cli("quantize", "no-such-model")
    assert result.exit_code == 2 and "model 'no-such-model' not found" in result.stderr


def test_sharded_source_and_output(qstore, monkeypatch):
    """A multi-shard source (the full-size writer, shrunk) and a multi-shard output."""
    import mlx.core as mx
    import mlx_lm.utils
    from mlx_lm import load

    from zephyr_local import testmodel

    monkeypatch.setattr(testmodel, "ZEPHYR_CONFIG", testmodel.tiny_config(intermediate_size=384))
    monkeypatch.setattr(testmodel, "FULL_SIZE_SHARD_BYTES", 4 << 20)
    src = testmodel.create_full_size_test_model(qstore / "sharded", dtype="float32")
    src_shards = sorted(p.name for p in src.glob("*.safetensors"))
    assert len(src_shards) > 2
    assert src_shards[0] == f"model-00001-of-{len(src_shards):05d}.safetensors"
    index = json.loads((src / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(_headers(src))

    def ten_per_shard(weights, max_gb):
        items = list(weights.items())
        return [dict(items[i:i + 10]) for i in range(0, len(items), 10)]

    monkeypatch.setattr(mlx_lm.utils, "make_shards", ten_per_shard)
    out = qstore / "sharded-4bit"
    q.quantize(src, out, q.QuantizeOptions(evaluate=False))
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    for name, shard in index["weight_map"].items():
        assert name in read_header(out / shard)
    model, tokenizer = load(str(out))
    ids = mx.array(tokenizer.encode("Hello there"))[None]
    assert model(ids).shape == (1, ids.shape[1], 32000)


def test_bfloat16_scales_and_parameters(qstore):
    out = qstore / "src-4bit-bf16"
    report = q.quantize(qstore / "src", out, q.QuantizeOptions(dtype="bfloat16", evaluate=False))
    headers = _headers(out)
    assert headers["lm_head.scales"]["dtype"] == "BF16"
    assert headers["model.norm.weight"]["dtype"] == "BF16"
    assert report.bits_per_weight == 4.5
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_hub_id_not_in_the_store_is_pulled_first(qstore, monkeypatch):
    from zephyr_local import pull

    calls = []

    def fake_pull(repo_id, store, notify=None, **kwargs):
        calls.append((repo_id, store))
        return SimpleNamespace(path=qstore / "src")

    monkeypatch.setattr(pull, "pull", fake_pull)
    result = Cli(qstore)("quantize", "someone/fresh", "--no-eval")
    assert result.exit_code == 0, result.output
    assert calls == [("someone/fresh", qstore)]
    assert (qstore / "fresh-4bit" / "config.json").exists()
