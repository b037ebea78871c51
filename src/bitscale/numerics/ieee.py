"""Float32 arithmetic that gives the same bits on every backend, for the scale computations.

Semantics: IEEE 754 binary32 with round to nearest even, subnormal inputs read as zero and
results below 2^-126 (after rounding with an unbounded exponent) flushed to zero — the float32
arithmetic of XLA:CPU and TPUs (DAZ / FTZ) — and one canonical quiet NaN (``0x7FC00000``).

The hardware does not agree with itself: XLA:GPU divides with PTX ``div.full.f32`` (up to 2 ulp
off), TPUs divide by a refined reciprocal, GPUs keep subnormals where CPUs and TPUs flush them,
LLVM contracts ``a * b + c`` into a fused multiply-add where it likes, and NaN results carry each
backend's sign and payload. So:

* `div` is the hardware division on CPU (correctly rounded there) and, on every other platform
  and inside Pallas kernels (`portable`), a long division on the 24-bit significands in 32-bit
  integers;
* `mul` is the hardware multiply on CPU and, elsewhere, multiplies the two significands, scaled
  into [1, 2) on the bits, in hardware (a normal product, correctly rounded everywhere) and puts
  the exponent back on the bits;
* `add` / `sub` / `pairwise_sum` add in hardware (correctly rounded everywhere) with the flushing
  done explicitly; nothing here multiplies into an add, so there is nothing to contract;
* comparisons and min / max order the bit patterns.

Element rounding and power-of-two scaling are not done here but on the bits (`bits`,
`elementwise`), exactly, subnormals included.

References:
  IEEE Std 754-2019, sections 4.3 (rounding), 6 (infinity, NaN, signed zero), 7.5 (underflow).
  Intel 64 and IA-32 Architectures SDM, vol. 1, 10.2.3.3 (flush-to-zero) and 4.9.1.5 (tininess
    is detected after rounding).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bitscale.numerics import bits as B

U32, I32 = B.U32, B.I32
QNAN_BITS = 0x7FC00000
_EXP_MASK = 0x7F800000
_SIGN_MANT = 0x807FFFFF
_ONE_BITS = 0x3F800000

_PORTABLE = contextvars.ContextVar("bitscale_ieee_portable", default=False)


@contextlib.contextmanager
def portable():
    """Within this block, `div` traces the integer long division on every platform.

    Pallas kernel bodies are traced inside it: their lowerings have no platform switch, and a
    kernel must give the same bits as the XLA path on every backend.
    """
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _pair(a, b) -> tuple[jax.Array, jax.Array]:
    """Both operands as float32 of equal rank, not broadcast: the per-group work on a scale
    operand stays per group instead of being repeated for every element."""
    a, b = _f32(a), _f32(b)
    n = max(a.ndim, b.ndim)
    return (a.reshape((1,) * (n - a.ndim) + a.shape), b.reshape((1,) * (n - b.ndim) + b.shape))


def _field(b: jax.Array) -> jax.Array:
    """Biased exponent field (int32) of float32 bits."""
    return ((b >> 23) & U32(0xFF)).astype(I32)


def flush_subnormals(x: jax.Array) -> jax.Array:
    """``x`` with float32 subnormals replaced by zeros of the same sign (on the bits)."""
    b = B.to_bits(_f32(x))
    return B.from_bits(jnp.where((b & U32(_EXP_MASK)) == 0, b & U32(B.SIGN_MASK), b))


def canonical_nan(y: jax.Array) -> jax.Array:
    """``y`` with every NaN replaced by the canonical quiet NaN (``0x7FC00000``)."""
    return jnp.where(jnp.isnan(y), jnp.float32(jnp.nan), y)  # numpy's NaN is 0x7FC00000


def _assemble(sign: jax.Array, e: jax.Array, m: jax.Array) -> jax.Array:
    """float32 bits of ``sign * m * 2^(e - 23)`` for a significand ``m`` in [2^23, 2^24]; below
    2^-126 it is a signed zero, above the range an infinity."""
    # Biased exponent field + 2 (so that it stays non-negative) above the significand; a
    # significand of 2^24 (a rounding carry) moves it up by one.
    t = ((jnp.clip(e + 128, 0, 257).astype(U32)) << 23) + m.astype(U32)
    mag = jnp.where(t < U32(3 << 23), U32(0),
                    jnp.where(t >= U32(257 << 23), U32(B.INF_BITS), t - U32(2 << 23)))
    return mag | sign


def _mul_portable(a: jax.Array, b: jax.Array) -> jax.Array:
    ba, bb = B.to_bits(a), B.to_bits(b)
    fa, fb = _field(ba), _field(bb)
    # sign * 1.mant of each operand times each other: a normal product in [1, 4), correctly
    # rounded by every backend, whose exponent field is 127 or 128.
    p = B.to_bits(B.from_bits((ba & U32(_SIGN_MANT)) | U32(_ONE_BITS))
                  * B.from_bits((bb & U32(_SIGN_MANT)) | U32(_ONE_BITS)))
    e = fa + fb - 254 + _field(p) - 127
    m = (p & U32(B.MANT_MASK)) | U32(B.IMPLICIT_BIT)
    out = _assemble(p & U32(B.SIGN_MASK), e, m)
    zero = (fa == 0) | (fb == 0)
    out = jnp.where(zero, (ba ^ bb) & U32(B.SIGN_MASK), out)
    special = (fa == 255) | (fb == 255)  # Inf or NaN: the hardware product of the flushed inputs
    hw = B.to_bits(flush_subnormals(a) * flush_subnormals(b))
    return canonical_nan(B.from_bits(jnp.where(special, hw, out)))


def _mul_hardware(a: jax.Array, b: jax.Array) -> jax.Array:
    return canonical_nan(a * b)


def mul(a, b) -> jax.Array:
    """``a * b`` in float32, correctly rounded with DAZ / FTZ, identical on every backend.

    On XLA:CPU that is the hardware multiply (SSE/AVX with FTZ and DAZ set detect tininess after
    rounding); elsewhere, and under `portable`, the significands are multiplied in [1, 2) and
    the exponent is put back on the bits.
    """
    a, b = _pair(a, b)
    if _PORTABLE.get():
        return _mul_portable(a, b)
    return lax.platform_dependent(a, b, cpu=_mul_hardware, default=_mul_portable)


def _round_quotient(sign, q, r_nonzero, e) -> jax.Array:
    """float32 bits of ``sign * (q + f) * 2^e`` (q in [2^28, 2^30), 0 < f < 1 iff r_nonzero)
    rounded to nearest even with an unbounded exponent, then flushed or overflowed."""
    lead = (q >= U32(1 << 29)).astype(I32) + 28
    shift = (lead - 23).astype(U32)
    m = q >> shift
    rem = q & ((U32(1) << shift) - U32(1))
    half = U32(1) << (shift - U32(1))
    up = (rem > half) | ((rem == half) & (r_nonzero | ((m & U32(1)) == U32(1))))
    return _assemble(sign, lead + e, m + up.astype(U32))


def _div_portable(a: jax.Array, b: jax.Array) -> jax.Array:
    ba, bb = B.to_bits(a), B.to_bits(b)
    fa, fb = _field(ba), _field(bb)
    ga = (ba & U32(B.MANT_MASK)) | U32(B.IMPLICIT_BIT)
    gb = (bb & U32(B.MANT_MASK)) | U32(B.IMPLICIT_BIT)
    # Long division in base 2^8: 30 quotient bits of ga * 2^29 / gb (both in [2^23, 2^24));
    # each remainder is below gb < 2^24, so shifting it by 8 bits cannot overflow.
    q, r = ga // gb, ga % gb
    for bits in (8, 8, 8, 5):
        t = r << bits
        q, r = (q << bits) | (t // gb), t % gb
    sign = (ba ^ bb) & U32(B.SIGN_MASK)
    out = _round_quotient(sign, q, r != 0, fa - fb - 29)
    zero_a, zero_b = fa == 0, fb == 0
    out = jnp.where(zero_a | (fb == 255), sign, out)
    out = jnp.where(zero_b | (fa == 255), sign | U32(B.INF_BITS), out)
    nan = ((ba & U32(B.ABS_MASK)) > U32(B.INF_BITS)) | ((bb & U32(B.ABS_MASK)) > U32(B.INF_BITS))
    nan = nan | (zero_a & zero_b) | ((fa == 255) & (fb == 255))
    return B.from_bits(jnp.where(nan, U32(QNAN_BITS), out))


def _div_hardware(a: jax.Array, b: jax.Array) -> jax.Array:
    # XLA rewrites a division by a constant into a multiplication by its reciprocal (off by an
    # ulp for about a third of inputs); a divisor that depends on ``a`` (through a select that
    # differs only for one NaN pattern of ``a``, where the quotient is NaN either way) keeps it.
    b = jnp.where(B.to_bits(a) == U32(0xFFFFFFFF), jnp.float32(1), b)
    return canonical_nan(a / b)


def div(a, b) -> jax.Array:
    """``a / b`` in float32, correctly rounded with DAZ / FTZ, identical on every backend.

    On XLA:CPU that is the hardware division; elsewhere, and under `portable`, a long division
    in integers (a ``platform_dependent`` switch picks the branch when the program is lowered).
    """
    a, b = _pair(a, b)
    if _PORTABLE.get():
        return _div_portable(a, b)
    return lax.platform_dependent(a, b, cpu=_div_hardware, default=_div_portable)


def add(a, b) -> jax.Array:
    """``a + b`` in float32, correctly rounded with DAZ / FTZ, identical on every backend.

    A sum of two normal numbers that lands below 2^-126 is exact, so flushing it after the
    hardware add is what a flushing backend does in the add.
    """
    return canonical_nan(flush_subnormals(flush_subnormals(a) + flush_subnormals(b)))


def sub(a, b) -> jax.Array:
    """``a - b`` in float32; see `add`."""
    return canonical_nan(flush_subnormals(flush_subnormals(a) - flush_subnormals(b)))


def pairwise_sum(x: jax.Array, axis: int = -1, *, keepdims: bool = False,
                 barrier: bool = True) -> jax.Array:
    """Sum along ``axis`` in a fixed pairwise order with `add`: the same bits on every backend.

    The axis is padded with +0 to a power of two and adjacent pairs are added level by level
    (``((x0 + x1) + (x2 + x3)) + ...``). For non-negative terms this is the IEEE pairwise sum
    unless the total is within a factor of ~2^24 of the subnormal range. ``barrier`` puts an
    optimization barrier every four levels so that XLA cannot fuse a long reduction into one
    serial loop (leave it False inside Pallas kernels).
    """
    x = flush_subnormals(jnp.moveaxis(_f32(x), axis, -1))
    n = x.shape[-1]
    if n == 0:
        out = jnp.zeros(x.shape[:-1], jnp.float32)
    else:
        size = 1 << max(n - 1, 0).bit_length()
        if size != n:
            x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - n)])
        level = 0
        while x.shape[-1] > 1:
            pairs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
            x = flush_subnormals(pairs[..., 0] + pairs[..., 1])
            level += 1
            if barrier and level % 4 == 0 and x.shape[-1] > 1:
                x = lax.optimization_barrier(x)
        out = x[..., 0]
    if keepdims:
        out = jnp.expand_dims(out, axis if axis >= 0 else out.ndim + 1 + axis)
    return out


# ---------------------------------------------------------------------------------------------
# Comparisons on the bit patterns (exact: a hardware compare may read subnormals as zero)


def _ordered(x: jax.Array) -> jax.Array:
    """int32 keys whose integer order is the float order of float32 ``x`` (-0 before +0)."""
    b = B.to_bits(_f32(x))
    flip = jnp.where(b >= U32(B.SIGN_MASK), U32(B.ABS_MASK), U32(0))
    return lax.bitcast_convert_type(b ^ flip, I32)


def _unordered(k: jax.Array) -> jax.Array:
    b = lax.bitcast_convert_type(k, U32)
    flip = jnp.where(b >= U32(B.SIGN_MASK), U32(B.ABS_MASK), U32(0))
    return B.from_bits(b ^ flip)


def reduce_max(x: jax.Array, axis=None, *, keepdims: bool = False) -> jax.Array:
    """Largest element along ``axis``, compared as exact float32 values (subnormals included,
    -0 < +0). NaN inputs are the caller's to handle (they order above +Inf or below -Inf)."""
    return _unordered(jnp.max(_ordered(x), axis=axis, keepdims=keepdims))


