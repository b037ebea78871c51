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
from bitscale.numerics.formats import FLOAT_FORMATS, FloatFormat

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


def cast_float(x: jax.Array, fmt: FloatFormat, rand: jax.Array | None = None) -> jax.Array:
    """Saturating fake-quant cast of float32 ``x`` to ``fmt`` (returns float32).

    Never through XLA's own convert: XLA:GPU deletes a ``convert(f32 -> narrow) -> convert(narrow
    -> f32)`` pair under its default ``--xla_allow_excess_precision``, which would leave ``x``
    unrounded there. Nearest rounding takes `cast_float_nearest`, stochastic rounding
    `round_float`; both equal ml_dtypes' casts of the saturated input bit for bit.
    """
    if rand is None:
        return cast_float_nearest(x, fmt)
    return rounded_to_f32(round_float(x, fmt, rand))


def cast_float_nearest(x: jax.Array, fmt: FloatFormat, saturate: bool = True) -> jax.Array:
    """`round_float` + `rounded_to_f32` with nearest rounding, in a third of the operations.

    Magnitudes in the format's normal range are rounded on their bit pattern: adding half a unit
    in the last place (minus one unless the kept part is odd) and clearing the dropped bits is
    round-to-nearest-even, and a carry moves into the exponent. Magnitudes below the smallest
    normal are rounded to the subnormal step 2^(emin - mbits) as an integer count of steps.
    Formats with 8 exponent bits share float32's subnormal grid, so the bit rounding covers all
    their magnitudes. (Rounding with ``(|x| + C) - C`` would be shorter, but XLA folds it to
    ``|x|``.) ``saturate=False`` sends finite overflow to Inf (formats with infinities), as a
    hardware conversion does.
    """
    b = B.to_bits(x)
    sign = b & U32(B.SIGN_MASK)
    mag = b & U32(B.ABS_MASK)
    drop = 23 - fmt.mbits
    if drop:
        # With no mantissa bits a normal's kept significand is the implicit 1: odd, so ties
        # round up; a float32 subnormal's is 0 (even).
        kept_odd = ((mag >> drop) & U32(1) if fmt.mbits else
                    (mag >= U32(B.IMPLICIT_BIT)).astype(U32))
        rounded = (mag + U32((1 << (drop - 1)) - 1) + kept_odd) & U32(
            ~((1 << drop) - 1) & 0xFFFFFFFF)
    else:
        rounded = mag
    if fmt.ebits < 8:
        step = fmt.emin - fmt.mbits  # log2 of the subnormal step, >= -85 here
        field = (mag >> 23).astype(I32)
        sig = (mag & U32(B.MANT_MASK)) | U32(B.IMPLICIT_BIT)
        # |x| = sig * 2^(field - 150); steps = |x| / 2^step, rounded (float32 subnormals: 0).
        shift = jnp.clip(step + 150 - field, 0, 31)
        steps = jnp.where(field == 0, U32(0), B.shift_round_even(sig, shift))
        sub = B.to_bits(steps.astype(jnp.float32)) + U32((step << 23) & 0xFFFFFFFF)
        sub = jnp.where(steps == 0, U32(0), sub)
        min_normal = U32(int(np.float32(fmt.min_normal).view(np.uint32)))
        rounded = jnp.where(mag < min_normal, sub, rounded)
    max_bits = U32(int(np.float32(fmt.max_value).view(np.uint32)))
    if saturate or not fmt.has_inf:
        rounded = jnp.minimum(rounded, max_bits)  # saturate (also a carry past the top)
    else:
        rounded = jnp.where(rounded > max_bits, U32(B.INF_BITS), rounded)
    if fmt.has_inf:
        rounded = jnp.where(mag == U32(B.INF_BITS), U32(B.INF_BITS), rounded)
    out = rounded | sign if fmt.signed else jnp.where(sign != 0, U32(0), rounded)
    return jnp.where(B.is_nan_bits(mag), jnp.float32(jnp.nan), B.from_bits(out))


# ---------------------------------------------------------------------------------------------
# Input and output dtypes, converted on the bits (no float convert for XLA to elide or flush)


def _io_format(dtype) -> FloatFormat:
    return FLOAT_FORMATS[{"bfloat16": "bf16", "float16": "fp16"}[jnp.dtype(dtype).name]]


def to_f32(x: jax.Array) -> jax.Array:
    """float32 / bfloat16 / float16 ``x`` as float32, exactly (subnormals and NaN payloads kept)."""
    dtype = jnp.dtype(x.dtype)
    if dtype == jnp.float32:
        return x
    codes = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(U32)
    if dtype == jnp.bfloat16:
        return B.from_bits(codes << 16)
    return rounded_to_f32(decode_float(codes, _io_format(dtype)))


def from_f32(y: jax.Array, dtype, saturate: bool = True) -> jax.Array:
    """float32 ``y`` rounded to nearest even into ``dtype`` (float32 / bfloat16 / float16).

    Finite values beyond the dtype's range saturate to its largest finite value (fake-quant
    outputs never exceed their input's range by more than rounding), or become Inf with
    ``saturate=False`` (what a hardware conversion does); Inf stays Inf and NaN becomes the
    dtype's canonical quiet NaN.
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return y
    r = B.to_bits(cast_float_nearest(y, _io_format(dtype), saturate))  # on the dtype's grid
    sign = (r >> 16) & U32(0x8000)
    mag = r & U32(B.ABS_MASK)
    if dtype == jnp.bfloat16:
        codes = r >> 16
    else:  # float16: rebias normals (bias 15), count subnormals in steps of 2^-24
        field = mag >> 23
        normal = (mag >> 13) - U32(112 << 10)
        sub = ((mag & U32(B.MANT_MASK)) | U32(B.IMPLICIT_BIT)) >> jnp.clip(
            U32(126) - field, 0, 31)
        codes = jnp.where(mag >= U32(0x38800000), normal, jnp.where(mag == 0, U32(0), sub))
        codes = jnp.where(mag == U32(B.INF_BITS), U32(0x7C00), codes)
        codes = jnp.where(mag > U32(B.INF_BITS), U32(0x7E00), codes) | sign
    return jax.lax.bitcast_convert_type(codes.astype(jnp.uint16), dtype)


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


def round_half_even_i32(v: jax.Array) -> jax.Array:
    """``jnp.round(v)`` (nearest, ties to even) as int32, saturated to +-2^22; NaN gives 0 (what
    XLA's float -> int conversion gives). On the bits: Triton has no lowering for ``round``."""
    q = round_fixed(jnp.clip(v, -2.0**22, 2.0**22), 0, None)
    return jnp.where(jnp.isnan(v), 0, q)


def keep_nan(y: jax.Array, x: jax.Array) -> jax.Array:
    """``y`` with NaN wherever ``x`` is NaN (integer grids have no NaN code and a single +0)."""
    return jnp.where(jnp.isnan(x), jnp.float32(jnp.nan), y)


