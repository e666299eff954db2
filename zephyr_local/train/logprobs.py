"""Summed completion log-probs of padded batches, in float32, and the adapters-off switch."""

from __future__ import annotations

from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
import numpy as np


def sequence_logps(model, tokens: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    """Per-row sums of target log-probs where mask is 1, and the counts: ([B], [B]).

    `mask` [B, L-1] is aligned with the shifted targets (see data.collate). Only the
    scored positions go through the output projection: with Zephyr's 32,000-token
    vocabulary, float32 logits for every position (prompt and padding included) are
    the largest activation of a training step.
    """
    weights = np.array(mask, dtype=np.float32)  # data, not a parameter: read it eagerly
    rows, cols = np.nonzero(weights)
    counts = mask.sum(axis=-1)
    if len(rows) == 0:
        return mx.zeros((tokens.shape[0],), mx.float32), counts
    hidden = model.model(tokens[:, :-1])  # [B, L-1, H]
    r, c = mx.array(rows), mx.array(cols)
    logits = _output_head(model)(hidden[r, c]).astype(mx.float32)  # [N, V]
    logps = -nn.losses.cross_entropy(logits, tokens[:, 1:][r, c]) * mx.array(weights[rows, cols])
    owner = rows[None, :] == np.arange(tokens.shape[0])[:, None]  # [B, N]: row of each position
    return mx.array(owner.astype(np.float32)) @ logps, counts


def _output_head(model):
    """Zephyr's untied lm_head, or the embedding as a linear layer for tied models."""
    head = getattr(model, "lm_head", None)
    return head if head is not None else model.model.embed_tokens.as_linear


def lora_layers(model) -> list:
    """The LoRA-wrapped linear layers of a model."""
    from mlx_lm.tuner.lora import LoRALinear

    return [m for _, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextmanager
def adapters_off(model):
    """The base model, exactly: every LoRA contribution scaled by 0 (no weight copy)."""
    layers = lora_layers(model)
    scales = [m.scale for m in layers]
    try:
        for m in layers:
            m.scale = 0.0
        yield model
    finally:
        for m, s in zip(layers, scales):
            m.scale = s


def batched_logps(model, seqs, batch_size: int) -> tuple:
    """Summed completion log-probs of many Sequences (no gradients), as numpy arrays."""
    from zephyr_local.train.data import collate

    sums, counts = [], []
    for i in range(0, len(seqs), batch_size):
        tokens, mask = collate(seqs[i: i + batch_size])
        s, n = sequence_logps(model, mx.array(tokens), mx.array(mask))
        mx.eval(s, n)
        sums.append(np.array(s))
        counts.append(np.array(n))
    return np.concatenate(sums), np.concatenate(counts)
