"""Every spec's XLA path on ties, float32 subnormals, NaN, Inf, zero / tiny / huge groups,
bit for bit against the independent numpy implementation in `np_reference`.

These vectors are where backends differ (subnormal flushing, approximate division, NaN payloads,
FMA contraction), so the same comparison on a GPU or TPU (`python -m bitscale.selfcheck`) shows
the device computes the documented values, not just the CPU's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitscale as bs
from bitscale import selfcheck

from tests.numerics import np_reference as ref

X = selfcheck.make_input(32, 256, seed=3)


def _assert_bits(got, want, spec):
    got, want = np.asarray(got), np.asarray(want, np.float32)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    if not same.all():
        idx = np.argwhere(~same)[:4]
        detail = [(tuple(int(v) for v in i), X[tuple(i)], got[tuple(i)], want[tuple(i)])
                  for i in idx]
        raise AssertionError(f"{spec}: {(~same).sum()} of {same.size} differ; "
                             f"(index, x, bitscale, reference): {detail}")
    assert (got[np.isnan(got)].view(np.uint32) == 0x7FC00000).all(), "non-canonical NaN"


@pytest.mark.parametrize("spec", selfcheck.ALL_SPECS)
def test_fake_quant_edges_match_numpy_reference(spec):
    got = jax.jit(lambda a: bs.fake_quant(a, spec))(jnp.asarray(X))
    _assert_bits(got, ref.fake_quant(X, ref.parse(spec)), spec)


@pytest.mark.parametrize("spec", ["int8@channel", "nvfp4", "mxfp4", "int4@g32+asym",
                                  "fp8_e4m3@channel"])
def test_other_axis_matches_numpy_reference(spec):
    got = bs.fake_quant(jnp.asarray(X), spec, axis=0)
    want = ref.fake_quant(X.T.copy(), ref.parse(spec)).T
    _assert_bits(got, want, spec)


@pytest.mark.parametrize("spec", ["int8@channel", "nvfp4", "int4@g32+asym", "ternary",
                                  "int8@channel+mse", "mxfp4+rceil"])
def test_dequantize_of_quantize_matches_numpy_reference(spec):
    q = bs.quantize(jnp.asarray(X), spec)
    want = ref.fake_quant(X, ref.parse(spec))
    got = np.asarray(bs.dequantize(q))
    finite = ~np.isnan(want)  # quantize stores NaN inputs of NaN-less grids as codes
    _assert_bits(np.where(finite, got, np.nan), want, spec)
