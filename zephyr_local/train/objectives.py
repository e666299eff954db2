"""What a training step optimizes (DPO or SFT), and the metrics of a whole dataset.

The forward functions run inside `nn.value_and_grad`, so gradients flow to the
LoRA matrices; they are not `mx.compile`d (that would capture LoRA arrays as
constants).
"""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx
import numpy as np

from zephyr_local.train.data import collate, pref_batch
from zephyr_local.train.logprobs import batched_logps, sequence_logps
from zephyr_local.train.losses import dpo_loss, pair_metrics


def dpo_forward(model, tokens, mask, ref_w, ref_l, weight, loss_name, beta, eps, rpo_alpha=0.0):
    """One forward pass over chosen+rejected rows [2B, L].

    Returns (weighted loss, outputs): `nn.value_and_grad` differentiates the first element
    and passes the dict of per-pair arrays through (`logps_chosen`, `logps_rejected`,
    `losses`, `rewards_chosen`, `rewards_rejected`, [B] each; `logit_sums`, `counts`, [2B]:
    chosen rows, then rejected).
    """
    logps, counts, logit_sums = sequence_logps(model, tokens, mask, with_logits=True)
    b = ref_w.shape[0]
    pw, pl = logps[:b], logps[b:]
    loss, parts = dpo_loss(loss_name, pw, pl, ref_w, ref_l, counts[:b], counts[b:], beta, eps,
                           rpo_alpha)
    return loss * weight, {"logps_chosen": pw, "logps_rejected": pl, "losses": parts["losses"],
                           "rewards_chosen": parts["rewards_chosen"],
                           "rewards_rejected": parts["rewards_rejected"],
                           "logit_sums": logit_sums, "counts": counts}


# The per-pair outputs of dpo_forward, in the column order of DPOObjective.rows.
_PAIR_COLUMNS = ("logps_chosen", "logps_rejected", "losses", "rewards_chosen",
                 "rewards_rejected")


def sft_forward(model, tokens, mask, weight):
    """Mean cross-entropy per assistant token, times weight (the rows' share of the step's
    tokens), so the step's loss is the mean over all its tokens; also the per-row sums."""
    logps, counts = sequence_logps(model, tokens, mask)
    nll = -logps
    return nll.sum() / mx.maximum(counts.sum(), 1) * weight, nll


