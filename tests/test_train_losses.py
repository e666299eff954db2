"""DPO losses against hand-computed values; masks keep prompt tokens out; gradients flow."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from zephyr_local.train.losses import LOSSES, dpo_loss, pair_metrics

# One pair: lr_w = -10 - (-11) = 1, lr_l = -14 - (-12) = -2, delta = 3; n_w = 4, n_l = 5.
PAIR = dict(policy_w=[-10.0], policy_l=[-14.0], ref_w=[-11.0], ref_l=[-12.0], n_w=[4.0], n_l=[5.0])
SP = math.log(1 + math.exp(-0.3))  # -log sigmoid(0.3) by hand
HAND = {
    "sigmoid": SP,  # 0.554355
    "ipo": (1 / 4 + 2 / 5 - 1 / (2 * 0.1)) ** 2,  # (0.65 - 5)^2 = 18.9225
    "hinge": 0.7,  # max(0, 1 - 0.3)
    "robust": (0.9 * SP - 0.1 * (0.3 + SP)) / 0.8,  # log_sigmoid(-0.3) = -(0.3 + SP)
}


def arrays(**kw):
    return {k: mx.array(v) for k, v in kw.items()}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_matches_hand_computed_value(name):
    a = arrays(**PAIR)
    loss, parts = dpo_loss(name, a["policy_w"], a["policy_l"], a["ref_w"], a["ref_l"],
                           a["n_w"], a["n_l"], beta=0.1, eps=0.1)
    assert loss.item() == pytest.approx(HAND[name], rel=1e-5)
    assert parts["rewards_chosen"].item() == pytest.approx(0.1)
    assert parts["rewards_rejected"].item() == pytest.approx(-0.2)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_rpo_alpha_adds_the_chosen_mean_nll_per_token(name):
    # PAIR's chosen reply: log-prob -10 over 4 tokens, so its mean NLL is 2.5 per token.
    a = arrays(**PAIR)
    args = (a["policy_w"], a["policy_l"], a["ref_w"], a["ref_l"], a["n_w"], a["n_l"])
    loss, parts = dpo_loss(name, *args, beta=0.1, eps=0.1, rpo_alpha=0.4)
    assert loss.item() == pytest.approx(HAND[name] + 0.4 * 2.5, rel=1e-5)
    assert parts["losses"].item() == pytest.approx(HAND[name] + 1.0, rel=1e-5)
    assert parts["rewards_chosen"].item() == pytest.approx(0.1)  # rewards unchanged


def test_rpo_term_is_averaged_per_pair():
    # Two pairs: chosen NLL per token 2.5 and 1.0; policy == reference (DPO part log 2).
    pw, n_w = mx.array([-10.0, -3.0]), mx.array([4.0, 3.0])
    loss, _ = dpo_loss("sigmoid", pw, pw - 1, pw, pw - 1, n_w, n_w, rpo_alpha=2.0)
    assert loss.item() == pytest.approx(math.log(2) + 2.0 * (2.5 + 1.0) / 2, rel=1e-6)


def test_sigmoid_is_log2_and_rewards_zero_when_policy_equals_reference():
    logps = mx.array([-50.0, -7.5])
    loss, parts = dpo_loss("sigmoid", logps, logps - 3, logps, logps - 3, mx.array([9.0, 2.0]),
                           mx.array([4.0, 3.0]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert np.all(np.array(parts["rewards_chosen"]) == 0)


def test_sigmoid_is_stable_for_large_margins():
    big = mx.array([-1e4]), mx.array([0.0])
    loss, _ = dpo_loss("sigmoid", big[0], big[1], big[1], big[1], mx.array([1.0]), mx.array([1.0]))
    assert loss.item() == pytest.approx(1e3)  # log(sigmoid) naively gives inf


def test_accuracy_is_per_pair_not_from_batch_means():
    # Means say chosen wins (mean 1 > 0) but only one pair of two does.
    parts = {"losses": np.zeros(2), "rewards_chosen": np.array([3.0, -1.0]),
             "rewards_rejected": np.array([0.0, 0.0])}
    m = pair_metrics(parts, np.array([-1.0, -2.0]), np.array([-3.0, -4.0]))
    assert m["rewards/accuracies"] == 0.5
    assert m["rewards/margins"] == pytest.approx(1.0)
    assert (m["logps/chosen"], m["logps/rejected"]) == (-1.5, -3.5)


@pytest.fixture(scope="module")
def lora_model(test_model):
    """The test model with rank-4 LoRA on its last 2 layers, B set to small random values."""
    from mlx.utils import tree_flatten, tree_unflatten

    from zephyr_local.loading import load
    from zephyr_local.train.config import LoRAConfig
    from zephyr_local.train.lora import apply_lora

    loaded = load(test_model)
    mx.random.seed(1)
    apply_lora(loaded.model, LoRAConfig(rank=4, layers=2, dropout=0.0))
    params = tree_flatten(loaded.model.trainable_parameters())
    loaded.model.update(tree_unflatten(
        [(k, mx.random.normal(v.shape) * 0.05) for k, v in params if k.endswith("lora_b")]))
    loaded.model.eval()
    return loaded


def _pair_batch(tok, prompt_text):
    from zephyr_local.train.config import DataConfig
    from zephyr_local.train.data import pref_batch, tokenize_pref
    from zephyr_local.train.rows import DataSummary, PrefRow

    row = PrefRow([{"role": "user", "content": prompt_text}], "Sure, happily.", "No.", "x")
    ex = tokenize_pref(tok, row, DataConfig(), DataSummary())
    tokens, mask = pref_batch([ex])
    return ex, mx.array(tokens), mx.array(mask)


class PromptNoise:
    """Wraps a model; its hidden states at prompt positions are replaced by noise."""

    def __init__(self, model, prompt_len):
        self.inner, self.prompt_len = model, prompt_len
        self.lm_head = model.lm_head

    def model(self, tokens):
        hidden = self.inner.model(tokens)
        noise = mx.random.normal(hidden.shape) * 10
        keep = mx.arange(hidden.shape[1])[None, :, None] >= self.prompt_len - 1
        return mx.where(keep, hidden, noise)


def test_sequence_logps_equal_full_vocabulary_log_softmax(lora_model):
    """Oracle: log-softmax over every position's logits, gathered at the targets, masked."""
    from zephyr_local.train.logprobs import sequence_logps

    model = lora_model.model
    _, tokens, mask = _pair_batch(lora_model.tokenizer, "What is the capital of France?")
    logits = model(tokens[:, :-1]).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    gathered = mx.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    expected = (gathered * mask).sum(axis=-1)
    got, counts = sequence_logps(model, tokens, mask)
    assert np.allclose(np.array(got), np.array(expected), rtol=1e-5, atol=1e-4)
    assert np.array_equal(np.array(counts), np.array(mask.sum(axis=-1)))


