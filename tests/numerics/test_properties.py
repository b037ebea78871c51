"""Property tests (hypothesis) of element casts on arbitrary float32 inputs."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import bitscale as bs

ML = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2,
      "fp6_e3m2": ml_dtypes.float6_e3m2fn, "fp6_e2m3": ml_dtypes.float6_e2m3fn,
      "fp4_e2m1": ml_dtypes.float4_e2m1fn, "bf16": ml_dtypes.bfloat16}
_CASTS = {name: jax.jit(lambda v, n=name: bs.fake_quant(v, n)) for name in ML}

float32_arrays = arrays(np.float32, 64, elements=st.floats(width=32, allow_nan=True,
                                                           allow_infinity=True,
                                                           allow_subnormal=True))


def _ml_dtypes_saturating(x, name):
    fmt = bs.element_format(name)
    ref = np.clip(x, -fmt.max_value, fmt.max_value).astype(ML[name]).astype(np.float32)
    if fmt.has_inf:
        ref = np.where(np.isinf(x), x, ref)
    return np.where(np.isnan(x), np.float32(np.nan), ref)


@settings(max_examples=40, deadline=None)
@given(x=float32_arrays, name=st.sampled_from(sorted(ML)))
def test_cast_equals_ml_dtypes_saturating(x, name):
    y = np.asarray(_CASTS[name](jnp.asarray(x)))
    ref = _ml_dtypes_saturating(x, name)
    same = (y.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(y) & np.isnan(ref))
    assert same.all(), (x[~same], y[~same], ref[~same])


@settings(max_examples=30, deadline=None)
@given(x=float32_arrays, name=st.sampled_from(sorted(ML)))
def test_cast_is_monotone_and_idempotent(x, name):
    x = np.sort(x[~np.isnan(x)])
    y = np.asarray(_CASTS[name](jnp.asarray(np.pad(x, (0, 64 - x.size), mode="edge")
                                           if x.size else np.zeros(64, np.float32))))
    head = y[: max(x.size, 1)]
    assert np.all(head[1:] >= head[:-1])
    again = np.asarray(_CASTS[name](jnp.asarray(y)))
    np.testing.assert_array_equal(again.view(np.uint32), y.view(np.uint32))
