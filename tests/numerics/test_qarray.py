"""The QArray container: pytree structure, jit, code packing, storage cost, dtypes and errors."""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import bitscale as bs
from bitscale.numerics.packing import unpack_codes


def _x(shape, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal(shape).astype(np.float32) * 3.0).astype(dtype)


@functools.partial(jax.jit, static_argnames=("spec", "axis"))
def _qdq(x, spec, axis=-1):
    q = bs.quantize(x, spec, axis=axis)
    return q, bs.dequantize(q), bs.fake_quant(x, spec, axis=axis)


@functools.partial(jax.jit, static_argnames=("spec", "axis"))
def _q(x, spec, axis=-1):
    """bs.quantize under jit (one compile per spec/shape instead of many eager op dispatches)."""
    return bs.quantize(x, spec, axis=axis)


def _bits_equal(a, b):
    a = np.asarray(jnp.asarray(a).astype(jnp.float32))
    b = np.asarray(jnp.asarray(b).astype(jnp.float32))
    return a.shape == b.shape and bool(np.all(
        (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))))


# --------------------------------------------------------------------------
# pytree + jit
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spec, n_leaves", [
    ("int8", 1),  # codes only
    ("int4@g32", 2),  # codes, scales
    ("int4@g32+asym", 3),  # codes, scales, zero_point
    ("mxfp4", 2),  # codes, E8M0 scales
    ("nvfp4", 3),  # codes, UE4M3 scales, tensor scale
])
def test_pytree_leaves_are_the_arrays(spec, n_leaves):
    x = _x((4, 64))
    q = _q(x, spec)
    assert isinstance(q, bs.QArray)
    leaves = jax.tree_util.tree_leaves(q)
    assert len(leaves) == n_leaves
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    present = [a for a in (q.codes, q.scales, q.zero_point, q.tensor_scale) if a is not None]
    assert len(present) == n_leaves
    for leaf, a in zip(leaves, present):
        assert leaf is a
    # metadata is static: part of the treedef, not a leaf
    _, treedef = jax.tree_util.tree_flatten(q)
    q2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert (q2.spec, q2.shape, q2.dtype, q2.axis) == (q.spec, q.shape, q.dtype, q.axis)
    assert jax.tree_util.tree_structure(_q(_x((4, 64), seed=1), spec)) == treedef


def test_metadata_changes_the_treedef():
    x = _x((64, 64))
    base = jax.tree_util.tree_structure(_q(x, "mxfp4"))
    assert jax.tree_util.tree_structure(_q(x, "mxfp4", axis=0)) != base
    assert jax.tree_util.tree_structure(_q(x, "mxfp4+ceil")) != base
    assert jax.tree_util.tree_structure(_q(x.astype(jnp.bfloat16), "mxfp4")) != base
    assert jax.tree_util.tree_structure(_q(x[:32], "mxfp4")) != base
    assert jax.tree_util.tree_structure(_q(x, "mxint8")) != base


