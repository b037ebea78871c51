"""The XLA-convert fast path of element casts equals the bit-level reference on sampled float32 bits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale.numerics import elementwise as E
from bitscale.numerics.formats import FLOAT_FORMATS

jax.config.update("jax_numpy_rank_promotion", "raise")

# Every 997th float32 bit pattern (4.3M values: all exponents, signs, NaN payloads, subnormals)
# plus the exact grid points, midpoints and their neighbours of each 8/16-bit format.
_PATTERNS = np.arange(0, 2**32, 997, dtype=np.uint64).astype(np.uint32)


def _dense_probes(dtype) -> np.ndarray:
    bits = 16 if np.dtype(dtype).itemsize == 2 else 8
    codes = np.arange(2**bits, dtype=np.uint16 if bits == 16 else np.uint8)
    vals = codes.view(dtype).astype(np.float32)
    vals = np.sort(vals[np.isfinite(vals)])
    mids = ((vals[1:].astype(np.float64) + vals[:-1]) / 2).astype(np.float32)
    probes = np.concatenate([vals, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
    return probes.view(np.uint32)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "bf16", "fp16"])
def test_native_cast_equals_bit_reference(name):
    fmt = FLOAT_FORMATS[name]
    dtype = E.native_dtype(fmt)
    assert dtype is not None
    bits = np.concatenate([_PATTERNS, _dense_probes(np.dtype(dtype))])
    x = jnp.asarray(bits.view(np.float32))
    fast = np.asarray(jax.jit(lambda v: E.cast_float_native(v, fmt))(x))
    ref = np.asarray(jax.jit(lambda v: E.rounded_to_f32(E.round_float(v, fmt)))(x))
    same = (fast.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(fast) & np.isnan(ref))
    assert same.all(), (bits[~same][:5], fast[~same][:5], ref[~same][:5])
