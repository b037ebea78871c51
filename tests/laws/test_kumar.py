"""KumarLaw: the formula against hand arithmetic, monotonicity, recovery of known parameters
from noisy synthetic runs, held-out prediction, and bad inputs.

References: Kumar et al., "Scaling Laws for Precision", arXiv:2411.04330 (the law); synthetic
runs from tests/laws/helpers.py (ground truth independent of the fit).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest

from bitscale.laws import KumarLaw, Run, held_out_error, ptq_degradation
from tests.laws.helpers import KUMAR_TRUTH, kumar_grid, noisy

SIGMA = 0.003  # 0.3% multiplicative noise on every synthetic loss


@pytest.fixture(scope="module")
def fitted():
    return KumarLaw.fit(noisy(KUMAR_TRUTH, kumar_grid(), SIGMA, seed=0), seed=0)


def test_predict_matches_hand_arithmetic():
    law = KUMAR_TRUTH
    n, d, pw, pa, pkv = 1.0e8, 5.0e9, 4.0, 6.0, 3.0
    n_eff = (n * (1 - math.exp(-pw / 2.7)) * (1 - math.exp(-pa / 2.2))
             * (1 - math.exp(-pkv / 1.0)))
    want = 600.0 * n_eff ** -0.35 + 500.0 * d ** -0.3 + 1.8
    got = float(law.predict(n, d, w_bits=pw, a_bits=pa, kv_bits=pkv))
    assert got == pytest.approx(want, rel=1e-5)  # float32
    run = Run(n, d, 3.0, w_bits=pw, a_bits=pa, kv_bits=pkv)
    assert law.predict_runs([run])[0] == pytest.approx(want, rel=1e-12)
    assert float(law.effective_params(n, pw, pa, pkv)) == pytest.approx(n_eff, rel=1e-5)
    # unquantized: None and +inf are a factor of 1
    assert float(law.predict(n, d)) == pytest.approx(600.0 * n ** -0.35 + 500.0 * d ** -0.3
                                                     + 1.8, rel=1e-5)
    assert float(law.predict(n, d, w_bits=jnp.inf)) == pytest.approx(float(law.predict(n, d)))


def test_monotone_in_bits_n_and_d():
    law = KUMAR_TRUTH
    bits = np.arange(2.0, 11.0)  # float32 predict resolves the steps up to ~10 bits
    for field in ("w_bits", "a_bits", "kv_bits"):
        loss = np.asarray(law.predict(1e8, 1e10, **{field: bits}))
        assert np.all(np.diff(loss) < 0), field
        runs = [Run(1e8, 1e10, 3.0, **{field: float(b)}) for b in range(2, 17)]
        assert np.all(np.diff(law.predict_runs(runs)) < 0), field  # float64, up to 16 bits
    ns = np.geomspace(1e7, 1e10, 12)
    ds = np.geomspace(1e9, 1e12, 12)
    assert np.all(np.diff(np.asarray(law.predict(ns, 1e10, w_bits=4.0))) < 0)
    assert np.all(np.diff(np.asarray(law.predict(1e8, ds, w_bits=4.0))) < 0)


def test_fit_recovers_known_parameters(fitted):
    p = fitted.params
    # Tolerances hold for noise seeds 0-4 (worst seen: beta 7.5%, B 35%, gamma_kv 4.3%; seed 0
    # used here: A 4%, B 8%, beta 1.5%, the rest < 2.5%). A and B trade off against alpha and
    # beta (a 1% change in beta moves B by ~23% at D ~ 1e10), hence their wide bands.
    for name, tol in (("alpha", 0.05), ("beta", 0.10), ("E", 0.05), ("gamma_w", 0.05),
                      ("gamma_a", 0.05), ("gamma_kv", 0.06), ("A", 0.25), ("B", 0.40)):
        assert getattr(p, name) == pytest.approx(getattr(KUMAR_TRUTH, name), rel=tol), name
    assert fitted.rel_rmse < 1.3 * SIGMA  # the noise level, not more
    assert fitted.residuals.shape == (len(kumar_grid()),)
    assert fitted.num_finite == fitted.num_starts


def test_held_out_runs_predicted_within_half_a_percent():
    train = noisy(KUMAR_TRUTH, kumar_grid(ns=(30e6, 60e6, 110e6)), SIGMA, seed=1)
    # held out: a larger model and longer training (extrapolation), noise-free targets
    test = noisy(KUMAR_TRUTH, kumar_grid(ns=(220e6, 400e6), ds=(26e9, 50e9)), 0.0, seed=2)
    out = held_out_error(KumarLaw, train, test)
    assert out.max_abs_rel_error < 0.005, out.max_abs_rel_error
    assert out.rel_errors.shape == (len(test),)


def test_fit_weight_only_leaves_other_gammas_none():
    runs = [r for r in kumar_grid() if r.a_bits is None and r.kv_bits is None]
    fit = KumarLaw.fit(noisy(KUMAR_TRUTH, runs, SIGMA, seed=3), num_starts=8)
    assert fit.params.gamma_a is None and fit.params.gamma_kv is None
    assert fit.params.gamma_w == pytest.approx(2.7, rel=0.1)
    with pytest.raises(ValueError, match="a_bits was given but this law has gamma_a=None"):
        fit.params.predict(1e8, 1e10, a_bits=4.0)


def test_init_is_used_as_a_start():
    runs = noisy(KUMAR_TRUTH, kumar_grid(), SIGMA, seed=0)
    fit = KumarLaw.fit(runs, init=KUMAR_TRUTH, num_starts=1)
    assert fit.params.alpha == pytest.approx(0.35, rel=0.05)


def test_ptq_degradation_formula_and_growth_with_data():
    got = float(ptq_degradation(1e8, 1e10, 4.0, C_T=0.05, gamma_D=0.5, gamma_N=0.4,
                                gamma_post=1.5))
    assert got == pytest.approx(0.05 * 1e10 ** 0.5 / 1e8 ** 0.4 * math.exp(-4.0 / 1.5), rel=1e-5)
    ds = np.geomspace(1e9, 1e12, 8)
    deg = np.asarray(ptq_degradation(1e8, ds, 4.0, C_T=0.05, gamma_D=0.5, gamma_N=0.4,
                                     gamma_post=1.5))
    assert np.all(np.diff(deg) > 0)


def test_bad_inputs():
    law = KUMAR_TRUTH
    with pytest.raises(ValueError, match="n_params must be finite and > 0, got -1.0"):
        law.predict(-1.0, 1e9)
    with pytest.raises(ValueError, match="tokens must be finite and > 0"):
        law.predict(1e8, 0.0)
    with pytest.raises(ValueError, match="w_bits must be > 0"):
        law.predict(1e8, 1e9, w_bits=0.0)
    with pytest.raises(ValueError, match="gamma_w must be finite and > 0"):
        dataclasses.replace(law, gamma_w=-1.0)
    runs = kumar_grid()
    few = [runs[i * 17 + 1 + i % 2] for i in range(6)]  # w_bits 3 / 4 at 6 (N, D) points
    with pytest.raises(ValueError, match="6 runs cannot determine 6 free parameters; need at "
                                         "least 7"):
        KumarLaw.fit(noisy(KUMAR_TRUTH, few, SIGMA, seed=0))
    same = [Run(r.n_params, r.tokens, 3.0, w_bits=4) for r in runs]
    with pytest.raises(ValueError, match="every run has w_bits=4; gamma_w is then not "
                                         "identifiable"):
        KumarLaw.fit(same)
    with pytest.raises(ValueError, match="every run has the same n_params"):
        KumarLaw.fit([Run(1e8, r.tokens, 3.0, w_bits=r.w_bits) for r in runs[:40]])
    with pytest.raises(ValueError, match="num_starts must be an int >= 1"):
        KumarLaw.fit(runs, num_starts=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        KumarLaw.fit(runs, loss="l1")
    with pytest.raises(ValueError, match=r"runs\[0\] is a dict, not a Run"):
        KumarLaw.fit([{"n_params": 1e8}])
