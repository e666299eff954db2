"""Summed completion log-probs of padded batches, in float32, and the adapters-off switch."""

from __future__ import annotations

from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
import numpy as np


def sequence_logps(model, tokens: mx.array, mask: mx.array, with_logits: bool = False):
    """Per-row sums of target log-probs where mask is 1, and the counts: ([B], [B]).

    `mask` [B, L-1] is aligned with the shifted targets (see data.collate). Only the
    scored positions go through the output projection: with Zephyr's 32,000-token
    vocabulary, float32 logits for every position (prompt and padding included) are
    the largest activation of a training step. With `with_logits`, a third [B] array:
    per row, the sum over scored positions of the vocabulary-mean logit (TRL's
    `logits/chosen` is the mean of the policy logits over completion tokens).
    """
    weights = np.array(mask, dtype=np.float32)  # data, not a parameter: read it eagerly
    rows, cols = np.nonzero(weights)
    counts = mask.sum(axis=-1)
    if len(rows) == 0:
        zeros = mx.zeros((tokens.shape[0],), mx.float32)
        return (zeros, counts, zeros) if with_logits else (zeros, counts)
    hidden = model.model(tokens[:, :-1])  # [B, L-1, H]
    r, c = mx.array(rows), mx.array(cols)
    logits = _output_head(model)(hidden[r, c]).astype(mx.float32)  # [N, V]
    logps = -nn.losses.cross_entropy(logits, tokens[:, 1:][r, c]) * mx.array(weights[rows, cols])
    owner = rows[None, :] == np.arange(tokens.shape[0])[:, None]  # [B, N]: row of each position
    owner = mx.array(owner.astype(np.float32))
    if with_logits:
        return owner @ logps, counts, owner @ mx.stop_gradient(logits.mean(axis=-1))
    return owner @ logps, counts


def _output_head(model):
    """Zephyr's untied lm_head, or the embedding as a linear layer for tied models."""
    head = getattr(model, "lm_head", None)
    return head if head is not None else model.model.embed_tokens.as_linear


def lora_layers(model) -> list:
    """The LoRA- and DoRA-wrapped linear layers of a model."""
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    return [m for _, m in model.named_modules() if isinstance(m, (LoRALinear, DoRALinear))]


@contextmanager
def adapters_off(model):
    """The base model, exactly: every LoRA contribution scaled by 0 (no weight copy).

    A DoRA layer also rescales its rows by m / ||W + scale B A||; with scale 0 and
    m = ||W|| that factor is 1, so its magnitudes are swapped for the base's norms.
    """
    layers = lora_layers(model)
    saved = [(m.scale, getattr(m, "m", None)) for m in layers]
    try:
        for m in layers:
            m.scale = 0.0
            if hasattr(m, "m"):
                m.m = mx.linalg.norm(m._dequantized_weight().astype(mx.float32), axis=1)
        yield model
    finally:
        for m, (scale, magnitude) in zip(layers, saved):
            m.scale = scale
            if magnitude is not None:
                m.m = magnitude


def batched_logps(model, seqs, batch_size: int, with_logits: bool = False,
                  progress=None) -> tuple:
    """Summed completion log-probs of many Sequences (no gradients), as numpy arrays.

    With `with_logits`, also each row's summed vocabulary-mean logit (see
    sequence_logps). `progress(done, total)` is called after each batch.
    """
    from zephyr_local.train.data import collate

    parts: list[list] = [[], [], []]
    for i in range(0, len(seqs), batch_size):
        tokens, mask = collate(seqs[i: i + batch_size])
        out = sequence_logps(model, mx.array(tokens), mx.array(mask), with_logits)
        mx.eval(*out)
        for part, array in zip(parts, out):
            part.append(np.array(array))
        if progress is not None:
            progress(min(i + batch_size, len(seqs)), len(seqs))
    arrays = tuple(np.concatenate(p) for p in parts if p)
    return arrays if with_logits else arrays[:2]
