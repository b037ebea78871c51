"""The fused quantize kernel equals the numerics core bit for bit (``interpret``: the Pallas
interpreter, and compiled on a GPU / TPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitscale as bs
import pallas_kernels as pk
from pallas_kernels.quantize import QuantizeConfig

SPECS = ["fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp4_e2m1", "int8", "bf16", "mxfp8_e4m3", "mxfp6_e3m2",
         "mxfp4", "mxint8", "mxfp4+rceil", "nvfp4", "nvfp4_single", "int4@g32", "int8@g64+asym",
         "int8@channel", "fp8_e4m3@g32:e8m0"]
# (shape, axis): the non-quantized extent is never a multiple of the tile.
LAYOUTS = [((20, 256), -1), ((256, 13), 0), ((3, 128, 5), 1)]


def _same(a, b):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return np.all((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b)))


def _input(shape, dtype, seed=0):
    x = 3.0 * jax.random.normal(jax.random.key(seed), shape, jnp.float32)
    flat = x.reshape(-1).at[5].set(jnp.nan).at[1000].set(jnp.inf).at[77].set(-0.0)
    flat = flat.at[2000].set(1e-40)  # a float32 subnormal
    return flat.reshape(shape).astype(dtype)


# The references compiled once per case (op-by-op dispatch of the bit-level quantizers costs
# seconds per call); jit does not change their bits (tests/test_lowering, selfcheck).
_STATIC = ("spec", "axis", "rounding")
_ref_fake_quant = jax.jit(bs.fake_quant, static_argnames=_STATIC)
_ref_quantize = jax.jit(bs.quantize, static_argnames=_STATIC)


def _check(spec, shape, axis, dtype, rounding, interpret):
    key = jax.random.key(3) if rounding == "stochastic" else None
    x = _input(shape, dtype)
    kw = dict(axis=axis, rounding=rounding, key=key)
    y = pk.fake_quant(x, spec, implementation="pallas", interpret=interpret, **kw)
    assert y.dtype == x.dtype
    assert _same(y, _ref_fake_quant(x, spec=spec, **kw)), (spec, shape, axis, dtype)
    q = pk.quantize(x, spec, implementation="pallas", interpret=interpret, **kw)
    r = _ref_quantize(x, spec=spec, **kw)
    for a, b in [(q.codes, r.codes), (q.scales, r.scales), (q.zero_point, r.zero_point),
                 (q.tensor_scale, r.tensor_scale)]:
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, (spec, shape, axis)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    deq = np.asarray(bs.dequantize(q), np.float32)
    if not isinstance(bs.resolve_spec(spec), bs.QuantSpec):
        # Unscaled formats without a NaN code store NaN as a zero (documented).
        deq = np.where(np.isnan(np.asarray(x, np.float32)), np.nan, deq)
    assert _same(deq, y)


@pytest.mark.parametrize("spec", SPECS)
def test_every_spec(spec, interpret):
    _check(spec, (20, 256), -1, jnp.float32, "nearest", interpret)


# Layouts, dtypes and stochastic rounding on the specs that exercise each kernel path:
# element cast, E8M0 blocks, two-level float scales, asymmetric int groups, whole-row channels.
SWEEP = ["fp8_e4m3", "mxfp4", "nvfp4", "int8@g64+asym", "int8@channel"]


@pytest.mark.parametrize("spec", SWEEP)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_stochastic(spec, layout, interpret):
    _check(spec, *layout, jnp.float32, "stochastic", interpret)


@pytest.mark.parametrize("spec", SWEEP)
def test_bf16_input_other_axis(spec, interpret):
    _check(spec, (256, 13), 0, jnp.bfloat16, "nearest", interpret)


def test_small_tiles_and_jit(interpret):
    x = _input((37, 128), jnp.float32, seed=1)
    cfg = QuantizeConfig(block_axis=64, block_other=8)
    f = jax.jit(lambda v: pk.fake_quant(v, "mxfp4", implementation="pallas",
                                        interpret=interpret, config=cfg))
    assert _same(f(x), bs.fake_quant(x, "mxfp4"))


def test_straight_through_gradient(interpret):
    x = jax.random.normal(jax.random.key(2), (8, 64))
    g = jax.grad(lambda v: jnp.sum(2.0 * pk.fake_quant(v, "mxfp4", implementation="pallas",
                                                        interpret=interpret)))(x)
    np.testing.assert_array_equal(np.asarray(g), 2.0 * np.ones((8, 64), np.float32))


def test_dispatch():
    x = jax.random.normal(jax.random.key(2), (8, 64))
    # auto on CPU is the XLA reference; tensor and MSE specs always fall back under auto.
    assert _same(pk.fake_quant(x, "int8@tensor"), bs.fake_quant(x, "int8@tensor"))
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="needs a GPU or TPU backend"):
            pk.fake_quant(x, "mxfp4", implementation="pallas")
    with pytest.raises(ValueError, match="per-tensor scale"):
        pk.fake_quant(x, "int8@tensor", implementation="pallas", interpret=True)
    with pytest.raises(ValueError, match="implementation must be one of"):
        pk.fake_quant(x, "mxfp4", implementation="cuda")


def test_bad_tiling_names_both_sizes():
    x = jax.random.normal(jax.random.key(2), (8, 96))
    with pytest.raises(ValueError, match="block size 48 .* block_axis=512"):
        pk.fake_quant(x, "int4@g48", implementation="pallas", interpret=True,
                      config=QuantizeConfig(block_axis=512))
    with pytest.raises(ValueError, match="block_axis=96 must be a power of two"):
        QuantizeConfig(block_axis=96)
    with pytest.raises(ValueError, match="block size 32 .* does not divide axis 1 of length 100"):
        pk.fake_quant(jnp.ones((8, 100)), "mxfp4", implementation="pallas", interpret=True)
    with pytest.raises(ValueError, match="whole axis"):
        pk.fake_quant(x, "int8@channel", implementation="pallas", interpret=True,
                      config=QuantizeConfig(block_axis=32))
