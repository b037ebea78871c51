"""packed_matmul (the Pallas kernel, interpreted and compiled on a GPU / TPU, and the XLA path)
against x @ dequantize(w).

Reference: float64 numpy ``x @ dequantize(w)``; the kernel's products are exact and summed in
float32, so |y - ref| <= rtol * (|x| @ |dequantize(w)|) with rtol ~ 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitscale as bs
from pallas_kernels.packed_matmul import (
    PackedMatmulConfig, packed_matmul, packed_matmul_reference)

RTOL = 1e-5
SPECS = ("int4@g32", "int4@g128", "int8@channel", "int8@g64", "mxfp4", "nvfp4", "nvfp4_single",
         "fp8_e4m3", "int8", "int4@g64+asym", "mxint8", "mxfp8_e4m3", "int8@tensor")
DTYPES = (jnp.float32, jnp.bfloat16)

# Eager quantize / dequantize dispatch op by op (seconds per call); jit them.
quantize = jax.jit(bs.quantize, static_argnames=("spec", "axis"))
dequantize = jax.jit(bs.dequantize)


def make(spec, k=256, n=128, w_dtype=jnp.float32, seed=0):
    w = jax.random.normal(jax.random.key(seed), (k, n), jnp.float32)
    # Heavy-tailed columns so the scales differ across groups and columns.
    w = w * jnp.exp(jax.random.normal(jax.random.key(seed + 1), (1, n)))
    return quantize(w.astype(w_dtype), spec, axis=0)


def make_x(m, k, dtype, seed=7):
    return jax.random.normal(jax.random.key(seed), (m, k), jnp.float32).astype(dtype)


def assert_matches(y, x, wd, rtol=RTOL):
    x64 = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
    w64 = np.asarray(jnp.asarray(wd, jnp.float32), np.float64)
    ref = x64 @ w64
    bound = np.abs(x64) @ np.abs(w64)
    y = np.asarray(y)
    assert y.dtype == np.float32
    assert y.shape == ref.shape
    err = np.abs(y - ref)
    assert np.all(err <= rtol * bound + 1e-30), f"max rel err {np.max(err / (bound + 1e-30)):.3g}"


def run_pallas(x, q, interpret, **kw):
    return jax.jit(lambda a, b: packed_matmul(a, b, implementation="pallas", interpret=interpret,
                                              **kw))(x, q)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("spec", SPECS)
def test_kernel_matches_float64_reference(spec, dtype, interpret):
    q = make(spec)
    wd = dequantize(q)
    for m in (1, 8, 20):  # 20: not a multiple of block_m (16), rows are zero-padded
        x = make_x(m, 256, dtype, seed=m)
        assert_matches(run_pallas(x, q, interpret), x, wd)


@pytest.mark.parametrize("spec", ("int4@g32", "mxfp4", "nvfp4", "int8@channel", "int4@g64+asym"))
def test_multi_tile_grid(spec, interpret):
    # grid (3, 4, 4): accumulation over K tiles, several N tiles, M = 20 padded to 24.
    q = make(spec)
    x = make_x(20, 256, jnp.bfloat16)
    y = run_pallas(x, q, interpret, config=PackedMatmulConfig(block_m=8, block_n=32, block_k=64))
    assert_matches(y, x, dequantize(q))


@pytest.mark.parametrize("spec", ("int4@g32", "mxfp4", "nvfp4", "int8@channel", "fp8_e4m3"))
def test_bf16_weights_round_like_dequantize(spec, interpret):
    # dequantize(q) of a bf16 weight is bf16: the kernel rounds its dequantized tile the same way.
    q = make(spec, k=64, w_dtype=jnp.bfloat16)
    wd = dequantize(q)
    assert wd.dtype == jnp.bfloat16
    for dtype in DTYPES:
        x = make_x(8, 64, dtype)
        assert_matches(run_pallas(x, q, interpret), x, wd)


def test_compute_dtype_rounds_both_operands(interpret):
    q = make("int4@g32", k=64)
    x = make_x(8, 64, jnp.float32)
    y = run_pallas(x, q, interpret, compute_dtype=jnp.bfloat16)
    assert_matches(y, x.astype(jnp.bfloat16), dequantize(q).astype(jnp.bfloat16))
    ref = packed_matmul_reference(x, q, compute_dtype=jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_leading_batch_axes(interpret):
    q = make("mxfp4", k=64)
    x = make_x(6, 64, jnp.bfloat16).reshape(2, 3, 64)
    y = run_pallas(x, q, interpret)
    assert y.shape == (2, 3, 128)
    assert_matches(y.reshape(6, 128), x.reshape(6, 64), dequantize(q))


@pytest.mark.parametrize("spec", ("int4@g128", "nvfp4", "mxfp6_e3m2"))
def test_xla_path_equals_reference(spec):
    q = make(spec, k=128)
    x = make_x(5, 128, jnp.bfloat16)
    y = jax.jit(lambda a, b: packed_matmul(a, b, implementation="xla"))(x, q)
    np.testing.assert_array_equal(np.asarray(y),
                                  np.asarray(jax.jit(packed_matmul_reference)(x, q)))
    assert_matches(y, x, dequantize(q))
    if jax.default_backend() == "cpu":  # "auto" on CPU is the XLA path
        np.testing.assert_array_equal(np.asarray(jax.jit(packed_matmul)(x, q)), np.asarray(y))


def test_pallas_without_interpret_on_cpu_raises():
    if jax.default_backend() != "cpu":
        pytest.skip("CPU-only check")
    q = make("int4@g32", k=64)
    with pytest.raises(ValueError, match="needs a GPU or TPU backend.*interpret=True"):
        packed_matmul(make_x(1, 64, jnp.float32), q, implementation="pallas")
    with pytest.raises(ValueError, match="implementation must be one of"):
        packed_matmul(make_x(1, 64, jnp.float32), q, implementation="triton")


def test_config_errors():
    for bad in (dict(block_m=24), dict(block_n=0), dict(block_k=96), dict(block_m=True)):
        with pytest.raises(ValueError, match="must be a positive power of two"):
            PackedMatmulConfig(**bad)
    q = make("int4@g128", k=256)
    x = make_x(4, 256, jnp.float32)
    with pytest.raises(ValueError, match="block_k=64 is not a multiple of the quantization group "
                                         "size 128"):
        packed_matmul(x, q, implementation="pallas", interpret=True,
                      config=PackedMatmulConfig(16, 128, 64))
    q8 = make("int8", k=192)
    with pytest.raises(ValueError, match="K=192 is not a multiple of block_k=128"):
        packed_matmul(make_x(4, 192, jnp.float32), q8, implementation="pallas", interpret=True,
                      config=PackedMatmulConfig(16, 128, 128))
    with pytest.raises(ValueError, match="N=128 is not a multiple of block_n=256"):
        packed_matmul(x, q, implementation="pallas", interpret=True,
                      config=PackedMatmulConfig(16, 256, 128))
    with pytest.raises(TypeError, match="PackedMatmulConfig"):
        packed_matmul(x, q, implementation="pallas", interpret=True, config=(16, 128, 128))


def test_input_errors():
    q = make("int4@g32", k=64)
    with pytest.raises(TypeError, match="QArray"):
        packed_matmul(make_x(2, 64, jnp.float32), dequantize(q))
    with pytest.raises(ValueError, match="last axis must equal w's K=64"):
        packed_matmul(make_x(2, 32, jnp.float32), q)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        packed_matmul(jnp.ones((2, 64), jnp.int32), q)
    w1 = quantize(jax.random.normal(jax.random.key(0), (64, 128)), "int4@g32", axis=1)
    with pytest.raises(ValueError, match="axis=0"):
        packed_matmul(make_x(2, 64, jnp.float32), w1, implementation="pallas", interpret=True)
    q6 = make("mxfp6_e3m2", k=64)
    with pytest.raises(ValueError, match="4 or 8 bits wide.*implementation='xla'"):
        packed_matmul(make_x(2, 64, jnp.float32), q6, implementation="pallas", interpret=True)
