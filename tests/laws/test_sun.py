"""SunLaw: the formula against hand arithmetic, monotonicity and the critical data size,
recovery of known parameters from noisy synthetic runs, held-out prediction, and bad inputs.

References: Sun et al., "Scaling Laws for Floating-Point Quantization Training",
arXiv:2501.02423 (the law); synthetic runs from tests/laws/helpers.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bitscale.laws import Run, SunLaw, held_out_error
from tests.laws.helpers import SUN_TRUTH, noisy, sun_grid

SIGMA = 0.002  # 0.2% multiplicative noise on every synthetic loss


@pytest.fixture(scope="module")
def fitted():
    return SunLaw.fit(noisy(SUN_TRUTH, sun_grid(), SIGMA, seed=0), seed=0)


def test_predict_matches_hand_arithmetic():
    n, d, e, m, b = 1.5e8, 2.0e10, 2, 1, 32
    want = (69.23 / n ** 0.2368 + 68973.0 / d ** 0.5162 + 1.906
            + (d ** 0.5162 / n ** 0.2368) * math.log2(b)
            / (11334.0 * (e + 0.5) ** 3.148 * (m + 0.5) ** 2.920))
    assert float(SUN_TRUTH.predict(n, d, e, m, b)) == pytest.approx(want, rel=1e-5)  # float32
    run = Run(n, d, 3.0, exp_bits=e, man_bits=m, block_size=b)
    assert SUN_TRUTH.predict_runs([run])[0] == pytest.approx(want, rel=1e-12)
    assert float(SUN_TRUTH.precision_penalty(n, d, e, m, 1)) == 0.0  # B = 1: no penalty


def test_monotone_in_bits_block_size_and_n():
    law = SUN_TRUTH
    bits = np.arange(0.0, 7.0)
    assert np.all(np.diff(np.asarray(law.predict(1e8, 2e10, bits, 2.0, 128.0))) < 0)  # E up
    assert np.all(np.diff(np.asarray(law.predict(1e8, 2e10, 3.0, bits, 128.0))) < 0)  # M up
    blocks = 2.0 ** np.arange(1, 13)
    assert np.all(np.diff(np.asarray(law.predict(1e8, 2e10, 2.0, 1.0, blocks))) > 0)  # B up
    ns = np.geomspace(1e7, 1e10, 12)
    assert np.all(np.diff(np.asarray(law.predict(ns, 2e10, 2.0, 1.0, 128.0))) < 0)


def test_loss_in_data_falls_then_rises_at_the_critical_data_size():
    law, n, e, m, b = SUN_TRUTH, 4.1e7, 1, 0, 1024  # a coarse format: D_crit within reach
    d_crit = float(law.critical_data_size(n, e, m, b))
    ds = d_crit * np.geomspace(0.05, 20.0, 41)
    loss = law.predict_runs([Run(n, float(d), 3.0, exp_bits=e, man_bits=m, block_size=b)
                             for d in ds])
    assert int(np.argmin(loss)) == 20  # the middle point, d_crit itself
    assert np.all(np.diff(loss[:21]) < 0) and np.all(np.diff(loss[20:]) > 0)
    assert law.critical_data_size(n, e, m, 1) == np.inf


def test_fit_recovers_known_parameters(fitted):
    p = fitted.params
    # Tolerances hold for noise seeds 0-4 (worst seen: alpha 2.1%, delta 1.5%, d 20%, gamma 30%;
    # seed 0 used here: all within 6.3%). n, d, gamma trade off against the exponents (a 1%
    # change in beta moves d by ~13% at D ~ 3e10), hence their wide bands.
    for name, tol in (("alpha", 0.03), ("beta", 0.03), ("eps", 0.02), ("delta", 0.03),
                      ("nu", 0.03), ("n", 0.15), ("d", 0.25), ("gamma", 0.35)):
        assert getattr(p, name) == pytest.approx(getattr(SUN_TRUTH, name), rel=tol), name
    assert fitted.rel_rmse < 1.3 * SIGMA
    assert fitted.num_finite >= fitted.num_starts // 2


def test_noise_free_fit_is_exact():
    fit = SunLaw.fit(noisy(SUN_TRUTH, sun_grid(), 0.0, seed=0), num_starts=8, seed=1)
    for name in ("n", "alpha", "d", "beta", "eps", "gamma", "delta", "nu"):
        assert getattr(fit.params, name) == pytest.approx(getattr(SUN_TRUTH, name), rel=1e-3)
    assert fit.max_rel_error < 1e-5


def test_held_out_runs_predicted_within_half_a_percent():
    train = noisy(SUN_TRUTH, sun_grid(ns=(41e6, 85e6, 154e6)), SIGMA, seed=1)
    test = noisy(SUN_TRUTH, sun_grid(ns=(679e6, 1.2e9), ds=(50e9, 100e9)), 0.0, seed=2)
    out = held_out_error(SunLaw, train, test)
    assert out.max_abs_rel_error < 0.005, out.max_abs_rel_error


def test_bad_inputs():
    law = SUN_TRUTH
    with pytest.raises(ValueError, match="block_size must be finite and >= 1, got 0.0"):
        law.predict(1e8, 1e10, 2, 1, 0)
    with pytest.raises(ValueError, match="man_bits must be finite and >= 0, got -1.0"):
        law.predict(1e8, 1e10, 2, -1, 32)
    with pytest.raises(ValueError, match="n_params must be finite and > 0"):
        law.predict(0.0, 1e10, 2, 1, 32)
    with pytest.raises(ValueError, match="gamma must be finite and > 0"):
        SunLaw(n=1.0, alpha=0.3, d=1.0, beta=0.3, eps=1.0, gamma=0.0, delta=1.0, nu=1.0)
    runs = sun_grid()
    with pytest.raises(ValueError, match="run 0 .* has no exp_bits"):
        SunLaw.fit([Run(1e8, 1e10, 3.0, man_bits=1, block_size=32)] + runs)
    with pytest.raises(ValueError, match="every run has block_size=32"):
        SunLaw.fit([r for r in runs if r.block_size == 32])
    with pytest.raises(ValueError, match="need at least 9"):
        SunLaw.fit(noisy(SUN_TRUTH, runs[::47][:8], SIGMA, seed=0))
