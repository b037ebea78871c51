"""Element-wise rounding onto a format's grid, and the codes that store the result.

Every function works on float32 bit patterns (see `bits.py`) so results are exact on ties and in
subnormals on every backend. A power-of-two scale 2^k is folded into the exponent arithmetic
(``scale_exp``): the element is rounded as ``x / 2^k`` and the result returned as ``q * 2^k``
without a float multiply that could flush or round.

Special values (the documented semantics of every format):
* NaN propagates (also for formats without a NaN code: the fake-quant output is NaN).
* finite values beyond the max normal saturate to +-max;
* +-Inf stays Inf for formats with infinities (``ieee`` convention) and saturates to +-max otherwise;
* signed zero is kept; unsigned formats clamp negative values to +0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.numerics import bits as B
from bitscale.numerics.formats import FloatFormat

U32, I32 = B.U32, B.I32


class Rounded(NamedTuple):
    """An element rounded to a float grid: value = sign * q * 2^(qexp + scale_exp)."""

    sign: jax.Array  # uint32, 0 or 0x80000000
    q: jax.Array  # uint32 integer significand, < 2^(mbits+1)
    qexp: jax.Array  # int32 exponent of q's unit, in the scaled domain
    nan: jax.Array  # bool
    inf: jax.Array  # bool: stays Inf (formats with infinities only)


def round_float(
    x: jax.Array, fmt: FloatFormat, rand: jax.Array | None = None, scale_exp: jax.Array | int = 0
) -> Rounded:
    """Rounds float32 ``x / 2^scale_exp`` to ``fmt`` (nearest-even, or stochastic given ``rand``)."""
    sign, mag, sig, exp = B.split(x)
    m = fmt.mbits
    e = exp - scale_exp
    qexp = jnp.maximum(e, fmt.emin) - m
    q = B.round_to_quantum(sig, e, qexp, rand)
    carry = q >= U32(2 ** (m + 1))
    q = jnp.where(carry, q >> 1, q)
    qexp = jnp.where(carry, qexp + 1, qexp)
    top = fmt.emax - m
    over = (qexp > top) | ((qexp == top) & (q > U32(fmt.max_significand))) | B.is_inf_bits(mag)
    q = jnp.where(over, U32(fmt.max_significand), q)
    qexp = jnp.where(over, top, qexp)
    nan = B.is_nan_bits(mag)
    inf = B.is_inf_bits(mag) & fmt.has_inf
    if not fmt.signed:
        neg = sign != 0
        q = jnp.where(neg, U32(0), q)
        inf = inf & ~neg
        sign = jnp.zeros_like(sign)
    return Rounded(sign, q, qexp.astype(I32), nan, inf)


def rounded_to_f32(r: Rounded, scale_exp: jax.Array | int = 0) -> jax.Array:
    """The float32 value of a rounded element, times 2^scale_exp."""
    mag = B.compose(r.q, r.qexp + scale_exp)
    mag = jnp.where(r.inf, U32(B.INF_BITS), mag)
    out = B.from_bits(mag | r.sign)
    return jnp.where(r.nan, jnp.float32(jnp.nan), out)


def encode_float(r: Rounded, fmt: FloatFormat) -> jax.Array:
    """Format codes (uint32) of rounded elements: sign | exponent field | mantissa field.

    NaN: the canonical quiet NaN where the format has one; formats without a NaN code store
    ml_dtypes' choice, a zero whose sign bit is the NaN's sign bit flipped (NaN -> -0).
    """
    m, eb = fmt.mbits, fmt.ebits
    normal = r.q >= U32(2**m)
    field = jnp.where(normal, (r.qexp + m + fmt.bias).astype(U32), U32(0))
    mant = jnp.where(normal, r.q - U32(2**m), r.q)
    mag = (field << m) | mant
    all_ones = U32(2**eb - 1) << m
    if fmt.has_inf:
        mag = jnp.where(r.inf, all_ones, mag)
    if fmt.convention == "ieee":
        nan_mag = all_ones | (U32(1 << (m - 1)) if m else U32(0))
    elif fmt.convention == "fn":
        nan_mag = all_ones | U32(2**m - 1)
    else:
        nan_mag = U32(0)
    mag = jnp.where(r.nan, nan_mag, mag)
    if not fmt.signed:
        return mag
    sign = r.sign >> (31 - eb - m)
    if fmt.convention == "ext":
        sign = jnp.where(r.nan, sign ^ U32(1 << (eb + m)), sign)
    return sign | mag


def decode_float(codes: jax.Array, fmt: FloatFormat) -> Rounded:
    """Inverse of `encode_float` (codes of any unsigned integer dtype)."""
    c = codes.astype(U32)
    m, eb = fmt.mbits, fmt.ebits
    field = (c >> m) & U32(2**eb - 1)
    mant = c & U32(2**m - 1)
    sign = ((c >> (eb + m)) & U32(1)) << 31 if fmt.signed else jnp.zeros_like(c)
    normal = field > 0
    q = jnp.where(normal, mant + U32(2**m), mant)
    qexp = jnp.where(normal, field.astype(I32) - fmt.bias - m, fmt.emin - m)
    top_field = field == U32(2**eb - 1)
    if fmt.convention == "ieee":
        nan = top_field & (mant != 0)
        inf = top_field & (mant == 0)
    elif fmt.convention == "fn":
        nan = top_field & (mant == U32(2**m - 1))
        inf = jnp.zeros_like(nan)
    else:
        nan = inf = jnp.zeros(c.shape, bool)
    return Rounded(sign, q, qexp.astype(I32), nan, inf)


# Formats whose XLA convert is RNE with subnormals on every backend; checked bit for bit against
# `round_float` in tests/numerics/test_element_formats.py.
_NATIVE = {
    (4, 3, "fn", True): jnp.float8_e4m3fn,
    (5, 2, "ieee", True): jnp.float8_e5m2,
    (8, 7, "ieee", True): jnp.bfloat16,
    (5, 10, "ieee", True): jnp.float16,
}


def native_dtype(fmt: FloatFormat):
    """The jnp dtype XLA can convert to exactly like `round_float`, or None."""
    return _NATIVE.get((fmt.ebits, fmt.mbits, fmt.convention, fmt.signed))


def cast_float_native(x: jax.Array, fmt: FloatFormat) -> jax.Array:
    """Nearest-even saturating cast through XLA's own convert (fast path of `cast_float`)."""
    b = B.to_bits(x)
    mag = b & U32(B.ABS_MASK)
    max_bits = U32(int(np.float32(fmt.max_value).view(np.uint32)))
    over = (mag > max_bits) & (mag < U32(B.INF_BITS) if fmt.has_inf else mag <= U32(B.INF_BITS))
    sat = jnp.where(over, (b & U32(B.SIGN_MASK)) | max_bits, b)
    y = B.from_bits(sat).astype(native_dtype(fmt)).astype(jnp.float32)
    return jnp.where(jnp.isnan(x), jnp.float32(jnp.nan), y)


