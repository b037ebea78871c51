"""Imperfect-verifier model: closed forms vs hand values, vs a Monte-Carlo simulation built from
`ImperfectVerifier.accept` and `select_first_accepted` (explicit keys), and K* (formula, grid
search and simulation agree)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale.tts import (
    ImperfectVerifier,
    accuracy_limit,
    expected_utility,
    optimal_num_samples,
    resample_outcome,
    select_first_accepted,
    two_type_optimal_k,
)


def _simulate(key, rates, k_max, verifier):
    """Per row: first accepted draw among k_max (index, or k_max if none) and its correctness."""
    k1, k2 = jax.random.split(key)
    correct = jax.random.uniform(k1, (rates.shape[0], k_max)) < rates[:, None]
    sel = select_first_accepted(verifier.accept(correct, k2), correct)
    first = np.where(np.asarray(sel.index) >= 0, np.asarray(sel.index), k_max)
    return first, np.asarray(sel.correct)


def _outcomes_at(first, sel_correct, k):
    """(correct, false positive, draws) per row when stopping after at most k draws."""
    answered = first < k
    return answered & sel_correct, answered & ~sel_correct, np.minimum(first + 1, k)


def test_closed_forms_by_hand():
    assert float(accuracy_limit(0.3, 0.9, 0.8)) == pytest.approx(0.27 / (0.27 + 0.14), rel=1e-6)
    assert float(accuracy_limit(0.0, 1.0, 1.0)) == 0.0  # nothing is ever accepted
    assert float(accuracy_limit(1.0, 0.0, 0.5)) == 0.0
    assert float(accuracy_limit(0.01, 1.0, 1.0)) == 1.0  # perfect verifier: no ceiling
    out = resample_outcome(0.3, 1, 0.9, 0.8)
    assert float(out.correct) == pytest.approx(0.27) and float(out.false_positive) == \
        pytest.approx(0.14)
    assert float(out.expected_samples) == pytest.approx(1.0, rel=1e-6)
    far = resample_outcome(0.3, 100_000, 0.9, 0.8)
    assert float(far.correct) == pytest.approx(float(accuracy_limit(0.3, 0.9, 0.8)), rel=1e-5)
    never = resample_outcome(0.0, 7, 0.9, 1.0)
    assert float(never.expected_samples) == 7.0 and float(never.abstain) == 1.0
    r = jnp.linspace(0, 1, 11)[:, None]
    k = jnp.array([1, 3, 10, 100])[None, :]
    grid = resample_outcome(r, k, 0.8, 0.7)
    assert grid.correct.shape == (11, 4)
    np.testing.assert_allclose(grid.correct + grid.false_positive + grid.abstain, 1.0, atol=1e-6)
    assert np.all(np.diff(np.asarray(grid.correct), axis=1) >= 0)
    u = expected_utility(0.3, 4, 0.9, 0.8, reward=2.0, fp_cost=3.0, sample_cost=0.1)
    o = resample_outcome(0.3, 4, 0.9, 0.8)
    assert float(u) == pytest.approx(float(2 * o.correct - 3 * o.false_positive
                                           - 0.1 * o.expected_samples), rel=1e-6)


def test_monte_carlo_matches_finite_k_and_limit():
    rates = np.repeat([0.05, 0.3, 0.7], 20_000).astype(np.float32)
    verifier = ImperfectVerifier(completeness=0.85, soundness=0.9)
    first, ok = _simulate(jax.random.key(0), jnp.asarray(rates), 40, verifier)
    for k in (1, 2, 5, 40):
        good, fp, draws = _outcomes_at(first, ok, k)
        for r in (0.05, 0.3, 0.7):
            rows = rates == np.float32(r)
            want = resample_outcome(r, k, 0.85, 0.9)
            for sim, exp in ((good[rows].mean(), want.correct),
                             (fp[rows].mean(), want.false_positive)):
                se = math.sqrt(float(exp) * (1 - float(exp)) / rows.sum()) + 1e-4
                assert abs(sim - float(exp)) < 5 * se, (k, r, sim, float(exp))
            assert draws[rows].mean() == pytest.approx(float(want.expected_samples), rel=0.03)
    # the accuracy ceiling: share of correct answers among answered ones, k large
    good, fp, _ = _outcomes_at(first, ok, 40)
    for r in (0.3, 0.7):
        rows = rates == np.float32(r)
        sim = good[rows].sum() / (good[rows].sum() + fp[rows].sum())
        assert sim == pytest.approx(float(accuracy_limit(r, 0.85, 0.9)), abs=0.01)


def test_optimal_k_formula_grid_and_simulation_agree():
    rates, weights, c, s = (0.7, 0.01), (0.7, 0.3), 1.0, 0.9
    k_c, k_star = two_type_optimal_k(rates, weights, c, s, fp_cost=1.0)
    assert k_star == 3 and 2 < k_c < 3
    grid = optimal_num_samples(rates, weights, c, s, fp_cost=1.0, k_max=30)
    assert int(grid.k_star) == k_star
    # simulation: stratified mixture, common random numbers across k
    n_rows = 60_000
    row_rates = np.repeat(rates, [int(w * n_rows) for w in weights]).astype(np.float32)
    first, ok = _simulate(jax.random.key(1), jnp.asarray(row_rates), 12,
                          ImperfectVerifier(c, s))
    sim_u = []
    for k in range(1, 13):
        good, fp, _ = _outcomes_at(first, ok, k)
        sim_u.append(good.mean() - fp.mean())
    assert int(np.argmax(sim_u)) + 1 == k_star
    np.testing.assert_allclose(sim_u, grid.utility[:12], atol=0.01)


def test_optimal_k_grid_matches_closed_form_and_float64():
    rng = np.random.default_rng(0)
    checked = 0
    while checked < 25:
        r_e, r_h = rng.uniform(0.3, 0.95), rng.uniform(0.0, 0.1)
        w_e = rng.uniform(0.2, 0.8)
        c, s = rng.uniform(0.7, 1.0), rng.uniform(0.8, 0.99)
        fp_cost, sample_cost = rng.uniform(0.5, 4.0), rng.uniform(0.0, 0.02)
        kw = dict(fp_cost=fp_cost, sample_cost=sample_cost)
        try:
            k_c, k_star = two_type_optimal_k((r_e, r_h), (w_e, 1 - w_e), c, s, **kw)
        except ValueError:
            continue
        if not 1 <= k_c <= 150 or abs(k_c - round(k_c)) < 1e-3:
            continue  # K* beyond the grid, or two k nearly tied in float32
        grid = optimal_num_samples([r_e, r_h], [w_e, 1 - w_e], c, s, k_max=200, **kw)
        assert int(grid.k_star) == k_star, (r_e, r_h, w_e, c, s, kw, k_c)
        checked += 1
    # a three-type mixture (no closed form) against a float64 evaluation of the same U(k)
    rates, w, c, s = np.array([0.9, 0.4, 0.02]), np.array([0.3, 0.3, 0.4]), 0.9, 0.92
    ks = np.arange(1, 101)[:, None]
    p = c * rates + (1 - s) * (1 - rates)
    g = (1 - (1 - p) ** ks) / p
    u64 = (g * (c * rates - 2.0 * (1 - s) * (1 - rates)) * w).sum(1)
    got = optimal_num_samples(rates, w, c, s, fp_cost=2.0, k_max=100)
    np.testing.assert_allclose(got.utility, u64, atol=1e-6)
    assert int(got.k_star) == int(np.argmax(u64)) + 1


def test_degenerate_two_type_cases():
    assert two_type_optimal_k((0.9, 0.8), (0.5, 0.5), 1.0, 0.99) == (math.inf, math.inf)
    assert two_type_optimal_k((0.01, 0.0), (0.5, 0.5), 1.0, 0.5) == (0.0, 1)
    with pytest.raises(ValueError, match="accepted more often"):
        two_type_optimal_k((0.9, 0.0), (0.5, 0.5), 0.05, 0.5, fp_cost=0.01)


def test_bad_input():
    with pytest.raises(ValueError, match=r"completeness must be in \[0, 1\]"):
        accuracy_limit(0.3, 1.2, 0.5)
    with pytest.raises(ValueError, match=r"soundness must be in \[0, 1\]"):
        resample_outcome(0.3, 3, 0.5, -0.1)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        resample_outcome(np.array([0.3, np.nan]), 3, 0.5, 0.5)
    with pytest.raises(ValueError, match="k .* integer >= 1"):
        resample_outcome(0.3, 0, 0.5, 0.5)
    with pytest.raises(ValueError, match="k .* integer >= 1"):
        expected_utility(0.3, 2.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="rate is empty"):
        accuracy_limit(np.array([]), 0.5, 0.5)
    with pytest.raises(ValueError, match="matching non-empty 1-D"):
        optimal_num_samples([0.5, 0.1], [1.0], 0.9, 0.9)
    with pytest.raises(ValueError, match="k_max must be an int >= 1"):
        optimal_num_samples([0.5], None, 0.9, 0.9, k_max=0)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        optimal_num_samples([0.5, 0.1], [1.0, -1.0], 0.9, 0.9)
    with pytest.raises(ValueError, match="exactly two"):
        two_type_optimal_k((0.5,), (1.0,), 0.9, 0.9)
