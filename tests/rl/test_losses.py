"""Policy loss, KL estimators, aggregation modes and the log-prob mismatch report.

References (independent of the code): the PPO clipped surrogate (arXiv:1707.06347 eq. 7) and its
subgradient worked by hand; exact KL(p || q) of small categoricals; Schulman's k1/k3 formulas
evaluated by hand; the REINFORCE gradient of table logits, -A (onehot(token) - softmax(logits)).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale import rl
from bitscale.train.losses import token_log_probs

INF = math.inf


# --------------------------------------------------------------------------------------------
# KL estimators


def test_kl_estimators_hand_values_and_zero_when_equal():
    logp, ref = jnp.array([-1.0, -0.3]), jnp.array([-2.0, -0.3])
    # d = ref - logp = [-1, 0]: k1 = -d, k2 = d^2 / 2, k3 = e^d - d - 1
    np.testing.assert_allclose(rl.kl_estimate(logp, ref, "k1"), [1.0, 0.0])
    np.testing.assert_allclose(rl.kl_estimate(logp, ref, "k2"), [0.5, 0.0])
    np.testing.assert_allclose(rl.kl_estimate(logp, ref, "k3"), [math.exp(-1.0), 0.0], rtol=1e-6)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)) - 2.0, jnp.float32)
    for est in rl.KL_ESTIMATORS:
        assert np.all(np.asarray(rl.kl_estimate(x, x, est)) == 0.0)


def test_k3_nonnegative_and_k1_k3_unbiased_on_a_categorical():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 6)) * 2.0
    logp = a - np.log(np.exp(a).sum())
    logq = b - np.log(np.exp(b).sum())
    p = np.exp(logp)
    exact = float(np.sum(p * (logp - logq)))  # KL(p || q)
    k1 = np.asarray(rl.kl_estimate(jnp.asarray(logp), jnp.asarray(logq), "k1"), np.float64)
    k3 = np.asarray(rl.kl_estimate(jnp.asarray(logp), jnp.asarray(logq), "k3"), np.float64)
    assert np.all(k3 >= 0.0)
    np.testing.assert_allclose(np.sum(p * k1), exact, rtol=1e-5)  # E_p[k1] = KL
    np.testing.assert_allclose(np.sum(p * k3), exact, rtol=1e-5)  # E_p[k3] = KL
    big = jnp.asarray(rng.normal(size=(50,)) * 10.0, jnp.float32)
    assert np.all(np.asarray(rl.kl_estimate(big, jnp.zeros_like(big), "k3")) >= 0.0)


# --------------------------------------------------------------------------------------------
# Clipping and its gradient


def _grad_one_token(adv, ratio, cfg):
    """d loss / d logp_new for one token with logp_old = 0, so ratio = exp(logp_new)."""
    def f(lp):
        loss, _ = rl.policy_loss(lp, jnp.zeros((1, 1)), jnp.array([adv]), jnp.ones((1, 1)), cfg)
        return loss
    return float(jax.grad(f)(jnp.full((1, 1), math.log(ratio)))[0, 0])


@pytest.mark.parametrize("adv,ratio,want", [
    (1.0, 1.5, 0.0),     # A > 0, ratio > 1 + eps_high: clipped, no gradient
    (-1.0, 0.5, 0.0),    # A < 0, ratio < 1 - eps_low: clipped, no gradient
    (1.0, 1.1, -1.1),    # inside: d(-ratio A)/d logp = -ratio A
    (-1.0, 0.9, 0.9),
    (1.0, 1.25, -1.25),  # inside only thanks to clip-higher (eps_high = 0.28)
    (1.0, 0.5, -0.5),    # A > 0 below the range: PPO keeps the gradient (pessimistic bound)
    (-2.0, 1.5, 3.0),    # A < 0 above the range: likewise
])
def test_clip_zeroes_gradient_outside_trust_region(adv, ratio, want):
    cfg = rl.PolicyLossConfig(eps_low=0.2, eps_high=0.28)
    np.testing.assert_allclose(_grad_one_token(adv, ratio, cfg), want, rtol=1e-5, atol=1e-7)


def test_symmetric_clip_cuts_where_clip_higher_does_not():
    sym = rl.PolicyLossConfig(eps_low=0.2, eps_high=0.2)
    assert _grad_one_token(1.0, 1.25, sym) == 0.0
    np.testing.assert_allclose(_grad_one_token(1.0, 1.25, rl.PolicyLossConfig(eps_high=0.28)),
                               -1.25, rtol=1e-5)


def test_clip_metrics_hand_counted():
    ratio = np.array([[1.5, 0.5, 1.1, 0.7]])  # one token per (advantage, ratio) case below
    lp_new = jnp.asarray(np.log(ratio).reshape(4, 1), jnp.float32)
    adv = jnp.array([1.0, -1.0, 1.0, 1.0])
    cfg = rl.PolicyLossConfig(eps_low=0.2, eps_high=0.28)
    loss, m = rl.policy_loss(lp_new, jnp.zeros((4, 1)), adv, jnp.ones((4, 1)), cfg)
    # token 0 high-clipped (A > 0, 1.5 > 1.28), token 1 low-clipped (A < 0, 0.5 < 0.8);
    # token 3 (A > 0, 0.7) is below the range but not clipped by PPO.
    np.testing.assert_allclose([m["clip_frac_high"], m["clip_frac_low"], m["clip_frac"]],
                               [0.25, 0.25, 0.5])
    # -min(r A, clip(r) A): -1.28, +0.8 (min(-0.5, -0.8) = -0.8), -1.1, -0.7
    np.testing.assert_allclose(loss, (-1.28 + 0.8 - 1.1 - 0.7) / 4, rtol=1e-5)
    np.testing.assert_allclose(m["ratio_mean"], ratio.mean(), rtol=1e-5)
    np.testing.assert_allclose([m["ratio_min"], m["ratio_max"]], [0.5, 1.5], rtol=1e-5)
    # k3 of KL(old || new): mean(r - 1 - log r)
    np.testing.assert_allclose(m["approx_kl"], np.mean(ratio - 1 - np.log(ratio)), rtol=1e-5)
    assert m["num_tokens"] == 4 and m["num_seqs"] == 4


# --------------------------------------------------------------------------------------------
# REINFORCE equivalence with eps = inf and beta = 0


def _reinforce_setup(seed=0, b=3, t=5, v=7):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32)  # table logits, the parameters
    tokens = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    mask = np.ones((b, t), np.float32)
    mask[0, 3:] = 0.0
    mask[2, 1:] = 0.0
    adv = jnp.array([1.5, -0.5, 2.0], jnp.float32)
    return w, tokens, jnp.asarray(mask), adv


def _hand_grad_logp(w, tokens):
    """d logp[b, t] / d w[b, t, :] = onehot(token) - softmax(w[b, t])."""
    w = np.asarray(w, np.float64)
    sm = np.exp(w - w.max(-1, keepdims=True))
    sm /= sm.sum(-1, keepdims=True)
    return np.eye(w.shape[-1])[np.asarray(tokens)] - sm


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant_length"])
def test_unclipped_loss_gradient_is_reinforce(aggregation):
    w, tokens, mask, adv = _reinforce_setup()
    cfg = rl.PolicyLossConfig(eps_low=INF, eps_high=INF, beta=0.0, aggregation=aggregation)

    def loss_fn(params):
        lp = token_log_probs(params, tokens)
        return rl.policy_loss(lp, jax.lax.stop_gradient(lp), adv, mask, cfg)[0]

    got = np.asarray(jax.jit(jax.grad(loss_fn))(w))
    m = np.asarray(mask, np.float64)
    a = np.asarray(adv, np.float64)[:, None]
    if aggregation == "token_mean":
        weight = a * m / m.sum()
    elif aggregation == "sequence_mean":
        weight = a * m / m.sum(1, keepdims=True) / m.shape[0]
    else:
        weight = a * m / (m.shape[0] * m.shape[1])
    want = -weight[..., None] * _hand_grad_logp(w, tokens)  # -agg(A * grad logp)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # and equals autodiff of the plain REINFORCE surrogate -mean(A * logp) for token_mean
    if aggregation == "token_mean":
        ref = jax.grad(lambda p: -jnp.sum(adv[:, None] * token_log_probs(p, tokens) * mask)
                       / jnp.sum(mask))(w)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_unclipped_off_policy_gradient_is_importance_weighted():
    w, tokens, mask, adv = _reinforce_setup(seed=3)
    old = token_log_probs(w, tokens) + 0.3  # a stale sampler: ratio = exp(-0.3) everywhere
    cfg = rl.PolicyLossConfig(eps_low=INF, eps_high=INF)
    got = jax.jit(jax.grad(
        lambda p: rl.policy_loss(token_log_probs(p, tokens), old, adv, mask, cfg)[0]))(w)
    m = np.asarray(mask, np.float64)
    weight = np.asarray(adv, np.float64)[:, None] * m * math.exp(-0.3) / m.sum()
    np.testing.assert_allclose(got, -weight[..., None] * _hand_grad_logp(w, tokens),
                               rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Aggregation modes


def test_aggregate_hand_values():
    values = jnp.array([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [5.0, 5.0, 5.0, 5.0]])
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)  # row 2 is empty
    np.testing.assert_allclose(rl.aggregate(values, mask, "token_mean"), 10 / 4)
    np.testing.assert_allclose(rl.aggregate(values, mask, "sequence_mean"), (2 + 4) / 2)
    np.testing.assert_allclose(rl.aggregate(values, mask, "constant_length"), 10 / (2 * 4))
    np.testing.assert_allclose(rl.aggregate(values, mask, "constant_length", max_len=5), 1.0)
    for mode in rl.AGGREGATIONS:
        assert rl.aggregate(values, jnp.zeros((3, 4)), mode) == 0.0


def test_policy_loss_aggregation_modes_hand_values():
    # on-policy (ratio 1): token loss is -A. Lengths 3 and 1, A = [1, -2].
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]], jnp.float32)
    lp = jnp.full((2, 4), -1.0)
    adv = jnp.array([1.0, -2.0])
    want = {"token_mean": -(3 * 1 - 2) / 4, "sequence_mean": -(1 - 2) / 2,
            "constant_length": -(3 - 2) / (2 * 4)}
    for mode, value in want.items():
        loss, m = rl.policy_loss(lp, lp, adv, mask, rl.PolicyLossConfig(aggregation=mode))
        np.testing.assert_allclose(loss, value, rtol=1e-6)
        assert m["clip_frac"] == 0.0 and m["approx_kl"] == 0.0 and m["ratio_mean"] == 1.0
    loss, _ = rl.policy_loss(lp, lp, adv, mask,
                             rl.PolicyLossConfig(aggregation="constant_length", max_len=8))
    np.testing.assert_allclose(loss, -(3 - 2) / (2 * 8), rtol=1e-6)


def test_mc_grpo_pivot_mask_drops_the_row():
    lp = jnp.zeros((3, 4))
    adv, keep = rl.mc_grpo_advantages(jnp.array([[0.0, 1.0, 0.5]]))  # pivot: index 2
    mask = jnp.ones((3, 4)) * keep.reshape(-1)[:, None]
    for mode in rl.AGGREGATIONS:
        _, m = rl.policy_loss(lp, lp, adv.reshape(-1), mask, rl.PolicyLossConfig(aggregation=mode))
        assert m["num_seqs"] == 2 and m["num_tokens"] == 8


# --------------------------------------------------------------------------------------------
# KL penalty inside the loss


def test_kl_penalty_value_and_gradient():
    lp = jnp.zeros((2, 4))
    ref = jnp.full((2, 4), -1.0)  # ref - new = -1: k3 = e^-1, k1 = 1
    mask = jnp.ones((2, 4))
    zero_adv = jnp.zeros((2,))
    cfg = rl.PolicyLossConfig(beta=0.1, kl_estimator="k3")
    loss, m = rl.policy_loss(lp, lp, zero_adv, mask, cfg, logp_ref=ref)
    np.testing.assert_allclose(loss, 0.1 * math.exp(-1.0), rtol=1e-6)
    np.testing.assert_allclose([m["kl_loss"], m["kl_ref"]], [math.exp(-1.0)] * 2, rtol=1e-6)
    # d/d new of e^(ref - new) - (ref - new) - 1 is 1 - e^(ref - new), token_mean over 8 tokens
    g = jax.grad(lambda x: rl.policy_loss(x, jax.lax.stop_gradient(x), zero_adv, mask, cfg,
                                          logp_ref=ref)[0])(lp)
    np.testing.assert_allclose(g, np.full((2, 4), 0.1 * (1 - math.exp(-1.0)) / 8), rtol=1e-5)
    k1 = rl.PolicyLossConfig(beta=0.1, kl_estimator="k1")
    np.testing.assert_allclose(rl.policy_loss(lp, lp, zero_adv, mask, k1, logp_ref=ref)[0], 0.1,
                               rtol=1e-6)
    # agreeing policies: both estimators are exactly zero
    for est in ("k1", "k3"):
        c = rl.PolicyLossConfig(beta=0.1, kl_estimator=est)
        loss, m = rl.policy_loss(lp, lp, zero_adv, mask, c, logp_ref=lp)
        assert loss == 0.0 and m["kl_loss"] == 0.0 and m["kl_ref"] == 0.0
    # beta = 0: the reference is only logged
    loss, m = rl.policy_loss(lp, lp, zero_adv, mask, logp_ref=ref)
    assert loss == 0.0 and m["kl_ref"] > 0


def test_masked_garbage_does_not_leak_and_jit_works():
    w, tokens, mask, adv = _reinforce_setup(seed=5)
    lp = token_log_probs(w, tokens)
    junk = jnp.where(mask != 0, lp, -jnp.inf)
    nan_old = jnp.where(mask != 0, lp - 0.1, jnp.nan)
    cfg = rl.PolicyLossConfig(beta=0.05)

    def f(x):
        return rl.policy_loss(jnp.where(mask != 0, x, -jnp.inf), nan_old, adv, mask, cfg,
                              logp_ref=junk)[0]

    loss, g = jax.value_and_grad(f)(lp)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(g)[np.asarray(mask) == 0] == 0.0)
    jitted = jax.jit(rl.policy_loss, static_argnames="config")
    l1, m1 = jitted(lp, lp - 0.1, adv, mask, config=cfg, logp_ref=lp)
    l2, m2 = rl.policy_loss(lp, lp - 0.1, adv, mask, cfg, logp_ref=lp)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    assert set(m1) == set(m2)


# --------------------------------------------------------------------------------------------
# Sampler / trainer mismatch


def test_logprob_mismatch_hand_values():
    samp = jnp.array([[-1.0, -2.0, -jnp.inf]])
    train = jnp.array([[-1.5, -2.0, 7.0]])
    mask = jnp.array([[1, 1, 0]])
    m = rl.logprob_mismatch(samp, train, mask)
    np.testing.assert_allclose(m["mean_abs_diff"], 0.25)
    np.testing.assert_allclose(m["max_abs_diff"], 0.5)
    np.testing.assert_allclose(m["kl_k1"], 0.25)  # mean(samp - train)
    # d = train - samp = -0.5: k3 = e^-0.5 + 0.5 - 1, averaged with a 0
    np.testing.assert_allclose(m["kl_k3"], (math.exp(-0.5) - 0.5) / 2, rtol=1e-6)
    assert m["num_tokens"] == 2
    same = rl.logprob_mismatch(train, train, jnp.ones((1, 3)))
    assert all(float(same[k]) == 0.0 for k in ("mean_abs_diff", "max_abs_diff", "kl_k1", "kl_k3"))


# --------------------------------------------------------------------------------------------
# Errors


def test_config_errors():
    with pytest.raises(ValueError, match="aggregation must be one of .* got 'seq_mean'"):
        rl.PolicyLossConfig(aggregation="seq_mean")
    with pytest.raises(ValueError, match="eps_low must be a float >= 0, got -0.1"):
        rl.PolicyLossConfig(eps_low=-0.1)
    with pytest.raises(ValueError, match="eps_high"):
        rl.PolicyLossConfig(eps_high=float("nan"))
    with pytest.raises(ValueError, match="beta"):
        rl.PolicyLossConfig(beta=-1.0)
    with pytest.raises(ValueError, match="kl_estimator"):
        rl.PolicyLossConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="max_len"):
        rl.PolicyLossConfig(aggregation="constant_length", max_len=0)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        rl.aggregate(jnp.zeros((2, 3)), jnp.ones((2, 3)), "mean")
    with pytest.raises(ValueError, match="estimator"):
        rl.kl_estimate(jnp.zeros(3), jnp.zeros(3), "k5")


def test_shape_errors():
    lp, mask, adv = jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.zeros((2,))
    with pytest.raises(ValueError, match=r"logp_old shape \(2, 4\) must match logp_new's \(2, 3\)"):
        rl.policy_loss(lp, jnp.zeros((2, 4)), adv, mask)
    with pytest.raises(ValueError, match=r"advantages shape \(3,\) must be \(2,\)"):
        rl.policy_loss(lp, lp, jnp.zeros((3,)), mask)
    with pytest.raises(ValueError, match="advantages shape"):
        rl.policy_loss(lp, lp, jnp.zeros((2, 3)), mask)
    with pytest.raises(ValueError, match="mask shape"):
        rl.policy_loss(lp, lp, adv, jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="logp_ref shape"):
        rl.policy_loss(lp, lp, adv, mask, logp_ref=jnp.zeros((2,)))
    with pytest.raises(ValueError, match="2-D"):
        rl.policy_loss(jnp.zeros((6,)), lp, adv, mask)
    with pytest.raises(ValueError, match="needs logp_ref"):
        rl.policy_loss(lp, lp, adv, mask, rl.PolicyLossConfig(beta=0.1))
    with pytest.raises(TypeError, match="PolicyLossConfig"):
        rl.policy_loss(lp, lp, adv, mask, {"beta": 0.0})
    with pytest.raises(ValueError, match="logp_trainer shape"):
        rl.logprob_mismatch(lp, jnp.zeros((3, 3)), mask)
