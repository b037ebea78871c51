"""Gaussian-MSE-optimal clipping ratios of quantization grids (QuEST's ``+rms`` clip).

For a grid ``G`` (the representable values divided by the largest one, so max |G| = 1) and a
clip ratio ``alpha``, ``Q_alpha(x)`` rounds ``x`` to the nearest point of ``alpha * G`` (values
beyond ``alpha`` saturate onto ``+-alpha``). `gaussian_optimal_clip` returns the ``alpha`` that
minimizes ``E[(X - Q_alpha(X))^2]`` for ``X ~ N(0, 1)``; QuEST (and Quartet's MXFP4 kernels) then
clip every scale group at ``alpha * RMS(group)``.

The expectation is a sum of exact Gaussian integrals, one per grid cell ``[t_i, t_{i+1}]``
(``t`` the midpoints between neighbouring grid points, ``c`` the cell's point)::

    int (x - c)^2 phi(x) dx = [Phi(x) - x phi(x)] - 2 c [-phi(x)] + c^2 [Phi(x)]   (t_i .. t_{i+1})

evaluated with `scipy.special.ndtr` (the upper tail as ``ndtr(-x)``, so no cancellation). The minimum
is bracketed on a logarithmic grid of alpha in [0.05, 64] (every local minimum of the samples;
among minima within a relative 1e-9 of the best, the smallest alpha), found with Brent's method
(`scipy.optimize.minimize_scalar`) and polished with a root search of the analytic derivative
``dMSE/dalpha = -2 sum_i g_i (int_cell x phi - alpha g_i int_cell phi)`` (the cell edges move
with alpha but the integrand is continuous across them, so they contribute nothing). Results are
cached per grid; everything here runs on the host in float64, once per spec.

References:
  Panferov et al., "QuEST: Stable Training of LLMs with 1-Bit Weights and Activations",
    arXiv:2502.05003 (``OPTIMAL_GAUSSIAN_SCALES``, IST-DASLab/QuEST).
  Castro et al., "Quartet: Native FP4 Training Can Be Optimal for Large Language Models",
    arXiv:2505.14669 (``gaussian_scale = 2.92247856 / 6.0`` for FP4 E2M1, IST-DASLab/Quartet).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)

__all__ = ["gaussian_mse", "gaussian_optimal_clip", "gaussian_optimal_clip_for", "element_grid"]


def _as_levels(levels: Any) -> tuple[float, ...]:
    arr = np.asarray(levels, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"levels must be a non-empty 1-D array of grid magnitudes, got shape "
                         f"{arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"levels must be finite and non-negative (the magnitudes of a symmetric "
                         f"grid), got {arr.tolist()}")
    if np.any(np.diff(arr) < 0):
        raise ValueError(f"levels must be sorted ascending, got {arr.tolist()}")
    if arr[-1] != 1.0:
        raise ValueError(f"levels must be normalized so that the largest is 1, got max "
                         f"{arr[-1]!r} (divide by it)")
    return tuple(float(v) for v in np.unique(arr))


def _signed_grid(levels: tuple[float, ...]) -> np.ndarray:
    """The symmetric signed grid of non-negative magnitudes (one zero if 0 is a level)."""
    pos = np.asarray(levels)
    neg = -pos[::-1]
    if pos[0] == 0.0:
        neg = neg[:-1]
    return np.concatenate([neg, pos])


def _cells(points: np.ndarray, alpha: float):
    """Per grid point: (point, Phi-mass, int x phi, int x^2 phi) over its rounding cell."""
    from scipy.special import ndtr

    p = alpha * points
    mid = (p[1:] + p[:-1]) / 2.0
    a = np.concatenate([[-np.inf], mid])
    b = np.concatenate([mid, [np.inf]])
    fa, fb = np.isfinite(a), np.isfinite(b)
    a0, b0 = np.where(fa, a, 0.0), np.where(fb, b, 0.0)
    pdf_a = np.where(fa, np.exp(-0.5 * a0 * a0) * _INV_SQRT_2PI, 0.0)
    pdf_b = np.where(fb, np.exp(-0.5 * b0 * b0) * _INV_SQRT_2PI, 0.0)
    # Probability mass of [a, b], from the upper tail where the cell is on the right (ndtr(-v)
    # is the upper tail 1 - Phi(v) without cancellation).
    mass = np.where(a >= 0, ndtr(-a) - ndtr(-b),
                    np.where(b <= 0, ndtr(b) - ndtr(a), 1.0 - ndtr(a) - ndtr(-b)))
    m1 = pdf_a - pdf_b  # int_a^b x phi(x) dx
    m2 = mass + a0 * pdf_a - b0 * pdf_b  # int_a^b x^2 phi = [Phi - x phi]_a^b
    return p, mass, m1, m2


def _mse_points(points: np.ndarray, alpha: float) -> float:
    p, mass, m1, m2 = _cells(points, alpha)
    return float(np.sum(m2 - 2.0 * p * m1 + p * p * mass))


def _dmse_points(points: np.ndarray, alpha: float) -> float:
    _, mass, m1, _ = _cells(points, alpha)
    return float(-2.0 * np.sum(points * (m1 - alpha * points * mass)))


def gaussian_mse(levels: Sequence[float], alpha: float) -> float:
    """E[(X - Q_alpha(X))^2] for X ~ N(0, 1) and the symmetric grid ``alpha * +-levels``."""
    return _mse_points(_signed_grid(_as_levels(levels)), float(alpha))


# Two local minima whose MSEs agree to this relative tolerance count as equally good: the
# smaller clip wins. Wide float grids (fp8, fp16) have nearly periodic MSE in log(alpha) once
# clipping is negligible, with minima a factor 2 apart that differ by ~1e-13 relatively.
_TIE_RTOL = 1e-9


def _refine(pts: np.ndarray, lo: float, hi: float) -> float:
    from scipy.optimize import brentq, minimize_scalar

    res = minimize_scalar(lambda a: _mse_points(pts, a), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-12})
    best = float(res.x)
    # Polish: float64 MSE values resolve alpha only to about sqrt(eps) relatively; the root of
    # the analytic derivative around Brent's minimum is exact to float64 rounding.
    step = max(1e-6 * best, 1e-12)
    a, b = max(lo, best - step), min(hi, best + step)
    if _dmse_points(pts, a) < 0 < _dmse_points(pts, b):
        best = float(brentq(lambda v: _dmse_points(pts, v), a, b, xtol=1e-15, rtol=1e-15,
                            maxiter=200))
    return best


@functools.lru_cache(maxsize=None)
def _optimal_clip_points(points: tuple[float, ...]) -> float:
    pts = np.asarray(points)
    grid = np.exp(np.linspace(np.log(0.05), np.log(64.0), 241))
    vals = np.array([_mse_points(pts, a) for a in grid])
    n = len(grid)
    # Every local minimum of the sampled curve, refined; the smallest clip among those within
    # _TIE_RTOL of the best wins.
    idx = [i for i in range(n) if (i == 0 or vals[i] <= vals[i - 1])
           and (i == n - 1 or vals[i] <= vals[i + 1])]
    found = []
    for i in idx:
        a = _refine(pts, grid[max(i - 1, 0)], grid[min(i + 1, n - 1)])
        found.append((a, _mse_points(pts, a)))
    best = min(v for _, v in found)
    return min(a for a, v in found if v <= best * (1.0 + _TIE_RTOL))


def gaussian_optimal_clip(levels: Sequence[float]) -> float:
    """The Gaussian-MSE-optimal clip ratio of a symmetric grid.

    Args:
      levels: sorted non-negative grid magnitudes normalized so the largest is 1 (the grid is
        ``+-levels``; include 0 if it is a grid point). E.g. FP4 E2M1:
        ``[0, .5, 1, 1.5, 2, 3, 4, 6] / 6``.

    Returns:
      ``alpha`` minimizing ``E[(X - Q_alpha(X))^2]``, ``X ~ N(0, 1)``, where ``Q_alpha`` rounds to
      the nearest point of ``alpha * +-levels`` and saturates at ``+-alpha`` (float, cached).
      FP4 E2M1 gives 2.9224785...; a 16-level uniform mid-rise grid 2.5139305...
    """
    return _optimal_clip_points(tuple(_signed_grid(_as_levels(levels)).tolist()))


def _optimal_clip_signed(points: Sequence[float]) -> float:
    """As `gaussian_optimal_clip` for any sorted signed grid with max |point| = 1."""
    pts = np.asarray(points, np.float64)
    return _optimal_clip_points(tuple(pts.tolist()))


def element_grid(fmt: Any) -> np.ndarray:
    """Sorted non-negative representable magnitudes of an element format (float64).

    Float formats list every finite value (subnormals included); integers ``0..qmax``; ternary
    ``{0, 1}``; binary ``{1}``.
    """
    from bitscale.numerics.formats import BinaryFormat, FloatFormat, IntFormat, TernaryFormat

    if isinstance(fmt, FloatFormat):
        m = fmt.mbits
        vals = [k * 2.0 ** (fmt.emin - m) for k in range(2**m)]  # zero and subnormals
        for e in range(fmt.emin, fmt.emax + 1):
            for k in range(2**m, 2 ** (m + 1)):
                v = k * 2.0 ** (e - m)
                if v <= fmt.max_value:
                    vals.append(v)
        return np.unique(np.asarray(vals, np.float64))
    if isinstance(fmt, IntFormat):
        return np.arange(0, fmt.qmax + 1, dtype=np.float64)
    if isinstance(fmt, TernaryFormat):
        return np.asarray([0.0, 1.0])
    if isinstance(fmt, BinaryFormat):
        return np.asarray([1.0])
    raise ValueError(f"no element grid for {getattr(fmt, 'name', fmt)!r}; expected an integer, "
                     "float, ternary or binary element format")


def gaussian_optimal_clip_for(spec_or_format: Any) -> float:
    """`gaussian_optimal_clip` of a spec's (or element format's) grid.

    ``spec_or_format``: a spec name, a `QuantSpec` or an element format. Float elements use every
    finite value of the format; integers the restricted symmetric range ``+-qmax`` (``int4``:
    ``+-7``), or for ``int_range='full'`` specs the asymmetric grid ``[qmin, qmax]`` in units of
    the ``(qmax - qmin) / 2`` divisor that amax (here: the clip) maps to; MXINT elements ``k/2^(b-2)``
    (the restricted grid). The returned alpha is the clip in units of the group RMS that maps
    onto the grid's largest magnitude (the spec's scale divisor).
    """
    from bitscale.numerics.formats import E8M0Format, IntFormat
    from bitscale.numerics.specs import QuantSpec, resolve_spec

    spec = resolve_spec(spec_or_format) if isinstance(spec_or_format, str) else spec_or_format
    fmt = spec.elem if isinstance(spec, QuantSpec) else spec
    if isinstance(fmt, E8M0Format):
        raise ValueError("e8m0 is a scale format; it has no element grid to clip")
    if isinstance(spec, QuantSpec) and isinstance(fmt, IntFormat):
        if spec.int_range == "asymmetric":
            raise ValueError(f"spec {spec.name!r}: asymmetric integers have no symmetric grid; "
                             "the Gaussian-optimal clip needs int_range 'restricted' or 'full'")
        if spec.int_range == "full" and not spec.pow2_scales:
            div = (fmt.qmax - fmt.qmin) / 2.0
            return _optimal_clip_signed(np.arange(fmt.qmin, fmt.qmax + 1) / div)
    levels = element_grid(fmt)
    return gaussian_optimal_clip(levels / levels[-1])
