"""Tests for bitscale.numerics.packing against an independent Python reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale.numerics.packing import (
    pack_codes,
    packed_length,
    unpack_codes,
)

ALL_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16)
LENGTHS = (1, 3, 7, 33, 128)


# --------------------------------------------------------------------------
# Independent reference: Python big-int bit stream, one row at a time.
# --------------------------------------------------------------------------
def _ref_pack_row(row, bits):
    if bits == 16:
        return [int(c) for c in row]
    stream = 0
    for i, c in enumerate(row):
        c = int(c)
        assert 0 <= c < (1 << bits)
        stream |= c << (i * bits)
    nbytes = (len(row) * bits + 7) // 8
    return [(stream >> (8 * j)) & 0xFF for j in range(nbytes)]


def ref_pack(codes, bits):
    codes = np.asarray(codes)
    out_dtype = np.uint16 if bits == 16 else np.uint8
    *batch, n = codes.shape
    m = n if bits == 16 else (n * bits + 7) // 8
    out = np.zeros(tuple(batch) + (m,), dtype=out_dtype)
    for idx in np.ndindex(*batch):
        out[idx] = _ref_pack_row(codes[idx], bits)
    return out


def _rand_codes(rng, shape, bits):
    dtype = np.uint16 if bits == 16 else np.uint8
    return rng.integers(0, 1 << bits, size=shape, dtype=np.int64).astype(dtype)


# --------------------------------------------------------------------------
# Reference self-checks (so the reference itself is trustworthy).
# --------------------------------------------------------------------------
def test_reference_matches_numpy_packbits_for_1bit():
    rng = np.random.default_rng(0)
    codes = _rand_codes(rng, (3, 37), 1)
    np.testing.assert_array_equal(
        ref_pack(codes, 1), np.packbits(codes, axis=-1, bitorder="little")
    )


# --------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------
# Each length gets its own leading batch shape; all three tests below share
# these shapes so the jitted pack/unpack are compiled only once per case.
CASES = [
    (1, (3,)),
    (3, ()),
    (7, (2, 3)),
    (33, (3, 1, 2)),
    (128, (4,)),
]


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("n,batch", CASES)
def test_pack_matches_reference(bits, n, batch):
    rng = np.random.default_rng(1000 * bits + n)
    codes = _rand_codes(rng, batch + (n,), bits)
    got = pack_codes(jnp.asarray(codes), bits)
    want = ref_pack(codes, bits)
    assert got.dtype == want.dtype
    assert got.shape == want.shape == batch + (packed_length(n, bits),)
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("n,batch", CASES)
def test_unpack_of_reference_bytes(bits, n, batch):
    rng = np.random.default_rng(7 + 1000 * bits + n)
    codes = _rand_codes(rng, batch + (n,), bits)
    got = unpack_codes(jnp.asarray(ref_pack(codes, bits)), bits, n)
    assert got.dtype == codes.dtype
    assert got.shape == codes.shape
    np.testing.assert_array_equal(np.asarray(got), codes)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("n,batch", CASES)
def test_roundtrip_identity(bits, n, batch):
    rng = np.random.default_rng(13 + 1000 * bits + n)
    for _ in range(3):
        codes = _rand_codes(rng, batch + (n,), bits)
        back = unpack_codes(pack_codes(jnp.asarray(codes), bits), bits, n)
        assert back.shape == codes.shape
        np.testing.assert_array_equal(np.asarray(back), codes)


def test_4bit_layout_explicit():
    codes = np.array([[0x1, 0xA, 0xF, 0x0, 0x3, 0x7]], dtype=np.uint8)
    got = np.asarray(pack_codes(jnp.asarray(codes), 4))
    c0, c1 = codes[..., 0::2], codes[..., 1::2]
    np.testing.assert_array_equal(got, c0 | (c1 << 4))
    np.testing.assert_array_equal(got, [[0xA1, 0x0F, 0x73]])


def test_4bit_odd_length_pads_high_nibble_with_zero():
    got = np.asarray(pack_codes(jnp.array([0x5, 0x6, 0x9], jnp.uint8), 4))
    np.testing.assert_array_equal(got, [0x65, 0x09])


def test_2bit_layout_explicit():
    got = np.asarray(pack_codes(jnp.array([1, 2, 3, 0], jnp.uint8), 2))
    np.testing.assert_array_equal(got, [0b00111001])


def test_1bit_layout_explicit():
    got = np.asarray(pack_codes(jnp.array([1, 0, 0, 0, 0, 0, 0, 1, 1], jnp.uint8), 1))
    np.testing.assert_array_equal(got, [0b10000001, 0b00000001])


def test_6bit_four_codes_in_three_bytes():
    codes = jnp.array([0b000001, 0b100000, 0b111111, 0b010101], jnp.uint8)
    got = np.asarray(pack_codes(codes, 6))
    # stream (LSB first): c0 | c1<<6 | c2<<12 | c3<<18
    stream = 0b000001 | (0b100000 << 6) | (0b111111 << 12) | (0b010101 << 18)
    np.testing.assert_array_equal(got, [stream & 0xFF, (stream >> 8) & 0xFF, stream >> 16])


def test_3bit_layout_explicit():
    got = np.asarray(pack_codes(jnp.array([7, 0, 5], jnp.uint8), 3))
    # bits: 111 000 101 -> 0b1_01000_111 -> bytes [0b01000111, 0b1]
    np.testing.assert_array_equal(got, [0b01000111, 0b00000001])


@pytest.mark.parametrize("bits,n,expected", [
    (1, 9, 2), (2, 5, 2), (3, 8, 3), (3, 3, 2), (4, 7, 4), (5, 8, 5),
    (6, 4, 3), (6, 5, 4), (7, 1, 1), (8, 5, 5), (16, 5, 5), (4, 0, 0),
])
def test_packed_length(bits, n, expected):
    assert packed_length(n, bits) == expected


def test_8_and_16_are_identity():
    c8 = jnp.arange(256, dtype=jnp.uint8).reshape(4, 64)
    c16 = jnp.array([[0, 1, 65535, 1234]], jnp.uint16)
    p8, p16 = pack_codes(c8, 8), pack_codes(c16, 16)
    assert p8.dtype == jnp.uint8 and p16.dtype == jnp.uint16
    np.testing.assert_array_equal(np.asarray(p8), np.asarray(c8))
    np.testing.assert_array_equal(np.asarray(p16), np.asarray(c16))
    np.testing.assert_array_equal(np.asarray(unpack_codes(p16, 16, 4)), np.asarray(c16))


def test_wider_unsigned_input_accepted():
    codes = np.array([3, 1, 2, 0], dtype=np.uint32)
    got = pack_codes(jnp.asarray(codes), 2)
    assert got.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(got), ref_pack(codes, 2))


# --------------------------------------------------------------------------
# jit
# --------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 3, 4, 6, 8, 16])
def test_under_jit(bits):
    n = 33
    rng = np.random.default_rng(bits)
    codes = _rand_codes(rng, (5, n), bits)

    @jax.jit
    def roundtrip(c):
        p = pack_codes(c, bits)
        return p, unpack_codes(p, bits, n)

    packed, back = roundtrip(jnp.asarray(codes))
    np.testing.assert_array_equal(np.asarray(packed), ref_pack(codes, bits))
    np.testing.assert_array_equal(np.asarray(back), codes)


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, 9, 12, 32, -4, 4.0, True])
def test_bad_bits_raises(bad):
    codes = jnp.zeros((8,), jnp.uint8)
    with pytest.raises(ValueError, match=r"bits must be one of \(1, 2, 3, 4, 5, 6, 7, 8, 16\)"):
        pack_codes(codes, bad)
    with pytest.raises(ValueError, match=rf"got {bad!r}"):
        unpack_codes(codes, bad, 8)
    with pytest.raises(ValueError, match="bits must be one of"):
        packed_length(8, bad)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int8, jnp.int32, jnp.bfloat16, jnp.bool_])
def test_pack_wrong_dtype_raises(dtype):
    with pytest.raises(TypeError, match=jnp.dtype(dtype).name):
        pack_codes(jnp.zeros((8,), dtype), 4)


@pytest.mark.parametrize("bits,dtype", [(4, jnp.int8), (4, jnp.uint16), (16, jnp.uint8), (2, jnp.float32)])
def test_unpack_wrong_dtype_raises(bits, dtype):
    with pytest.raises(TypeError, match=jnp.dtype(dtype).name):
        unpack_codes(jnp.zeros((4,), dtype), bits, 4)


@pytest.mark.parametrize("bits,m,n", [(4, 4, 9), (4, 4, 6), (6, 3, 5), (1, 2, 17), (8, 4, 5), (16, 3, 4)])
def test_unpack_inconsistent_n_raises(bits, m, n):
    dtype = jnp.uint16 if bits == 16 else jnp.uint8
    with pytest.raises(ValueError, match=rf"n={n}.*length {m}"):
        unpack_codes(jnp.zeros((2, m), dtype), bits, n)


def test_negative_n_raises():
    with pytest.raises(ValueError, match="non-negative"):
        packed_length(-1, 4)


def test_scalar_raises():
    with pytest.raises(ValueError, match="at least one axis"):
        pack_codes(jnp.uint8(3), 4)
