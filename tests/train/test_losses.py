"""Losses: token CE vs a float64 numpy reference, DCO accuracy and gradient, Masked Thought.

References (independent of the library): numpy float64 log-softmax; the DCO loss
-log(1 - (1 - p)^N) and its gradient factor N p (1-p)^(N-1) / (1 - (1-p)^N) from Chen et al.,
arXiv:2502.07154, evaluated in float64 and checked by central finite differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale.train import losses as L

# --------------------------------------------------------------------------------------------
# Token cross-entropy


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _case(dtype, b=3, t=7, v=11, seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(b, t, v)) * 4.0, dtype)
    targets = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    mask = rng.random((b, t)) < 0.6
    mask[1] = False  # a sequence with no masked tokens
    return logits, targets, jnp.asarray(mask)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_cross_entropy_matches_float64_reference(dtype):
    logits, targets, mask = _case(dtype)
    mean, per_seq = jax.jit(L.token_cross_entropy)(logits, targets, mask)
    lp = _np_log_softmax(np.asarray(logits.astype(jnp.float32)))
    tok = np.take_along_axis(lp, np.asarray(targets)[..., None], -1)[..., 0]
    m = np.asarray(mask, np.float64)
    ref_seq = -(tok * m).sum(-1)
    assert mean.dtype == jnp.float32 and per_seq.dtype == jnp.float32
    np.testing.assert_allclose(per_seq, ref_seq, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, ref_seq.sum() / m.sum(), rtol=1e-5)
    assert per_seq[1] == 0.0
    seq_lp = L.sequence_log_prob(logits, targets, mask)
    np.testing.assert_allclose(seq_lp, -ref_seq, rtol=1e-5, atol=1e-5)


def test_token_cross_entropy_float_weights_and_large_logits():
    logits, targets, mask = _case(jnp.float32, seed=1)
    logits = logits * 1e4  # overflows a naive softmax
    w = jnp.where(mask, 0.5, 0.0)
    mean, per_seq = L.token_cross_entropy(logits, targets, w)
    lp = _np_log_softmax(np.asarray(logits))
    tok = np.take_along_axis(lp, np.asarray(targets)[..., None], -1)[..., 0]
    ref_seq = -(tok * np.asarray(w, np.float64)).sum(-1)
    np.testing.assert_allclose(per_seq, ref_seq, rtol=1e-5)
    np.testing.assert_allclose(mean, ref_seq.sum() / float(np.sum(w)), rtol=1e-5)


def test_token_cross_entropy_zero_mask_is_safe():
    logits, targets, _ = _case(jnp.float32)
    logits = logits.at[0, 0, :].set(-jnp.inf).at[0, 0, 0].set(0.0)  # -inf at masked positions
    mask = jnp.zeros(targets.shape, bool)
    mean, per_seq = L.token_cross_entropy(logits, targets, mask)
    assert mean == 0.0 and bool(jnp.all(per_seq == 0.0))
    g = jax.grad(lambda x: L.token_cross_entropy(x, targets, mask)[0])(logits)
    assert bool(jnp.all(g == 0.0))


def test_token_cross_entropy_shape_errors():
    logits, targets, mask = _case(jnp.float32)
    with pytest.raises(ValueError):
        L.token_cross_entropy(logits[:, :-1], targets, mask)
    with pytest.raises(ValueError):
        L.sequence_log_prob(logits, targets, mask[:, :-1])


# --------------------------------------------------------------------------------------------
# DCO


def _log1mexp64(y: np.ndarray) -> np.ndarray:
    """log(1 - exp(y)), y <= 0, float64 (Maechler's two branches)."""
    with np.errstate(divide="ignore"):
        return np.where(y > -np.log(2.0), np.log(-np.expm1(y)), np.log1p(-np.exp(y)))


def _log_fail_ref(l: np.ndarray) -> np.ndarray:
    """log(1 - p) in float64: log1p(-p) for small p, log(-expm1(l)) for p near 1."""
    l = np.asarray(l, np.float64)
    with np.errstate(divide="ignore"):
        return np.where(l < -np.log(2.0), np.log1p(-np.exp(l)), np.log(-np.expm1(l)))


def _dco_ref(l: np.ndarray, n: int) -> np.ndarray:
    """-log(1 - (1 - p)^N) = -log1mexp(N log(1 - p)), float64."""
    return -_log1mexp64(n * _log_fail_ref(l))


def _dco_weight_ref(l: np.ndarray, n: int) -> np.ndarray:
    """N p (1 - p)^(N-1) / (1 - (1 - p)^N) in float64, computed in logs (no over/underflow)."""
    l = np.asarray(l, np.float64)
    a = _log_fail_ref(l)
    with np.errstate(invalid="ignore"):
        tail = np.where(n == 1, 0.0, (n - 1) * a)
        return np.exp(np.log(n) + l + tail - _log1mexp64(n * a))


GRID = np.concatenate([-np.logspace(-8, np.log10(200.0), 60), [0.0]]).astype(np.float32)
SPECIAL = np.array([-200.0, -50.0, -1e-8, 0.0], np.float32)


def test_dco_equals_cross_entropy_at_n1():
    l = jnp.asarray(GRID)
    np.testing.assert_allclose(L.dco_loss(l, 1), -l, rtol=0, atol=1e-6)
    g = jax.vmap(jax.grad(lambda x: L.dco_loss(x, 1)))(l)
    np.testing.assert_allclose(g, -1.0, atol=1e-6)
    # The general log-space path also reduces to CE at N = 1.
    np.testing.assert_allclose(L._dco(l[:-1], 1), -l[:-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [2, 4, 16, 256])
def test_dco_matches_float64_reference(n):
    got = np.asarray(jax.jit(L.dco_loss, static_argnums=1)(jnp.asarray(GRID), n), np.float64)
    ref = _dco_ref(GRID, n)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-30)
    # p -> 0: DCO -> CE - log N.
    np.testing.assert_allclose(L.dco_loss(jnp.float32(-200.0), n), 200.0 - np.log(n), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_dco_finite_values_and_gradients_at_extremes(n):
    l = jnp.asarray(SPECIAL)
    val = L.dco_loss(l, n)
    grad = jax.vmap(jax.grad(lambda x: L.dco_loss(x, n)))(l)
    assert bool(jnp.all(jnp.isfinite(val))) and bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(grad, -_dco_weight_ref(SPECIAL, n), rtol=1e-5, atol=1e-7)
    assert val[-1] == 0.0 if n > 1 else True
    # A batch mean is differentiable too (the usual training call).
    g = jax.grad(lambda x: jnp.mean(L.dco_loss(x, n)))(l)
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("n", [2, 4, 16])
def test_dco_gradient_is_ce_gradient_times_factor(n):
    l = GRID[GRID < -1e-6]
    ce_grad = jax.vmap(jax.grad(lambda x: L.dco_loss(x, 1)))(jnp.asarray(l))
    dco_grad = jax.vmap(jax.grad(lambda x: L.dco_loss(x, n)))(jnp.asarray(l))
    w_ref = _dco_weight_ref(l, n)
    # Analytic factor, float64.
    np.testing.assert_allclose(dco_grad, np.asarray(ce_grad) * w_ref, rtol=2e-5, atol=1e-30)
    np.testing.assert_allclose(L.dco_weight(jnp.asarray(l), n), w_ref, rtol=2e-5, atol=1e-30)
    # Finite differences of the float64 reference loss (central, relative step).
    l64 = l.astype(np.float64)
    h = 1e-6 * np.maximum(np.abs(l64), 1e-3)
    h = np.minimum(h, np.abs(l64) / 2)
    fd = (_dco_ref(l64 + h, n) - _dco_ref(l64 - h, n)) / (2 * h)
    np.testing.assert_allclose(-w_ref, fd, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(dco_grad, fd, rtol=1e-4, atol=1e-12)


def test_log1mexp_branches():
    x = np.array([-1e-10, -1e-3, -0.69, -0.7, -5.0, -80.0], np.float32)
    ref = _log1mexp64(x.astype(np.float64))
    np.testing.assert_allclose(L.log1mexp(jnp.asarray(x)), ref, rtol=1e-6)
    assert L.log1mexp(jnp.float32(0.0)) == -jnp.inf
    assert L.log1mexp(jnp.float32(-jnp.inf)) == 0.0


def test_dco_rejects_bad_n():
    for n in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            L.dco_loss(jnp.zeros(2), n)


# --------------------------------------------------------------------------------------------
# Masked Thought


def _mt_case(b=64, t=512, seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(5, 1000, size=(b, t)), jnp.int32)
    reasoning = np.zeros((b, t), bool)
    reasoning[:, t // 8: t // 2] = True  # question prefix and answer suffix stay untouched
    return tokens, jnp.asarray(reasoning)


def test_masked_thought_touches_only_reasoning_tokens_at_rate():
    tokens, reasoning = _mt_case()
    rate = 0.3
    masked, replaced = jax.jit(L.masked_thought, static_argnames="mask_id")(
        tokens, reasoning, jax.random.key(0), rate, mask_id=0)
    assert masked.dtype == tokens.dtype and masked.shape == tokens.shape
    changed = np.asarray(masked != tokens)
    np.testing.assert_array_equal(changed, np.asarray(replaced))
    assert not np.any(changed & ~np.asarray(reasoning))
    assert np.all(np.asarray(masked)[changed] == 0)
    n = int(np.sum(reasoning))
    frac = changed.sum() / n
    assert abs(frac - rate) < 5 * np.sqrt(rate * (1 - rate) / n)


def test_masked_thought_is_deterministic_per_key():
    tokens, reasoning = _mt_case(b=4, t=128)
    a = L.masked_thought(tokens, reasoning, jax.random.key(7), 0.5, mask_id=1)[0]
    b = L.masked_thought(tokens, reasoning, jax.random.key(7), 0.5, mask_id=1)[0]
    c = L.masked_thought(tokens, reasoning, jax.random.key(8), 0.5, mask_id=1)[0]
    np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(a) != np.asarray(c))
    none = L.masked_thought(tokens, reasoning, jax.random.key(7), 0.0, mask_id=1)[0]
    np.testing.assert_array_equal(none, tokens)


def test_ramped_rate():
    r = [float(L.ramped_rate(s, 1000, 0.4, 0.25)) for s in (0, 125, 250, 900)]
    np.testing.assert_allclose(r, [0.0, 0.2, 0.4, 0.4], rtol=1e-6)
    assert float(L.ramped_rate(0, 1000, 0.4)) == pytest.approx(0.4)
    # Traced step: the rate feeds masked_thought under jit.
    tokens, reasoning = _mt_case(b=2, t=64)

    @jax.jit
    def f(step, key):
        return L.masked_thought(tokens, reasoning, key, L.ramped_rate(step, 100, 0.5, 0.5),
                                mask_id=0)[1].sum()

    assert int(f(0, jax.random.key(0))) == 0
    assert int(f(100, jax.random.key(0))) > 0