def reduce_min(x: jax.Array, axis=None, *, keepdims: bool = False) -> jax.Array:
    """Smallest element along ``axis``; see `reduce_max`."""
    return _unordered(jnp.min(_ordered(x), axis=axis, keepdims=keepdims))


def _normal_constant(b) -> bool:
    """Whether ``b`` is a Python / numpy scalar that is a normal float32 (not 0, subnormal,
    Inf or NaN): a hardware compare against it is exact on every backend."""
    if isinstance(b, jax.Array) or not isinstance(b, (int, float, np.floating, np.integer)):
        return False
    v = np.float32(b)
    return bool(np.isfinite(v) and abs(v) >= np.float32(2.0**-126))


def _extremum(a, b, pick_a) -> jax.Array:
    if _normal_constant(b):
        a = _f32(a)
        c = jnp.float32(b)
        return canonical_nan(jnp.where(jnp.isnan(a) | pick_a(a, c), a, c))
    a, b = jnp.broadcast_arrays(_f32(a), _f32(b))
    out = jnp.where(pick_a(_ordered(a), _ordered(b)), a, b)
    return canonical_nan(jnp.where(jnp.isnan(a) | jnp.isnan(b), jnp.float32(jnp.nan), out))


def maximum(a, b) -> jax.Array:
    """Elementwise IEEE 754-2019 ``maximum``: NaN if either is NaN, +0 above -0, subnormals
    compared exactly (hardware max may flush them or drop a NaN, by backend)."""
    return _extremum(a, b, lambda u, v: u >= v)


def minimum(a, b) -> jax.Array:
    """Elementwise IEEE 754-2019 ``minimum``; see `maximum`."""
    return _extremum(a, b, lambda u, v: u <= v)


def less_equal(a, b) -> jax.Array:
    """``a <= b`` compared as exact float32 values (False if either is NaN; -0 == +0)."""
    a, b = jnp.broadcast_arrays(_f32(a), _f32(b))
    ka, kb = _ordered(a), _ordered(b)
    zeros = ((B.to_bits(a) | B.to_bits(b)) & U32(B.ABS_MASK)) == 0
    return ((ka <= kb) | zeros) & ~jnp.isnan(a) & ~jnp.isnan(b)
