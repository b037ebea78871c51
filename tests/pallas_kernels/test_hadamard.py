"""Hadamard kernel vs the jnp reference, alone and fused with fake_quant (``interpret``: the
Pallas interpreter, and compiled on a GPU / TPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitscale as bs
from pallas_kernels.hadamard import hadamard_fake_quant, hadamard_transform

KEY = jax.random.key(4)


def _same(a, b):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return np.all((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b)))


@pytest.mark.parametrize("block", [16, 64, 256])
def test_transform_matches_reference_and_round_trips(block, interpret):
    x = jax.random.normal(jax.random.key(0), (20, 256))
    fwd = hadamard_transform(x, block, key=KEY, implementation="pallas", interpret=interpret)
    assert _same(fwd, bs.hadamard_transform(x, block, key=KEY))
    back = hadamard_transform(fwd, block, key=KEY, inverse=True, implementation="pallas",
                              interpret=interpret)
    # float32 round trip: within 1e-6 of the largest magnitude.
    np.testing.assert_allclose(np.asarray(back), np.asarray(x), rtol=0,
                               atol=1e-6 * float(jnp.max(jnp.abs(x))))


def test_transform_other_axis_bf16_and_grad(interpret):
    x = jax.random.normal(jax.random.key(1), (64, 12)).astype(jnp.bfloat16)
    y = hadamard_transform(x, 32, key=KEY, axis=0, implementation="pallas", interpret=interpret)
    assert y.dtype == jnp.bfloat16
    assert _same(y, bs.hadamard_transform(x, 32, key=KEY, axis=0))
    w = jax.random.normal(jax.random.key(2), (20, 64))
    xf = jax.random.normal(jax.random.key(3), (20, 64))
    g = jax.grad(lambda v: jnp.sum(w * hadamard_transform(v, 16, key=KEY, implementation="pallas",
                                                          interpret=interpret)))(xf)
    expect = bs.hadamard_transform(w, 16, key=KEY, inverse=True)
    np.testing.assert_allclose(np.asarray(g), np.asarray(expect), atol=1e-6)


@pytest.mark.parametrize("spec", ["mxfp4", "int4@g32", "fp8_e4m3", "nvfp4_single",
                                  "int8@channel"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_fused_matches_composition(spec, rounding, interpret):
    x = jax.random.normal(jax.random.key(0), (20, 256))
    rk = jax.random.key(9) if rounding == "stochastic" else None
    y = hadamard_fake_quant(x, 64, spec, key=KEY, rounding=rounding, rounding_key=rk,
                            implementation="pallas", interpret=interpret)
    ref = bs.fake_quant(bs.hadamard_transform(x, 64, key=KEY), spec, rounding=rounding, key=rk)
    assert _same(y, ref)


@pytest.mark.parametrize("shape,axis", [((256, 20), 0), ((4, 128, 6), 1)])
def test_fused_stochastic_bits_follow_the_callers_layout(shape, axis, interpret):
    """Along a non-last axis the kernel sees the axis moved last; its random bits still index
    the caller's flat element order, so it is bit for bit `bitscale.fake_quant`."""
    x = jax.random.normal(jax.random.key(0), shape)
    rk = jax.random.key(9)
    y = hadamard_fake_quant(x, 64, "mxfp4", key=KEY, axis=axis, rounding="stochastic",
                            rounding_key=rk, implementation="pallas", interpret=interpret)
    ref = bs.fake_quant(bs.hadamard_transform(x, 64, key=KEY, axis=axis), "mxfp4", axis=axis,
                        rounding="stochastic", key=rk)
    assert _same(y, ref)


def test_fused_gradient_and_errors(interpret):
    x = jax.random.normal(jax.random.key(0), (8, 128))
    w = jax.random.normal(jax.random.key(1), (8, 128))
    g = jax.grad(lambda v: jnp.sum(w * hadamard_fake_quant(
        v, 64, "mxfp4", key=KEY, implementation="pallas", interpret=interpret)))(x)
    expect = jax.grad(lambda v: jnp.sum(w * bs.fake_quant(
        bs.hadamard_transform(v, 64, key=KEY), "mxfp4")))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(expect), atol=1e-6)
    with pytest.raises(ValueError, match="block_size=24"):
        hadamard_transform(x, 24, implementation="pallas", interpret=True)
    with pytest.raises(ValueError, match="rotated tensor's amax"):
        hadamard_fake_quant(x, 64, "nvfp4", implementation="pallas", interpret=True)
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="needs a GPU or TPU"):
            hadamard_fake_quant(x, 64, "mxfp4", implementation="pallas")
