"""Summed completion log-probs of padded batches, in float32, and the adapters-off switch."""

from __future__ import annotations

from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn


def token_logps(model, tokens: mx.array) -> mx.array:
    """log p(tokens[:, j+1] | tokens[:, :j+1]) for every j, in float32: shape [B, L-1]."""
    logits = model(tokens[:, :-1]).astype(mx.float32)  # [B, L-1, V]
    # cross_entropy is logsumexp - logit[target]: a stable log-softmax gather.
    return -nn.losses.cross_entropy(logits, tokens[:, 1:])


def sequence_logps(model, tokens: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    """Per-row sums of target log-probs where mask is 1, and the counts: ([B], [B]).

    `mask` [B, L-1] is aligned with the shifted targets (see data.collate).
    """
    return (token_logps(model, tokens) * mask).sum(axis=-1), mask.sum(axis=-1)


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
    import numpy as np

    from zephyr_local.train.data import collate

    sums, counts = [], []
    for i in range(0, len(seqs), batch_size):
        tokens, mask = collate(seqs[i: i + batch_size])
        s, n = sequence_logps(model, mx.array(tokens), mx.array(mask))
        mx.eval(s, n)
        sums.append(np.array(s))
        counts.append(np.array(n))
    return np.concatenate(sums), np.concatenate(counts)
