"""Bit-level float32 arithmetic shared by every format: decomposition, rounding, reconstruction.

XLA flushes float32 subnormals in arithmetic and comparisons on CPU (and TPUs have none), so every
step whose result must be exact on subnormals is done here on the integer bit pattern. A finite
non-zero float32 magnitude is written as ``sig * 2^(exp - 23)`` with ``sig`` in [2^23, 2^24): the
significand is normalized even for float32 subnormal inputs.

Random bits for stochastic rounding come from a keyed counter hash of each element's row-major
index, so a Pallas kernel can compute the same bits in-kernel from the key and the element index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

U32 = jnp.uint32
I32 = jnp.int32

SIGN_MASK = 0x80000000
ABS_MASK = 0x7FFFFFFF
INF_BITS = 0x7F800000
MANT_MASK = 0x007FFFFF
IMPLICIT_BIT = 0x00800000


def to_bits(x: jax.Array) -> jax.Array:
    """float32 -> uint32 bit pattern."""
    return lax.bitcast_convert_type(x, U32)


def from_bits(b: jax.Array) -> jax.Array:
    """uint32 bit pattern -> float32."""
    return lax.bitcast_convert_type(b, jnp.float32)


def split(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Returns (sign bit, magnitude bits, sig, exp) of a float32 array.

    ``sig`` (uint32) is in [2^23, 2^24) for finite non-zero inputs and 0 for zeros; ``exp`` (int32)
    is floor(log2|x|), exact also for float32 subnormals. Inf/NaN give meaningless sig/exp: callers
    select them away using the magnitude bits.
    """
    b = to_bits(x)
    sign = b & U32(SIGN_MASK)
    mag = b & U32(ABS_MASK)
    biased = (mag >> 23).astype(I32)
    mant = mag & U32(MANT_MASK)
    # Subnormal: mant < 2^23 converts exactly to float32; its exponent field gives the leading bit.
    lead = (to_bits(mant.astype(jnp.float32)) >> 23).astype(I32) - 127
    sub_sig = mant << jnp.clip(23 - lead, 0, 31).astype(U32)
    is_sub = biased == 0
    sig = jnp.where(is_sub, sub_sig, mant | U32(IMPLICIT_BIT))
    exp = jnp.where(is_sub, lead - 149, biased - 127)
    sig = jnp.where(mag == 0, U32(0), sig)
    return sign, mag, sig, exp


def is_nan_bits(mag: jax.Array) -> jax.Array:
    return mag > U32(INF_BITS)


def is_inf_bits(mag: jax.Array) -> jax.Array:
    return mag == U32(INF_BITS)


def shift_round_even(v: jax.Array, shift: jax.Array) -> jax.Array:
    """``v / 2^shift`` rounded to nearest, ties to even, for uint32 v <= 2^24 and shift >= 0."""
    s = jnp.clip(shift, 0, 31).astype(U32)
    q = v >> s
    rem = v & ((U32(1) << s) - U32(1))
    half = jnp.where(s > 0, U32(1) << (jnp.maximum(s, U32(1)) - U32(1)), U32(0))
    up = (rem > half) | ((rem == half) & (s > 0) & ((q & U32(1)) == U32(1)))
    return q + up.astype(U32)


def round_to_quantum(
    sig: jax.Array, exp: jax.Array, qexp: jax.Array, rand: jax.Array | None
) -> jax.Array:
    """Rounds ``sig * 2^(exp - 23)`` to an integer multiple ``q`` of ``2^qexp``; returns q (uint32).

    Requires qexp >= exp - 23 (no left shifts). ``rand is None`` means round-to-nearest-even, exact at
    ties; otherwise ``rand`` (uint32, uniform) selects stochastic rounding with
    P(round up) = discarded part / 2^qexp, exact up to 2^-32.
    """
    shift = (qexp - exp + 23).astype(I32)
    if rand is None:
        return shift_round_even(sig, shift)
    s = jnp.clip(shift, 0, 31).astype(U32)
    q = sig >> s
    rem = sig & ((U32(1) << s) - U32(1))
    # Align the discarded fraction to 32 bits: frac32 / 2^32 == rem / 2^shift.
    left = jnp.clip(32 - shift, 0, 31).astype(U32)
    right = jnp.clip(shift - 32, 0, 31).astype(U32)
    frac32 = jnp.where(shift <= 32, rem << left, rem >> right)
    return q + (rand < frac32).astype(U32)