def _losses(model, tokens, mask, ref):
    from zephyr_local.train.logprobs import sequence_logps

    logps, n = sequence_logps(model, tokens, mask)
    out = {}
    for name in ("sigmoid", "ipo"):
        loss, parts = dpo_loss(name, logps[:1], logps[1:], ref[:1], ref[1:], n[:1], n[1:])
        out[name] = loss.item()
        out["rewards"] = (parts["rewards_chosen"].item(), parts["rewards_rejected"].item())
    return out


def test_prompt_tokens_do_not_change_sigmoid_ipo_or_rewards(lora_model):
    from zephyr_local.train.logprobs import adapters_off, sequence_logps

    model = lora_model.model
    ex, tokens, mask = _pair_batch(lora_model.tokenizer, "Tell me a story about a lighthouse.")
    with adapters_off(model):
        ref, _ = sequence_logps(model, tokens, mask)
    base = _losses(model, tokens, mask, ref)
    assert base["sigmoid"] != pytest.approx(math.log(2))  # the adapter does change things
    noisy = _losses(PromptNoise(model, ex.chosen.spans[0][0]), tokens, mask, ref)
    for key in ("sigmoid", "ipo"):
        assert noisy[key] == pytest.approx(base[key], rel=1e-6)
    assert noisy["rewards"] == pytest.approx(base["rewards"], rel=1e-6)


def test_gradients_reach_every_lora_matrix_and_only_them(lora_model):
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from zephyr_local.train.logprobs import adapters_off, sequence_logps
    from zephyr_local.train.objectives import dpo_forward

    model = lora_model.model
    _, tokens, mask = _pair_batch(lora_model.tokenizer, "Hi")
    with adapters_off(model):
        ref, _ = sequence_logps(model, tokens, mask)
    def fn(*a):
        return dpo_forward(model, *a, loss_name="sigmoid", beta=0.1, eps=0.0)

    _, grads = nn.value_and_grad(model, fn)(tokens, mask, ref[:1], ref[1:], mx.array(1.0))
    flat = dict(tree_flatten(grads))
    names = [k for k, _ in tree_flatten(model.trainable_parameters())]
    assert sorted(flat) == sorted(names) and len(names) == 2 * 7 * 2  # A and B, 7 targets, 2 layers
    assert all(k.endswith(("lora_a", "lora_b")) for k in names)
    assert all(float(mx.abs(g).sum().item()) > 0 for g in flat.values())


def test_reference_runs_without_dropout_and_with_adapters_off(test_model, tmp_path):
    from mlx.utils import tree_flatten, tree_unflatten

    from zephyr_local.loading import load
    from zephyr_local.train.config import LoRAConfig
    from zephyr_local.train.logprobs import batched_logps
    from zephyr_local.train.lora import apply_lora
    from zephyr_local.train.reference import reference_logps

    loaded = load(test_model)
    model = loaded.model
    base, _ = batched_logps(model, [_pair_batch_seq(loaded.tokenizer)], 1)
    apply_lora(model, LoRAConfig(rank=4, layers=2, dropout=0.5))
    params = tree_flatten(model.trainable_parameters())
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.1) for k, v in params]))
    seqs = [_pair_batch_seq(loaded.tokenizer)]
    model.train()  # as during training: dropout on
    start, _, _ = reference_logps(model, seqs, "a", tmp_path, 1, base_only=False)
    model.train()
    again, _, _ = reference_logps(model, seqs, "b", tmp_path, 1, base_only=False)
    model.eval()
    eval_mode, _ = batched_logps(model, seqs, 1)
    assert start[0] == again[0] == pytest.approx(eval_mode[0], rel=1e-6)  # no dropout noise
    off, _, _ = reference_logps(model, seqs, "c", tmp_path, 1, base_only=True)
    assert off[0] == pytest.approx(base[0], rel=1e-6) and off[0] != pytest.approx(start[0])


def _pair_batch_seq(tok):
    return _pair_batch(tok, "Hello there")[0].chosen
