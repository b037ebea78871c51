"""Element casts and bfloat16 / float16 input and output on 4.3M float32 bit patterns vs ml_dtypes.

Every cast goes through bitscale's bit-level path (no XLA convert that a backend may elide); here
it is compared with ml_dtypes' casts of the saturated input, the independent reference.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import bitscale as bs
from bitscale.numerics import elementwise as E

# Every 997th float32 bit pattern (all exponents, signs, NaN payloads, subnormals) plus the grid
# points, midpoints and their neighbours of each 8/16-bit format.
_PATTERNS = np.arange(0, 2**32, 997, dtype=np.uint64).astype(np.uint32)
_DTYPES = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2,
           "bf16": ml_dtypes.bfloat16, "fp16": np.float16}


def _dense_probes(dtype) -> np.ndarray:
    bits = 16 if np.dtype(dtype).itemsize == 2 else 8
    codes = np.arange(2**bits, dtype=np.uint16 if bits == 16 else np.uint8)
    vals = codes.view(dtype).astype(np.float32)
    vals = np.sort(vals[np.isfinite(vals)])
    mids = ((vals[1:].astype(np.float64) + vals[:-1]) / 2).astype(np.float32)
    probes = np.concatenate([vals, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
    return probes.view(np.uint32)


def _same(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))


@pytest.mark.parametrize("name", sorted(_DTYPES))
def test_cast_equals_ml_dtypes_on_dense_patterns(name):
    dtype = _DTYPES[name]
    x = np.concatenate([_PATTERNS, _dense_probes(np.dtype(dtype))]).view(np.float32)
    got = np.asarray(jax.jit(lambda v: bs.fake_quant(v, name))(jnp.asarray(x)))
    top = np.float32(bs.resolve_spec(name).max_value)
    keeps_inf = np.isinf(x) & bs.resolve_spec(name).has_inf
    with np.errstate(invalid="ignore"):
        want = np.where(keeps_inf, x, np.clip(x, -top, top).astype(dtype).astype(np.float32))
    same = _same(got, want)
    assert same.all(), (x[~same][:5], got[~same][:5], want[~same][:5])
    assert (got[np.isnan(got)].view(np.uint32) == 0x7FC00000).all()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_to_f32_and_from_f32_equal_ml_dtypes(dtype):
    np_dtype = np.dtype(dtype)
    codes = np.arange(2**16, dtype=np.uint16)
    x16 = codes.view(np_dtype)
    widened = np.asarray(E.to_f32(jnp.asarray(x16)))
    assert _same(widened, x16.astype(np.float32)).all()
    x = np.concatenate([_PATTERNS, _dense_probes(np_dtype)]).view(np.float32)
    finite_max = np.float32(ml_dtypes.finfo(np_dtype).max)
    narrowed = np.asarray(jax.jit(lambda v: E.from_f32(v, dtype))(jnp.asarray(x)))
    assert narrowed.dtype == np_dtype
    with np.errstate(invalid="ignore"):
        want = np.where(np.isinf(x), x, np.clip(x, -finite_max, finite_max)).astype(np_dtype)
    same = _same(narrowed.astype(np.float32), want.astype(np.float32))
    assert same.all(), (x[~same][:5], narrowed[~same][:5], want[~same][:5])
    # saturate=False is the IEEE conversion (finite overflow to Inf), as numpy / ml_dtypes do it.
    ieee = np.asarray(jax.jit(lambda v: E.from_f32(v, dtype, saturate=False))(jnp.asarray(x)))
    with np.errstate(invalid="ignore", over="ignore"):
        want = x.astype(np_dtype)
    same = _same(ieee.astype(np.float32), want.astype(np.float32))
    assert same.all(), (x[~same][:5], ieee[~same][:5], want[~same][:5])


@pytest.mark.parametrize("spec", ["int8@channel", "nvfp4", "mxfp4", "fp8_e4m3"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_inputs_round_once_into_their_dtype(spec, dtype):
    """fake_quant of a bf16/fp16 array is the float32 result of its exact widening, rounded
    to nearest even into the input dtype."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 64)) * 3).astype(np.dtype(dtype))
    got = np.asarray(bs.fake_quant(jnp.asarray(x), spec))
    f32 = np.asarray(bs.fake_quant(jnp.asarray(x.astype(np.float32)), spec))
    assert got.dtype == np.dtype(dtype)
    assert _same(got.astype(np.float32), f32.astype(np.dtype(dtype)).astype(np.float32)).all()
