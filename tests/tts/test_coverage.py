"""Coverage curves, bootstrap bands and the exponentiated power-law fit.

References (independent of the library): exact pass@k with fractions.Fraction; synthetic curves
exp(a k^b) with known a, b.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import numpy as np
import pytest

from bitscale.tts import (
    bootstrap_coverage,
    coverage_curve,
    fit_power_law,
    pass_at_k_matrix,
)


def _exact_coverage(correct: np.ndarray, k: int) -> float:
    n = correct.shape[1]
    vals = [1 - Fraction(math.comb(n - int(c), k), math.comb(n, k)) for c in correct.sum(1)]
    return float(sum(vals) / len(vals))


def test_coverage_curve_matches_exact():
    rng = np.random.default_rng(0)
    correct = rng.random((30, 40)) < rng.random((30, 1)) * 0.3
    ks = [1, 2, 5, 10, 40]
    got = np.asarray(coverage_curve(correct, ks), np.float64)
    np.testing.assert_allclose(got, [_exact_coverage(correct, k) for k in ks], rtol=0, atol=1e-6)
    assert pass_at_k_matrix(correct, ks).shape == (30, 5)
    assert np.all(np.diff(got) >= 0)


def test_bootstrap_bands(key):
    rng = np.random.default_rng(1)
    correct = rng.random((200, 16)) < rng.random((200, 1)) * 0.5
    ks = [1, 4, 16]
    bands = bootstrap_coverage(correct, ks, key, num_resamples=400)
    again = bootstrap_coverage(correct, ks, key, num_resamples=400)
    np.testing.assert_array_equal(bands.lo, again.lo)  # deterministic given the key
    np.testing.assert_allclose(bands.mean, coverage_curve(correct, ks), rtol=1e-6)
    np.testing.assert_array_equal(bands.k, ks)
    assert np.all(bands.lo <= bands.mean) and np.all(bands.mean <= bands.hi)
    assert np.all(bands.hi - bands.lo > 0.02)
    # the band is about 2 * 1.96 standard errors of a mean over problems
    se = np.asarray(pass_at_k_matrix(correct, ks)).std(0) / np.sqrt(200)
    np.testing.assert_allclose(bands.hi - bands.lo, 2 * 1.96 * se, rtol=0.25)
    narrow = bootstrap_coverage(correct, ks, key, num_resamples=400, confidence=0.5)
    assert np.all(narrow.lo >= bands.lo) and np.all(narrow.hi <= bands.hi)
    same = np.tile(correct[:1], (200, 1))  # identical problems: no spread
    flat = bootstrap_coverage(same, ks, key, num_resamples=400)
    np.testing.assert_allclose(flat.lo, flat.hi, atol=1e-6)
    jitted = jax.jit(lambda c, kk: bootstrap_coverage(c, ks, kk, num_resamples=400))
    np.testing.assert_allclose(jitted(correct, key).hi, bands.hi, atol=1e-6)


@pytest.mark.parametrize("a, b", [(-0.8, -0.4), (-2.5, -0.15), (-0.05, -0.9)])
def test_power_law_recovers_exact_parameters(a, b):
    ks = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256])
    cov = np.exp(a * ks ** b)
    for refine in (False, True):
        fit = fit_power_law(ks, cov, refine=refine)
        assert fit.a == pytest.approx(a, rel=1e-7) and fit.b == pytest.approx(b, rel=1e-7)
        assert fit.rmse < 1e-9 and fit.num_points == ks.size
    np.testing.assert_allclose(fit(ks), cov, atol=1e-9)


def test_power_law_noisy_fit_refinement_helps():
    rng = np.random.default_rng(3)
    ks = np.unique(np.round(np.logspace(0, 3, 20))).astype(int)
    a, b = -1.2, -0.3
    cov = np.exp(a * ks ** b) + rng.normal(0, 0.003, ks.size)
    closed = fit_power_law(ks, cov, refine=False)
    refined = fit_power_law(ks, cov)
    assert refined.rmse <= closed.rmse
    assert refined.a == pytest.approx(a, rel=0.05) and refined.b == pytest.approx(b, rel=0.05)


def test_power_law_saturated_and_bad_input():
    ks = np.array([1, 2, 4, 8, 16])
    cov = np.array([0.0, 0.3, 0.5, 0.8, 1.0])
    with pytest.raises(ValueError, match="exactly 0 or 1"):
        fit_power_law(ks, cov)
    fit = fit_power_law(ks, cov, saturated="drop")
    assert fit.num_points == 3 and fit.a < 0 and fit.b < 0
    with pytest.raises(ValueError, match="at least 2 distinct k"):
        fit_power_law([1, 2, 3], [0.0, 0.5, 1.0], saturated="drop")
    with pytest.raises(ValueError, match="same length"):
        fit_power_law([1, 2, 3], [0.2, 0.5])
    with pytest.raises(ValueError, match=">= 1"):
        fit_power_law([0, 2], [0.2, 0.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fit_power_law([1, 2], [0.2, 1.5])
    with pytest.raises(ValueError, match="saturated must be"):
        fit_power_law([1, 2], [0.2, 0.5], saturated="clip")


def test_coverage_bad_input():
    correct = np.ones((3, 4), bool)
    with pytest.raises(ValueError, match="1 <= k <= n=4"):
        coverage_curve(correct, [1, 5])
    with pytest.raises(ValueError, match="1 <= k"):
        coverage_curve(correct, [0])
    with pytest.raises(ValueError, match="non-empty"):
        coverage_curve(np.ones((3, 0), bool), [1])
    with pytest.raises(ValueError, match="must have 2 dims"):
        coverage_curve(np.ones(4, bool), [1])
    with pytest.raises(ValueError, match="non-empty int"):
        coverage_curve(correct, [])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_coverage(correct, [1], jax.random.key(0), confidence=1.0)
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap_coverage(correct, [1], jax.random.key(0), num_resamples=0)
