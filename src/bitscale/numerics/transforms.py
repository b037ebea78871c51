"""Transforms around quantization: orthogonal (Hadamard) rotations and Gaussian pseudo-quantization.

A randomized Hadamard rotation spreads outliers across a block so that a
per-block scale (e.g. MXFP4/NVFP4 micro-scaling) wastes less dynamic range.
Because the rotation is orthogonal it can be undone exactly (up to float32
rounding) and it commutes with inner products: ``<R a, R b> = <a, b>``.

All functions are pure ``jax.numpy`` and work under ``jax.jit`` (with the
integer sizes static), ``jax.vmap`` and ``jax.grad``.

References:
    Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs",
    arXiv:2404.00456.
    Panferov et al., "QuEST: Stable Training of LLMs with 1-Bit Weights and
    Activations", arXiv:2502.05003.
    Ashkboos et al., "HALO: Hadamard-Assisted Lower-Precision Optimization for
    LLMs", arXiv:2501.02625.
    Hu, Luschi & Balanca, "Elucidating the Design Space of FP4 Training",
    arXiv:2509.17791.
    Défossez et al., "Differentiable Model Compression via Pseudo Quantization Noise",
    arXiv:2104.09987 (noise pseudo-quantization).
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.numerics import scaling as S
from bitscale.numerics import validate as V
from bitscale.numerics.quantization import fake_quant_core
from bitscale.numerics.specs import QuantSpec, Spec, resolve_spec

__all__ = [
    "HADAMARD_MAX_N",
    "HADAMARD_BLOCK_SIZES",
    "hadamard_matrix",
    "random_signs",
    "hadamard_transform",
    "gaussian_pseudo_quant",
]

#: Largest order accepted by :func:`hadamard_matrix`.
HADAMARD_MAX_N: int = 4096
#: Block sizes accepted by :func:`hadamard_transform`.
HADAMARD_BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)


def _as_int(value: Any, name: str) -> int:
    """Return ``value`` as a Python int, or raise ValueError naming it."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be a static Python integer, got {value!r} "
            f"(type {type(value).__name__})"
        ) from None


def _is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


@functools.lru_cache(maxsize=16)
def _sylvester_sign_pattern(n: int) -> np.ndarray:
    """Unnormalized +-1 Sylvester Hadamard matrix of order ``n`` (int8)."""
    h = np.ones((1, 1), dtype=np.int8)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    h.setflags(write=False)
    return h


def hadamard_matrix(n: int, dtype: Any = jnp.float32) -> jax.Array:
    """Normalized Sylvester Hadamard matrix ``H_n / sqrt(n)``.

    The result is symmetric and orthogonal (``H @ H.T == I``), with entries
    ``H[i, j] = (-1) ** popcount(i & j) / sqrt(n)``.

    Args:
        n: Matrix order; a power of two in ``[2, 4096]``.
        dtype: Floating output dtype (entries are ``+-1/sqrt(n)`` rounded once).

    Returns:
        An ``(n, n)`` array of ``dtype``.

    Raises:
        ValueError: if ``n`` is not a power of two in ``[2, 4096]`` or
            ``dtype`` is not a floating dtype.

    References:
        J. J. Sylvester (1867); QuaRot, arXiv:2404.00456.
    """
    n = _as_int(n, "n")
    if not (_is_power_of_two(n) and 2 <= n <= HADAMARD_MAX_N):
        raise ValueError(
            f"hadamard_matrix: n={n} is not supported; n must be a power of two "
            f"in [2, {HADAMARD_MAX_N}]"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"hadamard_matrix: dtype must be a floating dtype, got {jnp.dtype(dtype)}"
        )
    np_dtype = jnp.dtype(dtype)
    # +-(1/sqrt(n)) rounded once to the target dtype; negation is exact.
    scale = np.asarray(1.0 / np.sqrt(n), dtype=np_dtype)
    h = np.where(_sylvester_sign_pattern(n) > 0, scale, -scale)
    return jnp.asarray(h, dtype=np_dtype)


def random_signs(key: jax.Array, n: int) -> jax.Array:
    """Draw ``n`` independent Rademacher signs (+-1.0, float32).

    Args:
        key: A ``jax.random`` key (typed or raw uint32).
        n: Number of signs (static, non-negative).

    Returns:
        A float32 array of shape ``(n,)`` with entries in ``{-1.0, +1.0}``.

    References:
        QuaRot, arXiv:2404.00456 (randomized Hadamard, ``H diag(s)``).
    """
    n = _as_int(n, "n")
    if n < 0:
        raise ValueError(f"random_signs: n must be non-negative, got n={n}")
    return jax.random.rademacher(key, (n,), dtype=jnp.float32)