def test_qarray_through_jit_argument_and_return():
    x = _x((8, 64))
    q, yd_ref, y_ref = _qdq(x, "nvfp4")  # QArray returned from a jitted function
    assert isinstance(q, bs.QArray)

    @jax.jit
    def ident(q):
        return q

    @jax.jit
    def deq(q):
        return bs.dequantize(q)

    @jax.jit
    def rebuild(q):  # a QArray built inside jit from the argument's leaves
        leaves, treedef = jax.tree_util.tree_flatten(q)
        return jax.tree_util.tree_unflatten(treedef, [a + 0 for a in leaves])

    q2 = ident(q)
    assert isinstance(q2, bs.QArray)
    assert (q2.spec, q2.shape, q2.dtype, q2.axis) == (q.spec, q.shape, q.dtype, q.axis)
    for a, b in zip(jax.tree_util.tree_leaves(q), jax.tree_util.tree_leaves(q2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _bits_equal(deq(q), yd_ref)
    assert _bits_equal(deq(q2), y_ref)
    q3 = rebuild(q)
    assert isinstance(q3, bs.QArray) and q3.spec == q.spec and q3.shape == q.shape
    assert _bits_equal(deq(q3), y_ref)


@pytest.mark.parametrize("spec", ["int8", "int4@g32", "int4@g32+asym", "fp8_e4m3@tensor",
                                  "mxfp6_e3m2", "mxint8", "nvfp4", "nvfp4_single", "bf16",
                                  "ternary", "binary", "int8@channel"])
def test_quantize_dequantize_under_jit(spec):
    x = _x((8, 64), seed=3)
    q, yd, y = _qdq(x, spec)
    assert isinstance(q, bs.QArray)
    assert _bits_equal(yd, y), spec
    assert q.shape == x.shape and q.spec == bs.resolve_spec(spec)


def test_eager_equals_jit():
    x = _x((8, 64), seed=3)
    for spec in ("mxfp4",):
        q, yd, _ = _qdq(x, spec)
        q_e = bs.quantize(x, spec)
        for a, b in zip(jax.tree_util.tree_leaves(q), jax.tree_util.tree_leaves(q_e)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert _bits_equal(bs.dequantize(q_e), yd)


# --------------------------------------------------------------------------
# code containers and packing
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spec, bits, dtype, packed_last", [
    ("fp4_e2m1", 4, np.uint8, 32),
    ("int4", 4, np.uint8, 32),
    ("int4@g32", 4, np.uint8, 32),
    ("mxfp4", 4, np.uint8, 32),
    ("nvfp4", 4, np.uint8, 32),
    ("fp6_e2m3", 6, np.uint8, 48),
    ("mxfp6_e3m2", 6, np.uint8, 48),
    ("fp8_e4m3", 8, np.uint8, 64),
    ("fp8_e5m2", 8, np.uint8, 64),
    ("mxfp8_e4m3", 8, np.uint8, 64),
    ("int8", 8, np.uint8, 64),
    ("mxint8", 8, np.uint8, 64),
    ("bf16", 16, np.uint16, 64),
    ("fp16", 16, np.uint16, 64),
])
def test_codes_container_and_packing(spec, bits, dtype, packed_last):
    x = _x((4, 64), seed=5)
    q = _q(x, spec)
    codes = np.asarray(q.codes)
    assert codes.dtype == dtype, (spec, codes.dtype)
    assert codes.shape == (4, packed_last), (spec, codes.shape)
    assert packed_last == (64 if bits == 16 else 64 * bits // 8)
    assert q.shape == (4, 64) and q.dtype == jnp.float32
    if bits < 16:  # the unpacked codes fit in `bits` bits
        unpacked = np.asarray(unpack_codes(q.codes, bits, 64))
        assert unpacked.shape == (4, 64) and int(unpacked.max()) < 2**bits


def test_code_values_of_element_casts():
    """Unpacked codes are the format's bit patterns (checked with ml_dtypes / numpy views)."""
    xn = np.array(_x((4, 64), seed=6))
    xn[0, :4] = [0.0, -0.0, 1e6, -1e6]
    x = jnp.asarray(xn)
    cases = [
        ("fp4_e2m1", 4, ml_dtypes.float4_e2m1fn, 6.0),
        ("fp6_e2m3", 6, ml_dtypes.float6_e2m3fn, 7.5),
        ("fp6_e3m2", 6, ml_dtypes.float6_e3m2fn, 28.0),
        ("fp8_e4m3", 8, ml_dtypes.float8_e4m3fn, 448.0),
        ("fp8_e5m2", 8, ml_dtypes.float8_e5m2, 57344.0),
    ]
    for spec, bits, dt, m in cases:
        q = _q(x, spec)
        got = np.asarray(unpack_codes(q.codes, bits, 64))
        want = np.clip(xn, -m, m).astype(dt).view(np.uint8)
        np.testing.assert_array_equal(got, want, err_msg=spec)
    q = _q(x, "bf16")
    want = xn.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(np.asarray(q.codes), want)
    q = _q(x, "fp16")  # finite overflow saturates to +-65504
    want = np.clip(xn, -65504, 65504).astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(np.asarray(q.codes), want)
    q = _q(x, "int8")  # two's complement bytes of the RNE-rounded, saturated integers
    want = np.clip(np.round(xn), -128, 127).astype(np.int8).view(np.uint8)
    np.testing.assert_array_equal(np.asarray(q.codes), want)
    q = _q(x, "int4")
    want = (np.clip(np.round(xn), -8, 7).astype(np.int64) & 0xF).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(unpack_codes(q.codes, 4, 64)), want)


def test_odd_last_axis_is_padded_in_packing():
    x = _x((3, 5), seed=7)
    q, yd, y = _qdq(x, "fp4_e2m1")
    assert np.asarray(q.codes).shape == (3, 3)
    assert _bits_equal(yd, y)
    q, yd, y = _qdq(x, "fp6_e2m3")
    assert np.asarray(q.codes).shape == (3, 4)  # ceil(5 * 6 / 8)
    assert _bits_equal(yd, y)


# --------------------------------------------------------------------------
# bits_per_element
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spec, shape, expected", [
    ("int8", (8, 256), 8.0),
    ("fp8_e4m3", (8, 256), 8.0),
    ("fp4_e2m1", (8, 256), 4.0),
    ("int4@g128", (8, 256), 4.0 + 32 / 128),  # float32 scale per 128
    ("int4@g128+asym", (8, 256), 4.0 + 32 / 128 + 4 / 128),  # + int4 zero point per 128
    ("mxfp4", (8, 256), 4.25),  # 8-bit E8M0 per 32
    ("mxfp6_e2m3", (8, 256), 6.25),
    ("mxfp8_e4m3", (8, 256), 8.25),
    ("mxint8", (8, 256), 8.25),
    ("nvfp4", (8, 64), 4.5 + 32 / 512),  # 8-bit UE4M3 per 16 + one float32 per tensor
    ("nvfp4_single", (8, 64), 4.5),
])
def test_bits_per_element(spec, shape, expected):
    q = _q(jnp.ones(shape, jnp.float32), spec)
    assert q.bits_per_element == pytest.approx(expected, rel=0, abs=1e-12)


