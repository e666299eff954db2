"""DPO losses (as TRL's DPOTrainer defines them): one small pure function per variant,
chosen by name.

Every loss takes per-pair log-ratios `lr_w = logp_policy(y_w|x) - logp_ref(y_w|x)`
and `lr_l` (summed over completion tokens), the completion token counts, beta and
the label smoothing, and returns the per-pair loss.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def sigmoid_loss(lr_w, lr_l, n_w, n_l, beta, eps):
    """DPO: -log sigmoid(beta * delta); log 2 when policy == reference."""
    return -nn.log_sigmoid(beta * (lr_w - lr_l))


def ipo_loss(lr_w, lr_l, n_w, n_l, beta, eps):
    """IPO: (delta_bar - 1/(2 beta))^2 with per-token averaged log-ratios."""
    delta_bar = lr_w / n_w - lr_l / n_l
    return (delta_bar - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(lr_w, lr_l, n_w, n_l, beta, eps):
    """SLiC hinge: max(0, 1 - beta * delta)."""
    return mx.maximum(0.0, 1.0 - beta * (lr_w - lr_l))


def robust_loss(lr_w, lr_l, n_w, n_l, beta, eps):
    """Robust DPO for label noise eps in [0, 0.5)."""
    z = beta * (lr_w - lr_l)
    return (-(1.0 - eps) * nn.log_sigmoid(z) + eps * nn.log_sigmoid(-z)) / (1.0 - 2.0 * eps)


LOSSES = {"sigmoid": sigmoid_loss, "ipo": ipo_loss, "hinge": hinge_loss, "robust": robust_loss}


def dpo_loss(name, policy_w, policy_l, ref_w, ref_l, n_w, n_l, beta=0.1, eps=0.0,
             rpo_alpha=0.0):
    """The mean loss over pairs and the per-pair arrays the metrics need.

    With `rpo_alpha` > 0 each pair's loss gains alpha times the chosen reply's mean
    negative log-likelihood per token (RPO; TRL's `rpo_alpha`, which averages over all
    chosen tokens of the batch instead of per reply). It keeps the chosen reply, its
    EOS included, likely while the pair's margin grows.

    Args:
        name: a key of LOSSES.
        policy_w, policy_l: summed completion log-probs under the policy, shape [B].
        ref_w, ref_l: the same under the reference, shape [B].
        n_w, n_l: completion token counts, shape [B].
        beta: the DPO temperature.
        eps: label smoothing (robust loss only).
        rpo_alpha: weight of the chosen replies' NLL term; 0 is plain DPO.

    Returns:
        (loss, parts): loss is a scalar; parts holds per-pair arrays `losses`,
        `rewards_chosen` (beta * lr_w) and `rewards_rejected` (beta * lr_l).
    """
    lr_w, lr_l = policy_w - ref_w, policy_l - ref_l
    losses = LOSSES[name](lr_w, lr_l, n_w, n_l, beta, eps)
    if rpo_alpha:
        losses = losses + rpo_alpha * (-policy_w / mx.maximum(n_w, 1))
    parts = {"losses": losses, "rewards_chosen": beta * lr_w, "rewards_rejected": beta * lr_l}
    return losses.mean(), parts


def pair_metrics(parts: dict, policy_w, policy_l) -> dict:
    """TRL's metric names from per-pair arrays (mlx or numpy); accuracy is per pair."""
    import numpy as np

    rc, rr = np.asarray(parts["rewards_chosen"]), np.asarray(parts["rewards_rejected"])
    return {
        "loss": float(np.asarray(parts["losses"]).mean()),
        "rewards/chosen": float(rc.mean()),
        "rewards/rejected": float(rr.mean()),
        "rewards/margins": float((rc - rr).mean()),
        "rewards/accuracies": float((rc > rr).mean()),
        "logps/chosen": float(np.asarray(policy_w).mean()),
        "logps/rejected": float(np.asarray(policy_l).mean()),
    }
