"""The unbiased pass@k estimator, accurate in float32 for any n (jnp, works under jit/vmap).

pass@k = 1 - C(n-c, k) / C(n, k) is the probability that a random k-subset of n samples, c of them
correct, contains a correct one. The ratio is a product that is symmetric in c and k:

    C(n-c, k) / C(n, k) = prod_{t=0}^{m-1} (1 - q / (n - t)),   m = min(c, k),  q = max(c, k),

so its log is a sum of m terms ``log1p(-q / (n - t))``, all negative (no cancellation). We sum them
in blocks of 256 (explicit pairwise tree inside a block, Kahan summation across blocks), stop once
the sum is below -40 (``exp(-40) = 4e-18``: pass@k already rounds to 1 in float64), and return
``-expm1(sum)``. Only about ``sqrt(40 n)`` terms are ever summed (at most 633 for n = 10,000),
because after t terms the sum is at most ``-t q / n``. The relative error of the sum is a few
ulps (per-term rounding plus ``log2(256)`` levels of pairwise summation), so the absolute error of
pass@k is below ``|S| exp(S) * 12 eps <= 3e-7`` in float32. Integer arithmetic stays in the int
dtype, so n is exact up to the int range, not just to 2**24.

An lgamma difference would be shorter but loses everything in float32: ``lgamma(10001) = 8.2e4``
has an ulp of 0.008.

References:
    Chen et al., "Evaluating Large Language Models Trained on Code" (the unbiased pass@k
    estimator), arXiv:2107.03374.
    Higham, "The Accuracy of Floating Point Summation", SIAM J. Sci. Comput. 14(4), 1993.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.tts._checks import concrete, first_bad

__all__ = ["pass_at_k", "pass_at_k_np"]

_BLOCK = 256  # a power of two: the in-block pairwise tree halves it log2(_BLOCK) times
_LOG_FLOOR = -40.0
_MIN_BUCKET = 1024  # eager calls pad to >= this many entries: one compile serves them all


def _check_concrete(n: np.ndarray, c: np.ndarray, k: np.ndarray, fn: str) -> None:
    for name, v in (("n", n), ("c", c), ("k", k)):
        if v.size == 0:
            raise ValueError(f"{fn}: {name} is empty; expected integers")
        if np.issubdtype(v.dtype, np.floating) and not np.all(v == np.round(v)):
            raise ValueError(f"{fn}: {name} must be integers, got {first_bad(v != np.round(v), v)}")
        if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
            raise ValueError(f"{fn}: {name} must be integers, got dtype {v.dtype}")
    try:
        n, c, k = np.broadcast_arrays(n, c, k)
    except ValueError:
        raise ValueError(f"{fn}: n, c and k must broadcast together, got shapes {n.shape}, "
                         f"{c.shape}, {k.shape}") from None
    if np.any(n < 1):
        raise ValueError(f"{fn}: n (samples per problem) must be >= 1, got n={first_bad(n < 1, n)}")
    if np.any(k < 1):
        raise ValueError(f"{fn}: k must be >= 1, got k={first_bad(k < 1, k)}")
    if np.any(k > n):
        raise ValueError(f"{fn}: k must be <= n (can't pick k of n samples), got k, n = "
                         f"{first_bad(k > n, k, n)}")
    bad = (c < 0) | (c > n)
    if np.any(bad):
        raise ValueError(f"{fn}: c (correct samples) must satisfy 0 <= c <= n, got c, n = "
                         f"{first_bad(bad, c, n)}")


def _as_int(x: Any, int_dtype, fn: str, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        if isinstance(x, jax.core.Tracer):
            raise TypeError(f"{fn}: traced {name} must have an integer dtype, got {x.dtype}")
        x = jnp.round(x)
    return x.astype(int_dtype)


def _pairwise_sum(x: jax.Array) -> jax.Array:
    """Sum over the last axis (length a power of two) by an explicit pairwise tree."""
    while x.shape[-1] > 1:
        h = x.shape[-1] // 2
        x = x[..., :h] + x[..., h:]
    return x[..., 0]


def pass_at_k(n: Any, c: Any, k: Any) -> jax.Array:
    """Unbiased pass@k = 1 - C(n-c, k)/C(n, k) for broadcast integer arrays n, c, k.

    Exactly 1 where ``n - c < k``, exactly 0 where ``c = 0``. The result is float32 (float64 when
    ``jax_enable_x64`` is on). Concrete inputs are validated (``1 <= k <= n``, ``0 <= c <= n``,
    integers) with a ValueError; under `jit`/`vmap` invalid entries give NaN instead.

    References:
        Chen et al., arXiv:2107.03374 (the estimator); this module's docstring (the float32 error).
    """
    fn = "pass_at_k"
    int_dtype = jnp.result_type(int)
    vals = [concrete(v) for v in (n, c, k)]
    if all(v is not None for v in vals):
        # Eager: validate, then run the compiled program on a flat power-of-two-padded copy so
        # that calls with different shapes share a few compilations.
        _check_concrete(*vals, fn)
        top = max(float(np.max(v)) for v in vals)
        if top > np.iinfo(int_dtype).max:
            raise ValueError(f"{fn}: values up to {top:.0f} overflow {np.dtype(int_dtype).name}; "
                             f"enable jax_enable_x64 or use pass_at_k_np")
        flat = [np.round(v).astype(int_dtype).ravel() for v in np.broadcast_arrays(*vals)]
        size = flat[0].size
        pad = max(_MIN_BUCKET, 1 << (size - 1).bit_length()) - size
        flat = [np.pad(v, (0, pad), constant_values=1) for v in flat]
        out = np.asarray(_pass_at_k_jit(*flat))[:size]
        return jnp.asarray(out.reshape(np.broadcast_shapes(*(v.shape for v in vals))))
    n, c, k = (_as_int(v, int_dtype, fn, name) for v, name in ((n, "n"), (c, "c"), (k, "k")))
    return _pass_at_k_jit(*jnp.broadcast_arrays(n, c, k))


@jax.jit
def _pass_at_k_jit(n: jax.Array, c: jax.Array, k: jax.Array) -> jax.Array:
    """pass_at_k on broadcast int arrays, as one compiled program (eager calls hit its cache)."""
    int_dtype, ftype = n.dtype, jnp.result_type(float)
    valid = (n >= 1) & (k >= 1) & (k <= n) & (c >= 0) & (c <= n)
    saturated = n - c < k  # every k-subset contains a correct sample
    m = jnp.where(valid & ~saturated, jnp.minimum(c, k), 0)
    q = jnp.maximum(c, k).astype(ftype)[..., None]
    offsets = jnp.arange(_BLOCK, dtype=int_dtype).reshape((1,) * n.ndim + (_BLOCK,))
    zero = jnp.zeros(n.shape, ftype)

    def cond(state):
        start, s, _ = state
        return jnp.any((start < m) & (s > _LOG_FLOOR))

    def body(state):
        start, s, comp = state
        t = start + offsets
        active = t < m[..., None]
        denom = jnp.where(active, n[..., None] - t, 1).astype(ftype)
        terms = jnp.log1p(-jnp.where(active, q / denom, 0.0))
        y = _pairwise_sum(terms) - comp  # Kahan: carry the rounding error of the running sum
        total = s + y
        comp = (total - s) - y
        return start + _BLOCK, total, comp

    _, log_ratio, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), int_dtype), zero, zero))
    out = jnp.where(saturated, 1.0, jnp.where(c == 0, 0.0, -jnp.expm1(log_ratio))).astype(ftype)
    return jnp.where(valid, out, jnp.nan).astype(ftype)


def pass_at_k_np(n: Any, c: Any, k: Any) -> np.ndarray:
    """Host (numpy, float64) pass@k; same semantics and checks as `pass_at_k`, always eager."""
    fn = "pass_at_k_np"
    n, c, k = (np.asarray(v) for v in (n, c, k))
    _check_concrete(n, c, k, fn)
    n, c, k = (np.round(v).astype(np.int64) for v in np.broadcast_arrays(n, c, k))
    saturated = n - c < k
    m = np.where(saturated, 0, np.minimum(c, k))
    q = np.maximum(c, k).astype(np.float64)[..., None]
    s = np.zeros(n.shape)
    start = 0
    while np.any((start < m) & (s > _LOG_FLOOR)):
        t = start + np.arange(_BLOCK)
        active = t < m[..., None]
        denom = np.where(active, n[..., None] - t, 1).astype(np.float64)
        s = s + np.sum(np.log1p(-np.where(active, q / denom, 0.0)), axis=-1)  # numpy: pairwise
        start += _BLOCK
    return np.where(saturated, 1.0, np.where(c == 0, 0.0, -np.expm1(s)))
