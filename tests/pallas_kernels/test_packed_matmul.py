"""packed_matmul (the Pallas kernel, interpreted and compiled on a GPU / TPU, and the XLA path)
against x @ dequantize(w).

Reference: float64 numpy ``x @ dequantize(w)``; the kernel's products are exact and summed in
float32, so |y - ref| <= rtol * (|x| @ |dequantize(w)|) with rtol ~ 1e-5.
"""

import itertools

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


# --- The GPU grid contract ---------------------------------------------------------------------
# Triton runs every grid point as an independent parallel program on uninitialized global output
# memory. The first kernel accumulated over a K grid axis into a revisited output block
# (initialized at k == 0), which only the sequential interpreter runs right: on an H200 it
# returned relative errors of 0.64-1.0. These tests fail for such a kernel on CPU.


def _pallas_eqns(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield eqn
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (list, tuple)) else [v]):
                j = getattr(sub, "jaxpr", None)
                if j is not None:
                    yield from _pallas_eqns(j if hasattr(j, "eqns") else j.jaxpr)


@pytest.mark.parametrize("platform", ("cuda", "tpu", None))
@pytest.mark.parametrize("spec,k,n,m", [("int4@g32", 4096, 4096, 1), ("int8@channel", 4096, 4096, 128),
                                        ("nvfp4", 768, 256, 16), ("mxfp4", 256, 96, 20)])
def test_each_output_block_has_one_writer(spec, k, n, m, platform):
    from pallas_kernels.common import lowering_target
    q = jax.eval_shape(lambda w: bs.quantize(w, spec, axis=0),
                       jax.ShapeDtypeStruct((k, n), jnp.float32))
    x = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
    if platform == "tpu" and n % 256:
        pytest.skip("4-bit N=96 has no 128-lane code block on TPU (XLA fallback, see "
                    "test_packed_matmul_lowering.py)")

    def f(a, w):
        return packed_matmul(a, w, implementation="pallas", interpret=platform is None)

    if platform is None:
        jx = jax.make_jaxpr(f)(x, q)
    else:
        with lowering_target(platform):
            jx = jax.make_jaxpr(f)(x, q)
    [eqn] = list(_pallas_eqns(jx.jaxpr))
    gm = eqn.params["grid_mapping"]
    out_maps = gm.block_mappings[gm.num_inputs:]
    for bm in out_maps:
        idx = bm.index_map_jaxpr
        seen = set()
        for point in itertools.product(*(range(g) for g in gm.grid)):
            block = tuple(int(v) for v in jax.core.eval_jaxpr(idx.jaxpr, idx.consts, *point))
            assert block not in seen, f"grid point {point} revisits output block {block}"
            seen.add(block)


@pytest.mark.parametrize("seed", (0, 2, 3))
@pytest.mark.parametrize("spec,k,n,m,cfg", [
    ("int4@g32", 256, 128, 20, PackedMatmulConfig(16, 32, 64, split_k=2)),
    ("int8@channel", 256, 96, 5, PackedMatmulConfig(16, 32, 32, split_k=4)),
    ("nvfp4", 128, 64, 17, None),
    ("int4@g64+asym", 256, 64, 3, PackedMatmulConfig(16, 32, 64, split_k=4)),
])
def test_programs_are_independent(spec, k, n, m, cfg, seed):
    # The TPU interpret mode with every grid axis "parallel": programs run in a random order on
    # NaN-initialized buffers, so a kernel relying on grid order or on output memory it did
    # not write (e.g. the old K-grid accumulation: relative error 0.5-0.7 here) fails.
    from jax.experimental.pallas import tpu as pltpu
    q = make(spec, k=k, n=n)
    x = make_x(m, k, jnp.bfloat16, seed=m)
    params = pltpu.InterpretParams(random_seed=seed, uninitialized_memory="nan")
    y = jax.jit(lambda a, b: packed_matmul(a, b, implementation="pallas", interpret=params,
                                           config=cfg))(x, q)
    assert_matches(y, x, dequantize(q))


@pytest.mark.parametrize("spec", ("int4@g32", "int8@channel", "mxfp4", "nvfp4"))
def test_odd_shapes_and_split_k(spec, interpret):
    # N = 96 (block_n 32, three column tiles), M = 37 (partial last M block, zero-padded),
    # split-K partial products summed after the kernel, nibble order at tile edges.
    q = make(spec, k=512, n=96)
    x = make_x(37, 512, jnp.float16, seed=3)
    for cfg in (None, PackedMatmulConfig(16, 32, 128, split_k=2),
                PackedMatmulConfig(32, 32, 64, num_warps=8, num_stages=2, split_k=8)):
        assert_matches(run_pallas(x, q, interpret, config=cfg), x, dequantize(q))


def test_nibble_order_and_sign_extension(interpret):
    # Every 4-bit code in every column position: byte = c0 | c1 << 4 with c0 the even column;
    # codes 8..15 are negative (two's complement), uint8 shifts are logical.
    k, n = 64, 32
    vals = (np.arange(k * n).reshape(k, n) * 7 % 15 - 7).astype(np.float32)  # -7..7 (int4)
    q = quantize(jnp.asarray(vals), "int4@g32", axis=0)
    wd = np.asarray(dequantize(q))
    x = make_x(16, k, jnp.float32)
    assert_matches(run_pallas(x, q, interpret), x, wd)
    eye = jnp.eye(k, dtype=jnp.float32)[:16]
    y = np.asarray(run_pallas(eye, q, interpret))  # rows of dequantize(w), column by column
    np.testing.assert_array_equal(y, wd[:16])
