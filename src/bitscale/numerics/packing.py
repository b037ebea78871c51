"""Bit-packing of low-bit integer codes into ``uint8`` arrays.

Codes are packed along the last axis, little-endian within each byte: code
``i`` occupies bits ``[i*bits, (i+1)*bits)`` of a little-endian bit stream and
byte ``j`` holds stream bits ``[8j, 8j+8)``. For 4-bit codes this is
``byte = c0 | (c1 << 4)`` (the usual int4 / fp4x2 layout). A last axis whose
codes do not fill whole bytes is padded with zero codes.

All functions are pure ``jnp`` with static shape logic, so they can be used
under ``jax.jit``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ACCEPTED_BITS", "pack_codes", "unpack_codes", "packed_length"]

ACCEPTED_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 16)


def _check_bits(bits: int) -> int:
    if (
        isinstance(bits, (bool, np.bool_))
        or not isinstance(bits, (int, np.integer))
        or int(bits) not in ACCEPTED_BITS
    ):
        raise ValueError(f"bits must be one of {ACCEPTED_BITS}; got {bits!r}")
    return int(bits)


def _check_n(n: int) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int; got {n!r}")
    return int(n)


def _check_rank(x: jax.Array, name: str) -> None:
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one axis; got a scalar")


def _lead_axes(values: np.ndarray, ndim: int) -> np.ndarray:
    """Static table with leading unit axes added to reach rank ``ndim``."""
    return values.reshape((1,) * (ndim - values.ndim) + values.shape)


def packed_length(n: int, bits: int) -> int:
    """Length of the packed last axis for ``n`` codes of width ``bits``.

    This is ``ceil(n * bits / 8)`` bytes; for ``bits == 16`` it is ``n``
    (uint16 elements, which are returned unpacked).
    """
    bits = _check_bits(bits)
    n = _check_n(n)
    if bits == 16:
        return n
    return -(-n * bits // 8)


def pack_codes(codes: jax.Array, bits: int) -> jax.Array:
    """Pack unsigned ``bits``-wide codes along the last axis into ``uint8``.

    ``codes`` must have an unsigned integer dtype with values in
    ``[0, 2**bits)`` (higher bits are masked off for ``bits < 8``). Returns
    ``uint8`` with last axis ``packed_length(n, bits)``; ``bits == 8`` returns
    the codes as ``uint8`` and ``bits == 16`` as ``uint16``, unchanged.
    """
    bits = _check_bits(bits)
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.unsignedinteger):
        raise TypeError(
            f"codes must have an unsigned integer dtype (uint8, or uint16 for "
            f"bits=16); got {codes.dtype}"
        )
    _check_rank(codes, "codes")
    if bits == 16:
        return codes.astype(jnp.uint16)
    if bits == 8:
        return codes.astype(jnp.uint8)

    return _pack_impl(codes, bits)


@functools.partial(jax.jit, static_argnames=("bits",))
def _pack_impl(codes: jax.Array, bits: int) -> jax.Array:
    *batch, n = codes.shape
    batch = tuple(batch)
    m = packed_length(n, bits)

    if 8 % bits == 0:
        # 1, 2, 4 bits: k whole codes per byte.
        k = 8 // bits
        c = (codes & ((1 << bits) - 1)).astype(jnp.uint8)
        c = jnp.pad(c, [(0, 0)] * len(batch) + [(0, m * k - n)])
        c = c.reshape(batch + (m, k))
        shifts = _lead_axes(np.arange(k, dtype=np.uint8) * bits, c.ndim)
        # Disjoint bit fields, so the sum equals the bitwise OR.
        return jnp.sum(c << shifts, axis=-1, dtype=jnp.uint8)

    # 3, 5, 6, 7 bits: each group of 8 codes fills exactly `bits` bytes.
    # Byte j of a group ORs the shifted pieces of the (at most 3) codes that
    # overlap it; the loop is over this static pattern, not over elements.
    # uint8 shifts drop bits that fall outside the byte, as intended.
    g = -(-n // 8)
    c = (codes & ((1 << bits) - 1)).astype(jnp.uint8)
    c = jnp.pad(c, [(0, 0)] * len(batch) + [(0, g * 8 - n)])
    c = c.reshape(batch + (g, 8))
    out = jnp.stack(
        [_or_pieces(c, terms) for terms in _overlaps(bits, pack=True)], axis=-1
    )
    return out.reshape(batch + (g * bits,))[..., :m]


def _overlaps(bits: int, pack: bool) -> list[list[tuple[int, int]]]:
    """Static (source index, shift) lists for the 8-codes <-> `bits`-bytes group.

    Packing: entry ``j`` lists the codes ``i`` overlapping byte ``j`` with the
    left shift ``i*bits - 8j`` (negative = right shift). Unpacking: entry ``i``
    lists the bytes ``j`` overlapping code ``i`` with shift ``8j - i*bits``.
    """

    def overlap(i: int, j: int) -> bool:
        return i * bits < 8 * j + 8 and (i + 1) * bits > 8 * j

    if pack:
        return [[(i, i * bits - 8 * j) for i in range(8) if overlap(i, j)] for j in range(bits)]
    return [[(j, 8 * j - i * bits) for j in range(bits) if overlap(i, j)] for i in range(8)]


def _or_pieces(x: jax.Array, terms: list[tuple[int, int]]) -> jax.Array:
    """OR of ``x[..., k]`` shifted left by ``s`` (right if negative) over ``terms``."""
    acc = None
    for k, s in terms:
        v = x[..., k]
        v = v << np.uint8(s) if s >= 0 else v >> np.uint8(-s)
        acc = v if acc is None else acc | v
    return acc


def unpack_codes(packed: jax.Array, bits: int, n: int) -> jax.Array:
    """Inverse of :func:`pack_codes`: unpack ``n`` codes along the last axis.

    ``packed`` must be ``uint8`` (``uint16`` for ``bits == 16``) with last axis
    ``packed_length(n, bits)``. Returns ``uint8`` codes (``uint16`` for
    ``bits == 16``) with last axis ``n``.
    """
    bits = _check_bits(bits)
    n = _check_n(n)
    packed = jnp.asarray(packed)
    want = jnp.uint16 if bits == 16 else jnp.uint8
    if packed.dtype != want:
        raise TypeError(
            f"packed must have dtype {jnp.dtype(want).name} for bits={bits}; "
            f"got {packed.dtype}"
        )
    _check_rank(packed, "packed")
    m = packed.shape[-1]
    if m != packed_length(n, bits):
        raise ValueError(
            f"n={n} is inconsistent with packed last-axis length {m} for "
            f"bits={bits} (expected length {packed_length(n, bits)})"
        )
    if bits in (8, 16):
        return packed
    return _unpack_impl(packed, bits, n)


@functools.partial(jax.jit, static_argnames=("bits", "n"))
def _unpack_impl(packed: jax.Array, bits: int, n: int) -> jax.Array:
    *batch, m = packed.shape
    batch = tuple(batch)
    p = packed[..., None]
    if 8 % bits == 0:
        k = 8 // bits
        shifts = _lead_axes(np.arange(k, dtype=np.uint8) * bits, p.ndim)
        c = (p >> shifts) & np.uint8((1 << bits) - 1)
        return c.reshape(batch + (m * k,))[..., :n]

    g = -(-n // 8)
    b = jnp.pad(packed, [(0, 0)] * len(batch) + [(0, g * bits - m)])
    b = b.reshape(batch + (g, bits))
    code_mask = np.uint8((1 << bits) - 1)
    out = jnp.stack(
        [_or_pieces(b, terms) & code_mask for terms in _overlaps(bits, pack=False)],
        axis=-1,
    )
    return out.reshape(batch + (g * 8,))[..., :n]
