"""Coverage curves (mean pass@k over problems), bootstrap confidence bands, and the exponentiated
power-law fit ``coverage(k) = exp(a k^b)`` of Large Language Monkeys.

References:
    Brown et al., "Large Language Monkeys: Scaling Inference Compute with Repeated Sampling",
    arXiv:2407.21787 (coverage, and its fit ``log c = a k^b``).
    Chen et al., arXiv:2107.03374 (pass@k).
    Efron & Tibshirani, "An Introduction to the Bootstrap", 1993 (percentile intervals).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.tts._checks import check_ks, check_matrix
from bitscale.tts._passk import pass_at_k

__all__ = ["CoverageBands", "PowerLawFit", "bootstrap_coverage", "coverage_curve",
           "fit_power_law", "pass_at_k_matrix"]


def pass_at_k_matrix(correct: Any, ks: Any) -> jax.Array:
    """Per-problem pass@k, float [P, K], from a correctness matrix bool [P, N] and K values of k."""
    fn = "pass_at_k_matrix"
    _, n = check_matrix("correct", correct, fn=fn)
    ks = jnp.asarray(check_ks(ks, n, fn=fn))
    c = jnp.sum(jnp.asarray(correct, bool), axis=-1, dtype=ks.dtype)
    return pass_at_k(n, c[:, None], ks[None, :])


def coverage_curve(correct: Any, ks: Any) -> jax.Array:
    """Coverage(k) = mean over problems of pass@k, float [K], from correctness bool [P, N]."""
    return jnp.mean(pass_at_k_matrix(correct, ks), axis=0)


class CoverageBands(NamedTuple):
    """A coverage curve with a bootstrap confidence band: each field is [K] (``k`` is int)."""

    k: jax.Array
    mean: jax.Array  # coverage on the full problem set (the point estimate)
    lo: jax.Array    # lower percentile of the bootstrap distribution
    hi: jax.Array    # upper percentile


def bootstrap_coverage(correct: Any, ks: Any, key: jax.Array, *, num_resamples: int = 1000,
                       confidence: float = 0.95) -> CoverageBands:
    """Coverage at each k with a percentile-bootstrap band over problems.

    Each resample draws P problems with replacement (from `key`); the per-problem pass@k values are
    computed once, so a resample is a reweighting (multinomial counts @ pass@k matrix). ``lo`` and
    ``hi`` are the ``(1 -/+ confidence) / 2`` quantiles of the resampled coverages.

    References:
        Efron & Tibshirani 1993 (percentile bootstrap); Brown et al., arXiv:2407.21787.
    """
    fn = "bootstrap_coverage"
    if not isinstance(num_resamples, int) or num_resamples < 1:
        raise ValueError(f"{fn}: num_resamples must be an int >= 1, got {num_resamples!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"{fn}: confidence must be in (0, 1), got {confidence}")
    per_problem = pass_at_k_matrix(correct, ks)  # [P, K]
    alpha = (1.0 - float(confidence)) / 2.0
    lo, hi = _bootstrap_band(per_problem, key, alpha, num_resamples)
    k = jnp.asarray(check_ks(ks, None, fn=fn))
    return CoverageBands(k=k, mean=jnp.mean(per_problem, axis=0), lo=lo, hi=hi)


@functools.partial(jax.jit, static_argnums=3)
def _bootstrap_band(per_problem: jax.Array, key: jax.Array, alpha: float,
                    num_resamples: int) -> tuple[jax.Array, jax.Array]:
    p = per_problem.shape[0]
    idx = jax.random.randint(key, (num_resamples, p), 0, p)
    counts = jax.vmap(lambda i: jnp.bincount(i, length=p))(idx).astype(per_problem.dtype)
    boot = jnp.matmul(counts, per_problem, precision=jax.lax.Precision.HIGHEST) / p  # [R, K]
    q = jnp.stack([alpha, 1.0 - alpha]).astype(boot.dtype)
    lo, hi = jnp.quantile(boot, q, axis=0)
    return lo, hi


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """``coverage(k) = exp(a * k**b)`` (a < 0; b < 0 for a rising curve) and its fit error.

    Attributes:
        a, b: the fitted parameters.
        rmse: root-mean-square error of the fit in coverage space, over the fitted points.
        num_points: how many (k, coverage) points were fitted.
    """

    a: float
    b: float
    rmse: float
    num_points: int

    def __call__(self, k: Any) -> np.ndarray:
        """The fitted coverage at `k` (numpy float64)."""
        return np.exp(self.a * np.asarray(k, np.float64) ** self.b)


def _predict(theta: np.ndarray, logk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and its Jacobian in theta = (log(-a), b)."""
    ak = -np.exp(theta[0] + theta[1] * logk)  # a k^b
    f = np.exp(ak)
    return f, np.stack([f * ak, f * ak * logk], axis=-1)


