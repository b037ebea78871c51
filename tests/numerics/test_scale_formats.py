"""Scales stored in a low-precision float format round-trip through quantize/dequantize."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import bitscale as bs


@pytest.mark.parametrize("spec, sdtype, ml", [("int4@g32:bf16", jnp.uint16, ml_dtypes.bfloat16),
                                              ("fp8_e4m3@g32:fp16", jnp.uint16, np.float16),
                                              ("int8@g16:ue4m3", jnp.uint8, None)])
def test_scale_format_storage(spec, sdtype, ml):
    x = 5.0 * jax.random.normal(jax.random.key(0), (8, 64))
    q = bs.quantize(x, spec)
    assert q.scales.dtype == sdtype
    np.testing.assert_array_equal(np.asarray(bs.dequantize(q)), np.asarray(bs.fake_quant(x, spec)))
    if ml is not None:
        # The stored scale is amax / max_elem rounded to nearest-even in the scale format.
        fmt = bs.resolve_spec(spec).elem
        amax = np.abs(np.asarray(x)).reshape(8, 2, 32).max(-1)
        ratio = (amax / np.float32(fmt.max_value if hasattr(fmt, "ebits") else fmt.qmax))
        expect = ratio.astype(np.float32).astype(ml).view(np.uint16)
        np.testing.assert_array_equal(np.asarray(q.scales), expect)
