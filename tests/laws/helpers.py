"""Synthetic sweeps for the law tests: runs generated from KNOWN law parameters on grids like the
papers' (Kumar et al.: 30M-220M parameters, 1.5B-26B tokens, 3-8 bits; Sun et al.: 41M-679M
parameters, 10B-100B tokens, E1-E4 / M0-M3 formats, blocks of 32-1024), with multiplicative
log-normal noise from a fixed seed."""

from __future__ import annotations

import itertools

import numpy as np

from bitscale.laws import KumarLaw, Run, SunLaw

# Constants of the order of the papers' fits (used as ground truth, not quoted from them).
KUMAR_TRUTH = KumarLaw(A=600.0, alpha=0.35, B=500.0, beta=0.3, E=1.8, gamma_w=2.7, gamma_a=2.2,
                       gamma_kv=1.0)
SUN_TRUTH = SunLaw(n=69.23, alpha=0.2368, d=68973.0, beta=0.5162, eps=1.906, gamma=11334.0,
                   delta=3.148, nu=2.920)


def noisy(law, runs: list[Run], sigma: float, seed: int) -> list[Run]:
    """The runs with loss = law prediction * exp(sigma * standard normal)."""
    rng = np.random.default_rng(seed)
    pred = law.predict_runs(runs)
    return [Run(**{**r.to_dict(), "loss": float(p * np.exp(sigma * rng.standard_normal()))})
            for r, p in zip(runs, pred)]


def kumar_grid(ns=(30e6, 60e6, 110e6, 220e6), ds=(1.5e9, 3e9, 6e9, 13e9, 26e9),
               bits=(3, 4, 5, 6, 8)) -> list[Run]:
    """Weight-, activation- and KV-only sweeps plus an unquantized baseline per (N, D)."""
    runs = []
    for n, d in itertools.product(ns, ds):
        runs.append(Run(n, d, 1.0))
        for field, p in itertools.product(("w_bits", "a_bits", "kv_bits"), bits):
            runs.append(Run(n, d, 1.0, **{field: p}))
        runs.append(Run(n, d, 1.0, w_bits=4, a_bits=4, kv_bits=4))
    return runs


def sun_grid(ns=(41e6, 85e6, 154e6, 679e6), ds=(10e9, 20e9, 50e9, 100e9),
             formats=((1, 1), (1, 2), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (4, 3)),
             blocks=(32, 128, 1024)) -> list[Run]:
    return [Run(n, d, 1.0, exp_bits=e, man_bits=m, block_size=b)
            for n, d, (e, m), b in itertools.product(ns, ds, formats, blocks)]