def fit_power_law(ks: Any, coverage: Any, *, saturated: str = "raise", refine: bool = True,
                  iters: int = 100) -> PowerLawFit:
    """Fit ``coverage(k) = exp(a k^b)`` to a coverage curve (host, float64).

    Closed form first: ``log(-log c) = log(-a) + b log k`` is linear in log k, solved by least
    squares. With ``refine`` (default) that solution seeds a damped Gauss-Newton
    (Levenberg-Marquardt) minimisation of the squared error in coverage space, parameterised by
    ``(log(-a), b)`` so that a stays negative; a step is kept only if it lowers the error.

    Coverage values of exactly 0 or 1 have no finite ``log(-log c)``: ``saturated="raise"``
    (default) rejects them with a ValueError; ``saturated="drop"`` leaves them out of the fit.
    At least two points with distinct k must remain.

    References:
        Brown et al., arXiv:2407.21787 (the exponentiated power law for coverage).
    """
    fn = "fit_power_law"
    k = np.asarray(ks, np.float64).reshape(-1)
    c = np.asarray(coverage, np.float64).reshape(-1)
    if k.shape != c.shape:
        raise ValueError(f"{fn}: ks and coverage must have the same length, got {np.shape(ks)} "
                         f"and {np.shape(coverage)}")
    if saturated not in ("raise", "drop"):
        raise ValueError(f"{fn}: saturated must be 'raise' or 'drop', got {saturated!r}")
    if not np.all(np.isfinite(k) & (k >= 1)):
        raise ValueError(f"{fn}: every k must be finite and >= 1, got {k.tolist()}")
    if not np.all((c >= 0) & (c <= 1)):
        raise ValueError(f"{fn}: coverage must be in [0, 1], got {c.tolist()}")
    inside = (c > 0) & (c < 1)
    if saturated == "raise" and not np.all(inside):
        raise ValueError(f"{fn}: coverage values of exactly 0 or 1 have no finite log(-log c) "
                         f"(got {c[~inside].tolist()} at k={k[~inside].tolist()}); pass "
                         f"saturated='drop' to leave them out, or fit before saturation")
    k, c = k[inside], c[inside]
    if np.unique(k).size < 2:
        raise ValueError(f"{fn}: need at least 2 distinct k with 0 < coverage < 1, got "
                         f"k={k.tolist()}")
    logk = np.log(k)
    design = np.stack([np.ones_like(logk), logk], axis=-1)
    theta = np.linalg.lstsq(design, np.log(-np.log(c)), rcond=None)[0]
    if refine:
        theta = _levenberg_marquardt(theta, logk, c, iters)
    f, _ = _predict(theta, logk)
    return PowerLawFit(a=float(-np.exp(theta[0])), b=float(theta[1]),
                       rmse=float(np.sqrt(np.mean((f - c) ** 2))), num_points=int(k.size))


def _levenberg_marquardt(theta: np.ndarray, logk: np.ndarray, c: np.ndarray,
                         iters: int) -> np.ndarray:
    f, jac = _predict(theta, logk)
    sse, lam = float(np.sum((f - c) ** 2)), 1e-3
    for _ in range(iters):
        jtj, jtr = jac.T @ jac, jac.T @ (f - c)
        step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -jtr)
        cand = theta + step
        f_new, jac_new = _predict(cand, logk)
        sse_new = float(np.sum((f_new - c) ** 2))
        if np.isfinite(sse_new) and sse_new <= sse:
            converged = sse - sse_new <= 1e-15 * max(sse, 1e-300)
            theta, f, jac, sse, lam = cand, f_new, jac_new, sse_new, max(lam / 3, 1e-12)
            if converged:
                break
        else:
            lam *= 4
            if lam > 1e12:
                break
    return theta