# --------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("spec", ["mxfp4", "nvfp4", "int8@channel", "fp8_e4m3"])
def test_low_precision_input_dtypes_round_trip(dtype, spec):
    x = _x((4, 64), seed=8, dtype=dtype)
    q, yd, y = _qdq(x, spec)
    assert q.dtype == jnp.dtype(dtype)
    assert yd.dtype == dtype and y.dtype == dtype
    assert yd.shape == x.shape
    assert _bits_equal(yd, y)
    # the computation is on the float32 value of x, rounded back to x's dtype at the end
    _, _, y32 = _qdq(x.astype(jnp.float32), spec)
    assert _bits_equal(y, y32.astype(dtype))


def test_bad_input_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="int32"):
        bs.quantize(jnp.ones((4, 32), jnp.int32), "mxfp4")
    with pytest.raises(TypeError, match="int32"):
        bs.fake_quant(jnp.ones((4, 32), jnp.int32), "mxfp4")


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
@pytest.mark.parametrize("value", [jnp.ones((4, 32)), np.ones((4, 32), np.float32), None, 1.0,
                                   "mxfp4"])
def test_dequantize_rejects_non_qarray(value):
    with pytest.raises(TypeError):
        bs.dequantize(value)


@pytest.mark.parametrize("spec", ["mxfp4", "int8", "nvfp4", "int4@g32"])
def test_stochastic_without_key(spec):
    x = jnp.ones((4, 32), jnp.float32)
    with pytest.raises(ValueError, match="key"):
        bs.quantize(x, spec, rounding="stochastic")
    with pytest.raises(ValueError, match="key"):
        bs.fake_quant(x, spec, rounding="stochastic")


# --------------------------------------------------------------------------
# 0-d and 1-d inputs
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["fp8_e4m3", "int8", "fp4_e2m1", "bf16", "int8@tensor"])
def test_scalar_round_trip(spec):
    """A 0-d array quantizes like any other: dequantize gives a 0-d array equal to fake_quant.

    (`dequantize` has an explicit branch for ``q.shape == ()``, and `fake_quant` accepts scalars.)
    """
    x = jnp.float32(-1.3)
    y = bs.fake_quant(x, spec)
    q = bs.quantize(x, spec)
    assert q.shape == ()
    yd = bs.dequantize(q)
    assert yd.shape == () and yd.dtype == jnp.float32
    assert _bits_equal(yd, y)


@pytest.mark.parametrize("spec, bits_per_element", [("mxfp4", 4.25), ("nvfp4", 4.5 + 32 / 64),
                                                    ("mxint8", 8.25)])
def test_one_dimensional_input(spec, bits_per_element):
    x = jnp.asarray(np.linspace(-3, 3, 64, dtype=np.float32))
    q, yd, y = _qdq(x, spec)
    assert np.asarray(q.scales).shape == (64 // (16 if spec == "nvfp4" else 32),)
    assert _bits_equal(yd, y)
    assert q.bits_per_element == pytest.approx(bits_per_element, rel=0, abs=1e-12)
