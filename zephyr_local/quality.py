"""What quantization cost: perplexity of two models and the KL divergence between them.

The models run on a fixed built-in text (`data/eval_text.txt`: prose, dialogue and
code), in chunks that fit Zephyr's 4096-token window, computed in float32. Each
model is evaluated layer by layer over all chunks and each layer's weights are
freed once used, so a 7B source never has to fit in memory whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

EVAL_TEXT = "eval_text.txt"
DEFAULT_CHUNK_TOKENS = 1024

Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class QualityReport:
    """Quality of a quantized model against its source on the built-in text."""

    source_perplexity: float
    quantized_perplexity: float
    mean_kl: float  # mean over positions of KL(source || quantized), in nats
    max_kl: float  # the worst single position
    tokens: int  # predicted tokens (chunk length - 1, summed)
    chunks: int
    text: str = EVAL_TEXT

    def as_dict(self) -> dict:
        return asdict(self)


def eval_text() -> str:
    """The built-in evaluation text shipped with the package."""
    return files("zephyr_local").joinpath("data", EVAL_TEXT).read_text(encoding="utf-8")


def eval_chunks(tokenizer, text: str | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
    """The text's token ids (BOS once, at the start) split into chunks.

    Returns:
        A list of 1-D mx.arrays of at most `chunk_tokens` ids; a last piece of
        fewer than 2 tokens (nothing to predict) is dropped.
    """
    import mlx.core as mx

    ids = list(tokenizer.encode(eval_text() if text is None else text))
    pieces = [ids[i : i + chunk_tokens] for i in range(0, len(ids), chunk_tokens)]
    return [mx.array(p) for p in pieces if len(p) >= 2]


def _cast(module, dtype) -> None:
    """Floating-point parameters to `dtype`; packed quantized weights stay uint32."""
    import mlx.core as mx
    from mlx.utils import tree_map

    module.update(tree_map(
        lambda x: x.astype(dtype) if mx.issubdtype(x.dtype, mx.floating) else x,
        module.parameters(),
    ))


def _release(module) -> None:
    """Drop a module's weights once every chunk went through it."""
    import mlx.core as mx
    from mlx.utils import tree_map

    module.update(tree_map(lambda _: mx.array([]), module.parameters()))


def streamed_logprobs(model, chunks, progress: Progress | None = None) -> Iterator:
    """Next-token log-probabilities of each chunk, computed one layer at a time.

    mlx-lm runs the whole model per input; here every chunk goes through layer i
    before layer i+1 is read, so peak memory is one layer plus the activations.
    Pass a model from `load_for_eval` (float32, nothing read yet); its weights
    are released as it goes, so load a fresh one for each call.

    Yields:
        For each chunk, an mx.array (len(chunk) - 1, vocab) of float32 log-probs
        predicting tokens 1..n-1 of the chunk.
    """
    import mlx.core as mx
    from mlx_lm.models.base import create_attention_mask

    inner = model.model
    steps = len(inner.layers) + 2
    hidden = [inner.embed_tokens(c[None, :-1]) for c in chunks]  # (1, n-1, hidden) each
    mx.eval(hidden)
    for i, layer in enumerate(inner.layers):
        if progress:
            progress(i + 1, steps, f"layer {i}")
        window = inner.sliding_window if getattr(layer, "use_sliding", False) else None
        for j, h in enumerate(hidden):
            hidden[j] = layer(h, create_attention_mask(h, None, window_size=window), cache=None)
            mx.eval(hidden[j])
        _release(layer)
    head = inner.embed_tokens.as_linear if model.args.tie_word_embeddings else model.lm_head
    if not model.args.tie_word_embeddings:
        _release(inner.embed_tokens)
    if progress:
        progress(steps, steps, "output head")
    for j in range(len(hidden)):
        logits = head(inner.norm(hidden[j]))[0].astype(mx.float32)
        hidden[j] = None
        yield logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def load_for_eval(path: Path):
    """A lazily loaded model whose every weight will be computed in float32.

    Quantized layers are dequantized (lazily, layer by layer as they run): the
    same weight values, but fp32 BLAS matmuls instead of the CPU's single-threaded
    quantized kernel, and the same precision as the source's evaluation.
    """
    import mlx.core as mx
    from mlx_lm.utils import dequantize_model, load_model

    model, _ = load_model(Path(path), lazy=True)
    _cast(model, mx.float32)  # scales and biases first, so dequantizing is exact
    return dequantize_model(model)


def source_logprobs(source: Path, chunks, progress: Progress | None = None) -> list:
    """The source model's log-probs for every chunk (evaluated; the model is freed)."""
    import mlx.core as mx

    out = []
    for lp in streamed_logprobs(load_for_eval(source), chunks, progress):
        mx.eval(lp)
        out.append(lp)
    return out


def compare(quantized: Path, chunks, src_lp: list, progress: Progress | None = None):
    """Perplexity of both models and mean KL(source || quantized) per position.

    Args:
        quantized: the quantized model directory.
        chunks: the token chunks `src_lp` was computed on.
        src_lp: `source_logprobs(source, chunks)`; left unchanged.
    """
    import mlx.core as mx

    nll_src = nll_q = kl_sum = kl_max = 0.0
    tokens = 0
    for j, q_lp in enumerate(streamed_logprobs(load_for_eval(quantized), chunks, progress)):
        p_lp, tgt = src_lp[j], chunks[j][1:, None]
        kl = (mx.exp(p_lp) * (p_lp - q_lp)).sum(axis=-1)  # (n-1,): KL at each position
        nll_src -= mx.take_along_axis(p_lp, tgt, axis=-1).sum().item()
        nll_q -= mx.take_along_axis(q_lp, tgt, axis=-1).sum().item()
        kl_sum += kl.sum().item()
        kl_max = max(kl_max, kl.max().item())
        tokens += tgt.size
    return QualityReport(
        source_perplexity=math.exp(nll_src / tokens),
        quantized_perplexity=math.exp(nll_q / tokens),
        mean_kl=kl_sum / tokens,
        max_kl=kl_max,
        tokens=tokens,
        chunks=len(chunks),
    )


def evaluate(
    source: Path,
    quantized: Path,
    tokenizer,
    text: str | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    progress: Progress | None = None,
) -> QualityReport:
    """Quality of `quantized` against `source` on the built-in text (or `text`).

    The source runs first and only its log-probs are kept (about 0.5 GB for the
    built-in text); then the quantized model runs and is compared chunk by chunk.
    """
    chunks = eval_chunks(tokenizer, text, chunk_tokens)
    if not chunks:
        raise ValueError("the evaluation text has fewer than 2 tokens")

    def stage(name):
        return (lambda d, t, what: progress(d, t, f"{name}: {what}")) if progress else None

    src_lp = source_logprobs(source, chunks, stage("source"))
    return compare(quantized, chunks, src_lp, stage("quantized"))