def compose(q: jax.Array, qexp: jax.Array) -> jax.Array:
    """Magnitude bits (uint32) of the float32 nearest to ``q * 2^qexp``; exact when representable.

    ``q`` (uint32) < 2^24. Overflow gives +Inf bits. Results below float32's subnormal grid are
    rounded to it (nearest-even).
    """
    f = to_bits(q.astype(jnp.float32))
    lead = (f >> 23).astype(I32) - 127  # floor(log2 q) for q >= 1
    new_biased = lead + 127 + qexp
    normal = f + (qexp.astype(I32) << 23).astype(U32)
    # Subnormal result: q * 2^qexp = (q * 2^(qexp + 149)) * 2^-149.
    up_shift = qexp + 149
    sub_left = q << jnp.clip(up_shift, 0, 31).astype(U32)
    sub = jnp.where(up_shift >= 0, sub_left, shift_round_even(q, -up_shift))
    out = jnp.where(new_biased >= 255, U32(INF_BITS), jnp.where(new_biased >= 1, normal, sub))
    return jnp.where(q == 0, U32(0), out)


def pow2_bits(e: jax.Array) -> jax.Array:
    """float32 bits of 2^e for integer e in [-149, 127] (subnormal powers included)."""
    e = e.astype(I32)
    normal = ((e + 127).astype(U32) << 23)
    sub = U32(1) << jnp.clip(e + 149, 0, 31).astype(U32)
    return jnp.where(e >= -126, normal, sub)


# ---------------------------------------------------------------------------------------------
# Counter-based random bits.

_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _mix32(h: jax.Array) -> jax.Array:
    """lowbias32 integer finalizer (C. Wellons, "Prospecting for Hash Functions", 2018)."""
    h = h ^ (h >> 16)
    h = h * U32(_M1)
    h = h ^ (h >> 15)
    h = h * U32(_M2)
    return h ^ (h >> 16)


def hash_counter(index: jax.Array, k0: jax.Array, k1: jax.Array) -> jax.Array:
    """Keyed 32-bit hash of uint32 element indices: three lowbias32 rounds with key injection.

    This exact function is the contract between `bitscale` and the Pallas kernels.
    """
    h = _mix32(index ^ k0)
    h = _mix32(h + (k1 ^ U32(_GOLDEN)))
    return _mix32(h ^ k0 ^ (k1 >> 7))


def key_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two uint32 words of a `jax.random` key (typed key or raw uint32 key data)."""
    if not hasattr(key, "dtype"):
        raise TypeError(
            "key must be a jax.random key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
            f"got {type(key).__name__}: {key!r}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"expected a single PRNG key, got a key array of shape {key.shape}")
        data = jax.random.key_data(key)
    elif key.dtype == jnp.uint32 and key.ndim == 1 and key.shape[0] >= 2:
        data = key
    else:
        raise TypeError(
            "key must be a jax.random key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
            f"got dtype {key.dtype} shape {key.shape}")
    data = jnp.ravel(data).astype(U32)
    return data[0], data[-1]


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 random words for an array of ``shape``: hash of (key, row-major flat index).

    Indices are 32-bit: arrays of 2^32 elements or more repeat their bits.
    """
    k0, k1 = key_words(key)
    size = 1
    for d in shape:
        size *= d
    idx = lax.iota(U32, size).reshape(shape)
    return hash_counter(idx, k0, k1)