class DPOObjective:
    """Micro-batches of pairs with their cached reference log-probs."""

    kind = "dpo"

    def __init__(self, examples, ref: np.ndarray, loss: str, beta: float, eps: float,
                 rpo_alpha: float = 0.0):
        self.examples, self.ref = examples, ref  # ref: [2, N] chosen, rejected
        self.forward = partial(dpo_forward, loss_name=loss, beta=beta, eps=eps,
                               rpo_alpha=rpo_alpha)

    def size(self, idx) -> int:
        return len(idx)

    def n_tokens(self, idx) -> int:
        """Real (unpadded) tokens a micro-batch feeds the model."""
        return sum(len(self.examples[i].chosen.ids) + len(self.examples[i].rejected.ids)
                   for i in idx)

    def inputs(self, idx, weight: float) -> tuple:
        tokens, mask = pref_batch([self.examples[i] for i in idx])
        return (mx.array(tokens), mx.array(mask), mx.array(self.ref[0, idx]),
                mx.array(self.ref[1, idx]), mx.array(weight, mx.float32))

    @staticmethod
    def rows(outputs: list) -> np.ndarray:
        """[pairs, 9] of this process's micro-batches: logp w, l, loss, rewards w, l, and the
        summed logits and token counts of chosen, then rejected."""
        if not outputs:
            return np.zeros((0, 9), np.float32)
        parts = [o[1] for o in outputs]
        cols = [np.concatenate([np.array(p[k]) for p in parts]) for k in _PAIR_COLUMNS]
        for k in ("logit_sums", "counts"):  # [2b] rows per micro-batch: chosen, then rejected
            halves = [np.array(p[k]) for p in parts]
            cols += [np.concatenate([h[: len(h) // 2] for h in halves]),
                     np.concatenate([h[len(h) // 2:] for h in halves])]
        return np.stack([c.astype(np.float32) for c in cols], axis=1)

    @staticmethod
    def metrics(rows: np.ndarray, total: int) -> dict:
        """Per-pair rows of the whole step (every rank's) -> TRL's metrics for the step."""
        pw, pl, losses, rc, rr, sw, sl, nw, nl = rows.T
        metrics = pair_metrics({"losses": losses, "rewards_chosen": rc, "rewards_rejected": rr},
                               pw, pl)
        return {**metrics, **logit_metrics(sw, sl, nw, nl)}


class SFTObjective:
    """Micro-batches of conversations, loss on assistant tokens."""

    kind = "sft"

    def __init__(self, examples):
        self.examples = examples

    def size(self, idx) -> int:
        return sum(self.examples[i].n_scored for i in idx)

    def n_tokens(self, idx) -> int:
        return sum(len(self.examples[i].ids) for i in idx)

    def inputs(self, idx, weight: float) -> tuple:
        tokens, mask = collate([self.examples[i] for i in idx])
        return mx.array(tokens), mx.array(mask), mx.array(weight, mx.float32)

    forward = staticmethod(sft_forward)

    @staticmethod
    def rows(outputs: list) -> np.ndarray:
        """[rows, 1]: summed cross-entropy of each of this process's rows."""
        nll = [np.array(o[1]) for o in outputs] or [np.zeros(0, np.float32)]
        return np.concatenate(nll)[:, None]

    @staticmethod
    def metrics(rows: np.ndarray, total: int) -> dict:
        """Mean cross-entropy per assistant token over the whole step (every rank's rows)."""
        return {"loss": float(rows.astype(np.float64).sum()) / max(total, 1)}


def dpo_eval(model, examples, ref: np.ndarray, loss: str, beta: float, eps: float,
             batch_size: int, progress=None, score=batched_logps, rpo_alpha: float = 0.0) -> dict:
    """DPO metrics of the policy on a preference set (per pair), plus the pair count.

    `score` is batched_logps, or its distributed form that splits the rows across ranks.
    """
    model.eval()
    seqs = [e.chosen for e in examples] + [e.rejected for e in examples]
    logps, counts, logit_sums = score(model, seqs, batch_size, with_logits=True,
                                      progress=progress)
    n = len(examples)
    arr = [mx.array(a) for a in (logps[:n], logps[n:], ref[0], ref[1], counts[:n], counts[n:])]
    _, parts = dpo_loss(loss, *arr, beta, eps, rpo_alpha)
    return {"pairs": n, **pair_metrics(parts, arr[0], arr[1]),
            **logit_metrics(logit_sums[:n], logit_sums[n:], counts[:n], counts[n:])}


def logit_metrics(sums_w, sums_l, n_w, n_l) -> dict:
    """TRL's logits/chosen and logits/rejected: the policy's logits averaged over every
    completion token (and the vocabulary) of the chosen, resp. rejected, replies."""
    return {"logits/chosen": float(np.sum(sums_w) / max(float(np.sum(n_w)), 1.0)),
            "logits/rejected": float(np.sum(sums_l) / max(float(np.sum(n_l)), 1.0))}


def sft_eval(model, examples, batch_size: int, progress=None, score=batched_logps) -> dict:
    """Token-level cross-entropy and perplexity over assistant tokens (`score`: see dpo_eval)."""
    model.eval()
    logps, counts = score(model, examples, batch_size, progress=progress)
    loss = float(-logps.sum() / max(counts.sum(), 1))
    return {"rows": len(examples), "tokens": int(counts.sum()), "loss": loss,
            "perplexity": math.exp(min(loss, 700))}