def hadamard_transform(
    x: jax.Array,
    block_size: int,
    *,
    key: jax.Array | None = None,
    axis: int = -1,
    inverse: bool = False,
) -> jax.Array:
    """Randomized block Hadamard rotation of ``x`` along ``axis``.

    ``axis`` is split into contiguous blocks of ``block_size`` elements. With
    ``H = hadamard_matrix(block_size)`` and ``s = random_signs(key,
    block_size)`` (all ones when ``key`` is None), shared by every block:

    * forward:  ``b -> H @ diag(s) @ b``
    * inverse:  ``b -> diag(s) @ H @ b``  (the transpose of the forward map)

    so ``hadamard_transform(hadamard_transform(x, bs, key=k), bs, key=k,
    inverse=True) == x`` up to float32 rounding. Math is done in float32
    (float64 if ``x`` is float64) with ``Precision.HIGHEST``; the result is
    cast back to ``x.dtype``.

    Args:
        x: Floating array.
        block_size: Power of two in ``{16, 32, 64, 128, 256}`` dividing
            ``x.shape[axis]`` (static under ``jit``).
        key: Optional ``jax.random`` key for the random sign flips.
        axis: Axis to rotate.
        inverse: Apply the inverse (transpose) rotation.

    Returns:
        Array with the same shape and dtype as ``x``.

    Raises:
        ValueError: on a non-floating ``x``, an out-of-range ``axis``, an
            unsupported ``block_size`` or one not dividing the axis length.

    References:
        QuaRot, arXiv:2404.00456; QuEST, arXiv:2502.05003;
        HALO, arXiv:2501.02625; "Elucidating the Design Space of FP4
        Training", arXiv:2509.17791.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"hadamard_transform: x must have a floating dtype, got {x.dtype}"
        )
    axis = _as_int(axis, "axis")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"hadamard_transform: axis={axis} is out of range for an array of "
            f"rank {x.ndim} (shape {x.shape})"
        )
    axis %= x.ndim
    length = x.shape[axis]
    block_size = _as_int(block_size, "block_size")
    if block_size not in HADAMARD_BLOCK_SIZES:
        raise ValueError(
            f"hadamard_transform: block_size={block_size} is not supported for "
            f"axis {axis} of length {length}; block_size must be a power of two "
            f"in {list(HADAMARD_BLOCK_SIZES)} that divides the axis length"
        )
    if length % block_size != 0:
        raise ValueError(
            f"hadamard_transform: block_size={block_size} does not divide the "
            f"length {length} of axis {axis} (shape {x.shape}); block_size must "
            f"be a power of two in {list(HADAMARD_BLOCK_SIZES)} that divides the "
            f"axis length"
        )

    compute_dtype = jnp.promote_types(x.dtype, jnp.float32)
    h = hadamard_matrix(block_size, dtype=compute_dtype)
    if key is not None:
        s = random_signs(key, block_size).astype(compute_dtype)
        # Forward M = H diag(s); inverse M^T = diag(s) H.
        m = s[:, None] * h if inverse else h * s[None, :]
    else:
        m = h

    xt = jnp.moveaxis(x, axis, -1).astype(compute_dtype)
    blocks = xt.reshape(xt.shape[:-1] + (length // block_size, block_size))
    # y_i = sum_j M_ij b_j for every block.
    y = jnp.einsum(
        "...j,ij->...i", blocks, m, precision=jax.lax.Precision.HIGHEST
    )
    y = y.reshape(xt.shape)
    return jnp.moveaxis(y, -1, axis).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Gaussian pseudo-quantization


def gaussian_pseudo_quant(x: jax.Array, spec: "str | Spec", key: jax.Array, *, axis: int = -1,
                          std_factor: float = 1.0 / math.sqrt(12.0)) -> jax.Array:
    """``x + std_factor * step(x) * N(0, 1)``: quantization replaced by noise of matching size.

    ``step(x)`` is the spec's local grid spacing at x (the scale for integers, the scaled ulp for
    floats); the default std step/sqrt(12) equals the standard deviation of uniform rounding error.
    The gradient is the identity (the noise is a constant).
    """
    spec = resolve_spec(spec)
    x = V.check_input(x)
    axis = V.check_axis(axis, x.ndim)
    if key is None:
        raise ValueError("gaussian_pseudo_quant needs a PRNG key")
    if isinstance(spec, QuantSpec):
        S.grouping(x.shape, spec, axis)
    _, step = fake_quant_core(jax.lax.stop_gradient(x), spec, axis, None, "step")
    noise = jax.random.normal(key, x.shape, jnp.float32) * step * jnp.float32(std_factor)
    return x + jax.lax.stop_gradient(noise).astype(x.dtype)
