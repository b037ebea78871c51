"""Closed-form model of "resample until an imperfect verifier accepts, up to k samples".

A problem has per-sample correctness rate r; the verifier accepts a correct sample with
probability c (completeness) and a wrong one with probability f = 1 - s (s: soundness), each
sample independently. Each draw is accepted with probability ``p = c r + f (1 - r)``. Drawing
stops at the first accepted sample, whose answer is submitted; after k rejections the policy
abstains (no answer, utility 0). With ``G_k(p) = (1 - (1 - p)^k) / p`` (= k when p = 0):

    P(correct answer by k)  = c r G_k          -> c r / p            as k -> inf (accuracy limit)
    P(false positive by k)  = f (1 - r) G_k    -> f (1 - r) / p
    E[samples drawn]        = G_k

Each draw, whatever happens, has expected payoff ``v = reward c r - fp_cost f (1 - r) -
sample_cost``, so ``U(k) = v G_k``: for one problem U is monotone in k (optimum k = 1 or "never
stop"). For a mixture of problems (rates r_j, weights w_j) ``U(k) = sum_j w_j v_j G_k(p_j)`` and
``U(k+1) - U(k) = sum_j w_j v_j (1 - p_j)^k``: easy problems (v > 0, p large) stop paying off
quickly while hard ones (v < 0, p small) keep adding false positives, so U has a finite maximiser
K* = argmax_{1 <= k <= k_max} U(k). For two types the marginal changes sign once, at

    k_c = log(-w_h v_h / (w_e v_e)) / log((1 - p_e) / (1 - p_h)),   K* = max(1, ceil(k_c)).

References:
    Stroebl, Kapoor & Narayanan, "Inference Scaling fLaws: The Limits of LLM Resampling with
    Imperfect Verifiers", arXiv:2411.17501.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.tts._checks import check_unit_interval, concrete, first_bad

__all__ = ["OptimalK", "ResampleOutcome", "accuracy_limit", "expected_utility",
           "optimal_num_samples", "resample_outcome", "two_type_optimal_k"]


def _check_k(k: Any, fn: str) -> None:
    v = concrete(k)
    if v is None:
        return
    if v.size == 0:
        raise ValueError(f"{fn}: k is empty; expected integers >= 1")
    bad = ~(v >= 1) | (v != np.round(v))
    if np.any(bad):
        raise ValueError(f"{fn}: k (max samples) must be an integer >= 1, got {first_bad(bad, v)}")


def _check_model(fn: str, rate: Any, completeness: Any, soundness: Any) -> None:
    check_unit_interval("rate", rate, fn=fn)
    check_unit_interval("completeness", completeness, fn=fn)
    check_unit_interval("soundness", soundness, fn=fn)


def _float(x: Any) -> jax.Array:
    return jnp.asarray(x, jnp.result_type(float))


def _geometric(p: jax.Array, k: jax.Array) -> jax.Array:
    """G_k(p) = sum_{i<k} (1-p)^i = (1 - (1-p)^k) / p, accurate for small p; k at p = 0."""
    safe = jnp.where(p > 0, p, 1.0)
    return jnp.where(p > 0, -jnp.expm1(k * jnp.log1p(-safe)) / safe, k)


def accuracy_limit(rate: Any, completeness: Any, soundness: Any) -> jax.Array:
    """Accuracy of resampling-until-accepted as k -> inf: ``c r / (c r + (1 - s)(1 - r))``.

    0 where nothing is ever accepted (``c r = (1 - s)(1 - r) = 0``). Broadcasts; jnp.

    References:
        Stroebl et al., arXiv:2411.17501.
    """
    _check_model("accuracy_limit", rate, completeness, soundness)
    r, c, s = _float(rate), _float(completeness), _float(soundness)
    good, bad = c * r, (1 - s) * (1 - r)
    total = good + bad
    return jnp.where(total > 0, good / jnp.where(total > 0, total, 1.0), 0.0)


class ResampleOutcome(NamedTuple):
    """Probabilities of the outcomes of resampling up to k times, and the expected draws."""

    correct: jax.Array         # a correct answer was accepted
    false_positive: jax.Array  # a wrong answer was accepted
    abstain: jax.Array         # all k draws were rejected
    expected_samples: jax.Array


def resample_outcome(rate: Any, k: Any, completeness: Any, soundness: Any) -> ResampleOutcome:
    """Closed-form outcome of "draw until the verifier accepts, at most k draws" (broadcasts).

    References:
        Stroebl et al., arXiv:2411.17501; this module's docstring for the derivation.
    """
    fn = "resample_outcome"
    _check_model(fn, rate, completeness, soundness)
    _check_k(k, fn)
    r, c, s, kf = _float(rate), _float(completeness), _float(soundness), _float(k)
    good, bad = c * r, (1 - s) * (1 - r)
    g = _geometric(good + bad, kf)
    correct, fp = good * g, bad * g
    return ResampleOutcome(correct=correct, false_positive=fp,
                           abstain=jnp.clip(1 - correct - fp, 0.0, 1.0), expected_samples=g)


def expected_utility(rate: Any, k: Any, completeness: Any, soundness: Any, *,
                     reward: float = 1.0, fp_cost: float = 1.0,
                     sample_cost: float = 0.0) -> jax.Array:
    """Expected utility per problem of resampling up to k times (broadcasts):
    ``reward P(correct) - fp_cost P(false positive) - sample_cost E[draws]``; abstaining scores 0.
    """
    out = resample_outcome(rate, k, completeness, soundness)
    return reward * out.correct - fp_cost * out.false_positive - sample_cost * out.expected_samples


def _mixture(rates: Any, weights: Any, fn: str) -> tuple[jax.Array, jax.Array]:
    rates = jnp.atleast_1d(_float(rates))
    weights = jnp.ones(rates.shape, rates.dtype) / rates.size if weights is None else \
        jnp.atleast_1d(_float(weights))
    if rates.ndim != 1 or rates.size == 0 or weights.shape != rates.shape:
        raise ValueError(f"{fn}: rates and weights must be matching non-empty 1-D arrays, got "
                         f"shapes {rates.shape} and {weights.shape}")
    w = concrete(weights)
    if w is not None and (np.any(~(w >= 0)) or not w.sum() > 0):
        raise ValueError(f"{fn}: weights must be >= 0 with a positive sum, got {w.tolist()}")
    return rates, weights / jnp.sum(weights)


class OptimalK(NamedTuple):
    """``k_star``: the smallest maximiser of U over ``k = 1..k_max``; ``utility``: U(k), [k_max]."""

    k_star: jax.Array
    utility: jax.Array


def optimal_num_samples(rates: Any, weights: Any, completeness: Any, soundness: Any, *,
                        reward: float = 1.0, fp_cost: float = 1.0, sample_cost: float = 0.0,
                        k_max: int = 1000) -> OptimalK:
    """K* = argmax over k in [1, k_max] of the mixture utility ``U(k) = sum_j w_j U_j(k)``.

    `rates` [J] are per-problem-type correctness rates with `weights` [J] (normalised; None =
    uniform); `completeness`/`soundness` are scalars or [J]. Ties go to the smallest k. If
    ``max U < 0`` abstaining (U = 0) beats every k: check ``utility``.

    References:
        Stroebl et al., arXiv:2411.17501.
    """
    fn = "optimal_num_samples"
    if not isinstance(k_max, int) or k_max < 1:
        raise ValueError(f"{fn}: k_max must be an int >= 1, got {k_max!r}")
    rates, weights = _mixture(rates, weights, fn)
    ks = jnp.arange(1, k_max + 1)[:, None]
    u = expected_utility(rates[None, :], ks, completeness, soundness, reward=reward,
                         fp_cost=fp_cost, sample_cost=sample_cost)
    utility = jnp.sum(u * weights[None, :], axis=-1)
    return OptimalK(k_star=jnp.argmax(utility).astype(jnp.int32) + 1, utility=utility)


def two_type_optimal_k(rates: tuple[float, float], weights: tuple[float, float],
                       completeness: float, soundness: float, *, reward: float = 1.0,
                       fp_cost: float = 1.0, sample_cost: float = 0.0) -> tuple[float, float]:
    """Closed-form K* for a mixture of two problem types (host): returns (k_c, K*).

    ``K* = max(1, ceil(k_c))`` is the first k whose marginal utility ``U(k+1) - U(k)`` is <= 0
    (see the module docstring). Needs one type with positive per-draw payoff v that is accepted
    more often than the other, whose v is negative; then U is unimodal. Otherwise the marginal
    never changes sign and (k_c, K*) is ``(0.0, 1)`` when every v <= 0 and ``(inf, inf)``
    (never stop: U keeps rising) when every v >= 0. Other sign patterns raise: use
    `optimal_num_samples`.

    References:
        Stroebl et al., arXiv:2411.17501.
    """
    fn = "two_type_optimal_k"
    if len(rates) != 2 or len(weights) != 2:
        raise ValueError(f"{fn}: need exactly two rates and two weights, got {rates}, {weights}")
    _check_model(fn, np.asarray(rates), completeness, soundness)
    if min(weights) <= 0:
        raise ValueError(f"{fn}: weights must be > 0, got {weights}")
    f = 1.0 - soundness
    p = [completeness * r + f * (1 - r) for r in rates]
    v = [reward * completeness * r - fp_cost * f * (1 - r) - sample_cost for r in rates]
    if all(x <= 0 for x in v):
        return 0.0, 1
    if all(x >= 0 for x in v):
        return math.inf, math.inf
    e, h = (0, 1) if v[0] > 0 else (1, 0)
    if not p[e] > p[h]:
        raise ValueError(f"{fn}: the closed form needs the positive-payoff type to be accepted "
                         f"more often (p_e={p[e]} > p_h={p[h]}); use optimal_num_samples")
    if p[e] >= 1.0:  # the easy type always stops at draw 1: the marginal is negative from k = 1
        return 0.0, 1
    k_c = math.log(-weights[h] * v[h] / (weights[e] * v[e])) / math.log((1 - p[e]) / (1 - p[h]))
    return k_c, max(1, math.ceil(k_c))
