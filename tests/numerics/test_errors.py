"""Every public entry point rejects bad input with the right exception and a message that names the
bad value (and, where there is a fixed set of choices, lists them)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitscale as bs

X = jnp.ones((4, 64), jnp.float32)
KEY = jax.random.key(0)

# The quantizing entry points, called with (x, spec, **kw).
ENTRY_POINTS = {
    "fake_quant": lambda x, spec, **kw: bs.fake_quant(x, spec, **kw),
    "quantize": lambda x, spec, **kw: bs.quantize(x, spec, **kw),
    "gaussian_pseudo_quant": lambda x, spec, **kw: bs.gaussian_pseudo_quant(
        x, spec, kw.pop("key", KEY), **kw),
}
QUANT_ENTRY_POINTS = ("fake_quant", "quantize")  # the ones with rounding / key / estimator


def _raises(exc, fn, *must_contain):
    """Calls fn, expects exc; returns the message after checking each fragment is in it."""
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for frag in must_contain:
        assert str(frag) in msg, f"{frag!r} not in error message: {msg!r}"
    return msg


# --------------------------------------------------------------------------------------------
# Spec names


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("name", ["mxfp5", "int9000", "fp8_e4m4x", "nvfp"])
def test_unknown_spec_name(entry, name):
    _raises(ValueError, lambda: ENTRY_POINTS[entry](X, name), repr(name), "mxfp4", "int8",
            "fp8_e4m3", "nvfp4")


def test_resolve_spec_unknown_name_lists_valid_names():
    msg = _raises(ValueError, lambda: bs.resolve_spec("mxfp5"), "'mxfp5'")
    for name in bs.valid_names():
        assert name in msg
    assert "mxfp4" in bs.valid_names()


def test_unknown_option():
    _raises(ValueError, lambda: bs.resolve_spec("int8+foo"), "'foo'", "int8+foo", "asym", "mse")
    _raises(ValueError, lambda: bs.fake_quant(X, "mxfp4+banana"), "'banana'", "rceil")


def test_unknown_granularity():
    _raises(ValueError, lambda: bs.resolve_spec("int8@row"), "'row'", "tensor", "channel")
    _raises(ValueError, lambda: bs.fake_quant(X, "int8@row"), "'row'")
    _raises(ValueError, lambda: bs.resolve_spec("int4@gx"), "'gx'")


def test_named_spec_with_granularity_is_rejected():
    _raises(ValueError, lambda: bs.resolve_spec("mxfp4@g16"), "mxfp4@g16")


def test_spec_of_wrong_type():
    _raises(TypeError, lambda: bs.resolve_spec(3), "3")
    _raises(TypeError, lambda: bs.fake_quant(X, None), "None")


def test_exmy_out_of_range_names_the_reason():
    """e9m2 matches the e<E>m<M> grammar; the message should say why it is invalid (ebits)."""
    msg = _raises(ValueError, lambda: bs.resolve_spec("e9m2"), "e9m2")
    assert "ebits" in msg or "1..8" in msg, msg


# --------------------------------------------------------------------------------------------
# Block size / axis


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("spec,n,bsz", [("mxfp4", 48, 32), ("nvfp4", 40, 16), ("int4@g128", 64, 128)])
def test_block_size_not_dividing_axis(entry, spec, n, bsz):
    x = jnp.ones((4, n), jnp.float32)
    msg = _raises(ValueError, lambda: ENTRY_POINTS[entry](x, spec), spec)
    assert re.search(rf"\b{bsz}\b", msg) and re.search(rf"\b{n}\b", msg), msg


def test_block_size_error_under_jit_and_other_axis():
    x = jnp.ones((48, 64), jnp.float32)
    # Fine along the last axis, wrong along axis 0.
    bs.fake_quant(x, "mxfp4", axis=-1)
    msg = _raises(ValueError, lambda: jax.jit(lambda v: bs.fake_quant(v, "mxfp4", axis=0))(x),
                  "32", "48")
    assert "axis 0" in msg


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("axis", [2, -3, 10])
def test_axis_out_of_range(entry, axis):
    _raises(ValueError, lambda: ENTRY_POINTS[entry](X, "int8@channel", axis=axis), str(axis),
            "rank 2")


# --------------------------------------------------------------------------------------------
# Input dtypes


BAD_DTYPES = [np.int32, np.int8, np.uint8, np.complex64, np.bool_]


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_bad_input_dtype(entry, dtype):
    x = jnp.ones((4, 64), dtype)
    _raises(TypeError, lambda: ENTRY_POINTS[entry](x, "int8@channel"), np.dtype(dtype).name)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_bad_input_dtype_lsq(dtype):
    _raises(TypeError, lambda: bs.lsq_fake_quant(jnp.ones((4, 64), dtype), 0.1, "int4"),
            np.dtype(dtype).name)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_float64_jax_array_rejected(entry):
    with jax.enable_x64(True):
        x = jnp.ones((4, 64), jnp.float64)
        assert x.dtype == jnp.float64
        _raises(TypeError, lambda: ENTRY_POINTS[entry](x, "int8@channel"), "float64")


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_float64_numpy_array_rejected(entry):
    """A numpy float64 array is float64 input: it must not be silently cast to float32."""
    x = np.ones((4, 64), np.float64)
    _raises(TypeError, lambda: ENTRY_POINTS[entry](x, "int8@channel"), "float64")


def test_float64_rejected_by_lsq():
    _raises(TypeError, lambda: bs.lsq_fake_quant(np.ones((4, 64), np.float64), 0.1, "int4"),
            "float64")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16],
                         ids=["f32", "bf16", "f16"])
def test_supported_dtypes_are_accepted(dtype):
    x = jnp.ones((4, 64), dtype)
    assert bs.fake_quant(x, "int8@channel").dtype == dtype


def test_hadamard_rejects_non_float():
    for dt in (jnp.int32, jnp.complex64):
        _raises((TypeError, ValueError), lambda: bs.hadamard_transform(jnp.ones((2, 32), dt), 32),
                np.dtype(dt).name)


# --------------------------------------------------------------------------------------------
# rounding / key / estimator


@pytest.mark.parametrize("entry", QUANT_ENTRY_POINTS)
def test_stochastic_without_key(entry):
    msg = _raises(ValueError, lambda: ENTRY_POINTS[entry](X, "int8@channel", rounding="stochastic"),
                  "key")
    assert "stochastic" in msg


def test_gaussian_pseudo_quant_without_key():
    _raises(ValueError, lambda: bs.gaussian_pseudo_quant(X, "int8", None), "key")


@pytest.mark.parametrize("entry", QUANT_ENTRY_POINTS)
def test_unknown_rounding(entry):
    _raises(ValueError, lambda: ENTRY_POINTS[entry](X, "int8", rounding="banana"), "'banana'",
            "nearest", "stochastic")


def test_unknown_estimator():
    _raises(ValueError, lambda: bs.fake_quant(X, "int8", estimator="foo"), "'foo'", "ste",
            "clipped_ste", "trust")
    _raises(ValueError, lambda: bs.fake_quant(X, "int8", estimator=3), "3")


def test_trust_mask_factor_must_be_positive():
    _raises(ValueError, lambda: bs.TrustMask(factor=0.0), "0.0")
    _raises(ValueError, lambda: bs.TrustMask(factor=-1.0), "-1.0")


@pytest.mark.parametrize("entry", QUANT_ENTRY_POINTS)
@pytest.mark.parametrize("bad_key", [3, 3.5], ids=["int", "float"])
def test_python_scalar_key_is_a_type_error(entry, bad_key):
    _raises(TypeError, lambda: ENTRY_POINTS[entry](X, "int8", rounding="stochastic", key=bad_key),
            "key")


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("bad_key", [jnp.ones(2, jnp.float32), jnp.array([1, 2], jnp.int32),
                                     jnp.ones((), jnp.uint32)], ids=["f32[2]", "i32[2]", "u32[]"])
def test_array_non_key_is_a_type_error(entry, bad_key):
    kw = {"key": bad_key}
    if entry != "gaussian_pseudo_quant":
        kw["rounding"] = "stochastic"
    _raises(TypeError, lambda: ENTRY_POINTS[entry](X, "int8", **kw))


def test_gaussian_pseudo_quant_python_int_key():
    _raises(TypeError, lambda: bs.gaussian_pseudo_quant(X, "int8", 3))


def test_key_array_instead_of_single_key():
    keys = jax.random.split(KEY, 2)
    _raises((ValueError, TypeError),
            lambda: bs.fake_quant(X, "int8", rounding="stochastic", key=keys), "(2,)")


# --------------------------------------------------------------------------------------------
# QuantSpec / formats


def test_quantspec_invalid_combinations():
    int8, fp4 = bs.element_format("int8"), bs.element_format("fp4_e2m1")
    _raises(ValueError, lambda: bs.QuantSpec(int8, "block", 0), "block_size", "0")
    _raises(ValueError, lambda: bs.QuantSpec(int8, "block", -4), "-4")
    _raises(ValueError, lambda: bs.QuantSpec(int8, "tensor", 32), "32")
    _raises(ValueError, lambda: bs.QuantSpec(int8, "row"), "'row'", "tensor", "channel", "block")
    _raises(ValueError, lambda: bs.resolve_spec("int4@g0"), "0")
    _raises(ValueError, lambda: bs.resolve_spec("fp8_e4m3+asym"), "fp8_e4m3", "asym")
    _raises(ValueError, lambda: bs.QuantSpec(fp4, "block", 16, tensor_scale=True), "tensor_scale")
    _raises(ValueError, lambda: bs.resolve_spec("fp4_e2m1@g16+2level"), "tensor_scale")
    _raises(ValueError, lambda: bs.QuantSpec(fp4, "block", 16, scale_rounding="up"), "'up'",
            "floor", "rceil")
    _raises(ValueError, lambda: bs.QuantSpec(int8, int_range="sym"), "'sym'", "restricted")
    _raises(ValueError, lambda: bs.QuantSpec(int8, clip="max"), "'max'", "absmax", "mse")
    _raises(ValueError, lambda: bs.QuantSpec(bs.element_format("e8m0")), "e8m0")
    _raises(ValueError, lambda: bs.resolve_spec("int4@g32:e8m0+asym"), "asym")
    _raises(ValueError, lambda: bs.resolve_spec("uint4@g32"), "uint4")


@pytest.mark.parametrize("args,frags", [
    ((9, 2), ("ebits", "9")),
    ((0, 2), ("ebits", "0")),
    ((4, 24), ("mbits", "24")),
    ((4, -1), ("mbits", "-1")),
    ((1, 2), ("ieee", "ebits")),
    ((4, 0, "fn"), ("fn", "mbits")),
    ((4, 3, "bogus"), ("'bogus'", "ieee", "fn", "ext")),
])
def test_float_format_invalid(args, frags):
    _raises(ValueError, lambda: bs.FloatFormat(*args), *frags)


def test_float_format_valid_edge_cases():
    assert bs.FloatFormat(1, 2, "ext").max_value == 3.5
    assert bs.FloatFormat(8, 23).max_value == float(np.finfo(np.float32).max)
    assert bs.FloatFormat(4, 0).name == "e4m0"


def test_int_format_invalid():
    _raises(ValueError, lambda: bs.IntFormat(1), "binary")
    _raises(ValueError, lambda: bs.IntFormat(17), "17")
    _raises(ValueError, lambda: bs.IntFormat(0, signed=False), "0")


def test_element_format_unknown():
    _raises(ValueError, lambda: bs.element_format("int99"), "'int99'", "int8")
    _raises(TypeError, lambda: bs.element_format(8), "8")


def test_dequantize_needs_a_qarray():
    _raises(TypeError, lambda: bs.dequantize(X), "QArray", "ArrayImpl")


# --------------------------------------------------------------------------------------------
# LSQ


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp4_e2m1", "bf16", "mxfp4", "int4@channel",
                                 "ternary"])
def test_lsq_needs_an_integer_format(fmt):
    _raises(ValueError, lambda: bs.lsq_fake_quant(X, 0.1, fmt), repr(fmt), "integer")


def test_lsq_float_format_object():
    _raises(ValueError, lambda: bs.lsq_fake_quant(X, 0.1, bs.FloatFormat(4, 3, "fn")), "e4m3_fn",
            "integer")


def test_lsq_unknown_format_name():
    _raises(ValueError, lambda: bs.lsq_fake_quant(X, 0.1, "int99"), "'int99'")


@pytest.mark.parametrize("shape", [(3, 1), (4, 63), (64, 4), (4, 64, 1), (1, 4, 64), (2,)])
def test_lsq_step_not_broadcastable(shape):
    step = jnp.full(shape, 0.1, jnp.float32)
    _raises(ValueError, lambda: bs.lsq_fake_quant(X, step, "int4"), str(shape), "(4, 64)")


@pytest.mark.parametrize("shape", [(), (4, 1), (1, 64), (4, 64)])
def test_lsq_step_broadcastable_shapes_work(shape):
    step = jnp.full(shape, 0.1, jnp.float32)
    assert bs.lsq_fake_quant(X, step, "int4").shape == (4, 64)


def test_lsq_lower_rank_step_works_or_is_rejected_by_name():
    """step of shape (1,) passes lsq_fake_quant's own broadcast check for x of rank 2; it must then
    either work or be rejected by that check (naming step's shape), not fail inside the kernel
    (e.g. on jax_numpy_rank_promotion='raise', which this project sets)."""
    step = jnp.full((1,), 0.1, jnp.float32)
    try:
        y = bs.lsq_fake_quant(X, step, "int4")
    except ValueError as e:
        assert "step" in str(e) and "(1,)" in str(e), f"unclear error: {e}"
    else:
        assert y.shape == (4, 64)
