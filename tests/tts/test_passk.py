"""pass@k: float32 vs exact rational arithmetic (fractions.Fraction), edge cases, jit/vmap, errors.

Reference (independent of the library): 1 - C(n-c, k) / C(n, k) with math.comb and Fraction.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale.tts import pass_at_k, pass_at_k_np


def _exact(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def _cases_n10000(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(c, k) at n = 10,000 covering uniform draws and the hard regime c k / n ~ 0.1 .. 40."""
    n = 10_000
    c_u, k_u = rng.integers(0, n + 1, m), rng.integers(1, n + 1, m)
    k_h = rng.integers(1, 700, m)
    target = np.exp(rng.uniform(np.log(0.1), np.log(40.0), m))  # c * k / n
    c_h = np.clip(np.round(target * n / k_h), 0, n).astype(int)
    return np.concatenate([c_u, c_h]), np.concatenate([k_u, k_h])


def test_float32_matches_fractions_at_n_10000():
    rng = np.random.default_rng(0)
    c, k = _cases_n10000(rng, 150)
    got = pass_at_k(10_000, c, k)
    assert got.dtype == jnp.float32
    ref = np.array([_exact(10_000, int(ci), int(ki)) for ci, ki in zip(c, k)])
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=0, atol=1e-6)
    # the hardest cases: many terms and a sum near -1, where pass@k is ~0.63
    c2 = k2 = np.array([100, 99, 101, 90, 110])
    ref2 = np.array([_exact(10_000, int(a), int(b)) for a, b in zip(c2, k2)])
    np.testing.assert_allclose(np.asarray(pass_at_k(10_000, c2, k2), np.float64), ref2,
                               rtol=0, atol=1e-6)


def test_float32_matches_fractions_random_n():
    rng = np.random.default_rng(1)
    n = rng.integers(1, 10_001, 200)
    c = np.array([rng.integers(0, x + 1) for x in n])
    k = np.array([rng.integers(1, min(x, 400) + 1) for x in n])
    ref = np.array([_exact(int(a), int(b), int(d)) for a, b, d in zip(n, c, k)])
    np.testing.assert_allclose(np.asarray(pass_at_k(n, c, k), np.float64), ref, rtol=0, atol=1e-6)


def test_small_exhaustive_and_exact_edges():
    rows = [(n, c, k) for n in range(1, 13) for c in range(n + 1) for k in range(1, n + 1)]
    n, c, k = (np.array(x) for x in zip(*rows))
    got = np.asarray(pass_at_k(n, c, k))
    ref = np.array([_exact(*r) for r in rows])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    assert np.all(got[c == 0] == 0.0) and not np.any(np.signbit(got[c == 0]))
    assert np.all(got[n - c < k] == 1.0)
    assert float(pass_at_k(10_000, 1, 1)) == pytest.approx(1e-4, rel=1e-6)


def test_host_float64_variant():
    rng = np.random.default_rng(2)
    c, k = _cases_n10000(rng, 40)
    ref = np.array([_exact(10_000, int(ci), int(ki)) for ci, ki in zip(c, k)])
    got = pass_at_k_np(10_000, c, k)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-13)
    # a huge n (beyond float32's exact integers) against float32 jnp
    n = 10**7
    c, k = np.array([0, 3, 3000, 10**6]), np.array([5, 4000, 3000, 9 * 10**6])
    np.testing.assert_allclose(np.asarray(pass_at_k(n, c, k), np.float64), pass_at_k_np(n, c, k),
                               rtol=0, atol=1e-6)


def test_broadcasting_jit_vmap_and_x64():
    c = np.arange(0, 21)[:, None]
    k = np.array([1, 2, 5, 20])[None, :]
    eager = pass_at_k(20, c, k)
    assert eager.shape == (21, 4)
    np.testing.assert_array_equal(jax.jit(pass_at_k)(20, c, k), eager)
    vm = jax.vmap(lambda ci: pass_at_k(20, ci, jnp.asarray([1, 2, 5, 20])))(jnp.arange(21))
    np.testing.assert_allclose(vm, eager, rtol=0, atol=1e-7)
    with jax.enable_x64(True):
        got64 = pass_at_k(10_000, 100, 100)
        assert got64.dtype == jnp.float64
        assert float(got64) == pytest.approx(_exact(10_000, 100, 100), abs=1e-14)


@pytest.mark.parametrize("n, c, k, match", [
    (5, 1, 6, "k must be <= n"),
    (5, 1, 0, "k must be >= 1"),
    (5, 6, 1, "0 <= c <= n"),
    (5, -1, 1, "0 <= c <= n"),
    (0, 0, 1, "n .* must be >= 1"),
    (5, 1.5, 1, "c must be integers"),
    (np.array([5, 6]), np.array([1, 2, 3]), 1, "must broadcast together"),
    (np.array([], int), 0, 1, "n is empty"),
])
def test_bad_input_raises(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError, match=match):
        pass_at_k_np(n, c, k)


def test_int32_overflow_is_rejected():
    with pytest.raises(ValueError, match="overflow int32"):
        pass_at_k(3 * 10**9, 1, 1)
    assert pass_at_k_np(3 * 10**9, 1, 1) == pytest.approx(1 / 3e9, rel=1e-12)


def test_invalid_under_jit_is_nan():
    out = jax.jit(pass_at_k)(jnp.asarray([5, 5, 5]), jnp.asarray([1, 6, 1]), jnp.asarray([6, 1, 2]))
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == pytest.approx(0.4)
    with pytest.raises(TypeError, match="integer dtype"):
        jax.jit(pass_at_k)(5.0, 1, 1)