def cast_float(x: jax.Array, fmt: FloatFormat, rand: jax.Array | None = None) -> jax.Array:
    """Saturating fake-quant cast of float32 ``x`` to ``fmt`` (returns float32)."""
    if rand is None and native_dtype(fmt) is not None:
        return cast_float_native(x, fmt)
    return rounded_to_f32(round_float(x, fmt, rand))


# ---------------------------------------------------------------------------------------------
# E8M0


def e8m0_codes_from_f32(x: jax.Array) -> jax.Array:
    """ml_dtypes' float32 -> float8_e8m0fnu cast, saturating: codes (uint32) 0..254, 255 = NaN.

    The rounding keeps the exponent and rounds the 23 mantissa bits to nearest with the exponent's
    lowest bit as tie breaker taken as 1 for normals (so 1.5 * 2^k rounds up) and 0 for subnormals.
    Zero, negative values and NaN give 255; finite overflow and +Inf saturate to 254 (2^127).
    """
    b = B.to_bits(x)
    biased = (b >> 23) & U32(0xFF)
    mant = b & U32(B.MANT_MASK)
    up = (mant > U32(0x400000)) | ((mant == U32(0x400000)) & (biased > 0))
    code = jnp.minimum(biased + up.astype(U32), U32(254))
    bad = ((b & U32(B.ABS_MASK)) == 0) | (b >= U32(B.SIGN_MASK)) | (b > U32(B.INF_BITS))
    return jnp.where(bad, U32(255), code)


def e8m0_exp_to_f32(code: jax.Array) -> jax.Array:
    """E8M0 codes (any int dtype) -> float32 2^(code - 127); code 255 -> NaN."""
    c = code.astype(I32)
    out = B.from_bits(B.pow2_bits(c - 127))
    return jnp.where(c == 255, jnp.float32(jnp.nan), out)


# ---------------------------------------------------------------------------------------------
# Integers (and fixed point)


def round_fixed(x: jax.Array, qexp: int | jax.Array, rand: jax.Array | None,
                scale_exp: jax.Array | int = 0) -> jax.Array:
    """Rounds float32 ``x / 2^scale_exp`` to a signed integer multiple of 2^qexp; returns int32.

    ``|x / 2^scale_exp|`` must be below 2^(qexp + 24) (callers clamp first).
    """
    sign, _, sig, exp = B.split(x)
    q = B.round_to_quantum(sig, exp - scale_exp, jnp.asarray(qexp, I32), rand).astype(I32)
    return jnp.where(sign != 0, -q, q)


def keep_nan(y: jax.Array, x: jax.Array) -> jax.Array:
    """``y`` with NaN wherever ``x`` is NaN (integer grids have no NaN code and a single +0)."""
    return jnp.where(jnp.isnan(x), jnp.float32(jnp.nan), y)


