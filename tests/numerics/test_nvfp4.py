"""NVFP4 (E2M1 elements, blocks of 16, UE4M3 block scales, optional FP32 per-tensor scale).

References:
  * tests/numerics/vectors/nvfp4.npz: torchao 0.18.0 `nvfp4_quantize` / `NVFP4Tensor` outputs (see
    REFERENCE_VECTORS.md): `two_level__*` (spec "nvfp4"), `single__*` ("nvfp4_single"),
    `random_*` (x_random), `special_single__*` (x_special).
  * hand-computed blocks from the NVIDIA recipe:
      s_t = amax_tensor / (448 * 6)                     (two-level only; else s_t = 1)
      s_b = e4m3(clamp(amax_b / 6 / s_t, 2^-6, 448))
      q   = e2m1(clamp(x * (1 / s_t) / s_b, -6, 6)),  y = q * (s_t * s_b)
  * an independent float32 numpy + ml_dtypes transcription of that recipe (`ref_nvfp4`).
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import bitscale as bs
from bitscale.numerics.packing import unpack_codes

DATA = pathlib.Path(__file__).parent / "vectors"
BLOCK = 16
NAN = float("nan")
INF = float("inf")
F32 = np.float32

# reference prefix -> (input key, spec)
CASES = {
    "two_level": ("x", "nvfp4"),
    "single": ("x", "nvfp4_single"),
    "random_two_level": ("x_random", "nvfp4"),
    "random_single": ("x_random", "nvfp4_single"),
    "special_single": ("x_special", "nvfp4_single"),
}

# UE4M3 codes used below (bias 7): 1.0 = 0x38, 1.125 = 0x39, 1.5 = 0x3C, 2.0 = 0x40,
# 448 = 0x7E, 2^-6 = 0x08, NaN = 0x7F
E4M3_1, E4M3_1_125, E4M3_1_5, E4M3_2, E4M3_448, E4M3_MIN, E4M3_NAN = (
    0x38, 0x39, 0x3C, 0x40, 0x7E, 0x08, 0x7F)


@functools.lru_cache(maxsize=None)
def _data():
    with np.load(DATA / "nvfp4.npz") as d:
        return {k: d[k] for k in d.files}


@functools.partial(jax.jit, static_argnames=("spec", "axis"))
def _run(x, spec, axis=-1):
    q = bs.quantize(x, spec, axis=axis)
    return bs.fake_quant(x, spec, axis=axis), bs.dequantize(q), q


def _same(got, want, signed_zeros=True):
    got = np.asarray(got, F32)
    want = np.asarray(want, F32)
    assert got.shape == want.shape, (got.shape, want.shape)
    ok = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    if not signed_zeros:
        ok |= (got == 0) & (want == 0)
    return ok


def _assert_same(got, want, signed_zeros=True, what=""):
    ok = _same(got, want, signed_zeros)
    if not ok.all():
        got = np.asarray(got, F32)
        want = np.asarray(want, F32)
        idx = np.argwhere(~ok)[:8]
        details = [(tuple(int(v) for v in i), float(got[tuple(i)]), float(want[tuple(i)]))
                   for i in idx]
        raise AssertionError(f"{what}: {int((~ok).sum())} mismatches (index, got, want): {details}")


def ref_nvfp4(x, two_level):
    """Float32 numpy transcription of the recipe (torchao op order: reciprocal multiplies).

    Returns (y, block scale codes uint8, tensor scale or None); blocks along the last axis.
    """
    x = np.asarray(x, F32)
    xb = x.reshape(-1, BLOCK)
    amax_b = np.max(np.abs(xb), axis=1, keepdims=True)  # NaN propagates
    s_b = amax_b / F32(6.0)
    s_t = None
    if two_level:
        s_t = F32(np.max(np.abs(x)) / F32(448.0 * 6.0))
        s_b = s_b / s_t
    s_b8 = np.clip(s_b, F32(2.0**-6), F32(448.0)).astype(ml_dtypes.float8_e4m3fn)
    s_b = s_b8.astype(F32)
    enc = (F32(1.0) / s_t) / s_b if two_level else F32(1.0) / s_b
    q = np.clip(xb * enc, F32(-6.0), F32(6.0)).astype(ml_dtypes.float4_e2m1fn).astype(F32)
    dec = s_t * s_b if two_level else s_b
    y = (q * dec).astype(F32)
    y = np.where(np.isnan(s_b), F32(np.nan), y).reshape(x.shape)  # fp4 has no NaN code
    codes = s_b8.view(np.uint8).reshape(x.shape[:-1] + (x.shape[-1] // BLOCK,))
    return y, codes, s_t


# --------------------------------------------------------------------------
# 1. torchao reference vectors
# --------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", list(CASES))
def test_matches_torchao_reference(prefix):
    d = _data()
    xkey, spec = CASES[prefix]
    x = d[xkey]
    y, yd, q = _run(jnp.asarray(x), spec)
    _assert_same(y, d[f"{prefix}__y"], signed_zeros=True, what=f"{prefix} fake_quant")
    _assert_same(yd, d[f"{prefix}__y"], signed_zeros=True, what=f"{prefix} dequantize")
    scales = np.asarray(q.scales)
    assert scales.dtype == np.uint8 and scales.shape == (x.shape[0], x.shape[1] // BLOCK)
    np.testing.assert_array_equal(scales, d[f"{prefix}__scale_e4m3_bits"])
    if prefix.endswith("two_level"):
        ts = np.asarray(q.tensor_scale)
        assert ts.dtype == np.float32 and ts.size == 1
        assert ts.reshape(()).view(np.uint32) == d[f"{prefix}__per_tensor_scale"].view(np.uint32)[0]
    else:
        assert q.tensor_scale is None
    codes = np.asarray(unpack_codes(q.codes, 4, x.shape[1]))
    want = d[f"{prefix}__codes"]
    # A block whose scale is NaN (0x7F) is all NaN whatever its element codes are: the codes of
    # such a block carry no information (torchao stores fp4 code 4 there), so they are skipped.
    nan_block = np.repeat(d[f"{prefix}__scale_e4m3_bits"] == E4M3_NAN, BLOCK, axis=1)
    bad = (codes != want) & ~nan_block
    assert not bad.any(), (f"{prefix} codes: got {codes[bad][:8]}, want {want[bad][:8]} at "
                           f"{np.argwhere(bad)[:8].tolist()}")


@pytest.mark.parametrize("prefix", list(CASES))
def test_numpy_reference_reproduces_torchao(prefix):
    """Self-check of `ref_nvfp4` (used below on random inputs) on the torchao vectors."""
    d = _data()
    xkey, spec = CASES[prefix]
    y, codes, s_t = ref_nvfp4(d[xkey], spec == "nvfp4")
    _assert_same(y, d[f"{prefix}__y"], what=f"ref_nvfp4 {prefix}")
    np.testing.assert_array_equal(codes, d[f"{prefix}__scale_e4m3_bits"])


def test_random_against_numpy_reference():
    rng = np.random.default_rng(0)
    rows, cols = 32, 128
    mags = 10.0 ** rng.uniform(-6, 5, size=(rows, cols // BLOCK, 1))
    x = (rng.standard_normal((rows, cols // BLOCK, BLOCK)) * mags).reshape(rows, cols)
    x[::3] = rng.standard_t(2, size=(len(x[::3]), cols))
    x[1] = np.round(4 * rng.standard_normal(cols)) / 4  # ties
    x = x.astype(F32)
    for spec, two in (("nvfp4", True), ("nvfp4_single", False)):
        y, yd, q = _run(jnp.asarray(x), spec)
        ry, rcodes, rts = ref_nvfp4(x, two)
        _assert_same(y, ry, what=f"{spec} random")
        _assert_same(yd, y, what=f"{spec} dequantize(quantize) random")
        np.testing.assert_array_equal(np.asarray(q.scales), rcodes)
        if two:
            assert np.asarray(q.tensor_scale).reshape(()) == rts


def _near_tie_tensor(rng, two_level):
    """[4, 64] tensor whose elements sit within 2 ulps of fp4 ties on each block's scaled grid."""
    t_amax = F32(10.0 ** rng.uniform(-3, 3))
    s_t = F32(t_amax / F32(448.0 * 6.0)) if two_level else F32(1.0)
    s_b = rng.integers(8, 126, (4, 4)).astype(np.uint8).view(ml_dtypes.float8_e4m3fn).astype(F32)
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], F32)
    t = rng.choice(ties, (4, 4, BLOCK)) * rng.choice([-1, 1], (4, 4, BLOCK))
    x = (t * (s_t * s_b)[..., None]).astype(F32)
    nudge = rng.integers(-2, 3, x.shape)
    x = (x.view(np.int32) + np.where(x >= 0, nudge, -nudge).astype(np.int32)).view(F32)
    x[..., 0] = (F32(6.0) * s_t * s_b).astype(F32)  # block amax -> s_b
    x = x.reshape(4, 64)
    if two_level:
        x[0, :BLOCK] = 0.0
        x[0, 0] = t_amax  # tensor amax -> s_t
    return x


@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_single"])
def test_near_ties_follow_reciprocal_multiplication(spec):
    """Encode as x * ((1/s_t)/s_b) (two-level) or x * (1/s_b) (single), like torchao / MSLK.

    Near fp4 ties the operation order decides the rounding; the check that a different order
    (x / (s_t*s_b)) changes some results makes sure the inputs are sensitive to it.
    """
    two = spec == "nvfp4"
    rng = np.random.default_rng(7)
    differs_from_division = 0
    for _ in range(20):  # same shape: one compile
        x = _near_tie_tensor(rng, two)
        y, yd, q = _run(jnp.asarray(x), spec)
        ry, rcodes, _ = ref_nvfp4(x, two)
        _assert_same(y, ry, what=f"{spec} near ties")
        _assert_same(yd, y, what=f"{spec} near ties dequantize")
        np.testing.assert_array_equal(np.asarray(q.scales), rcodes)
        # alternative op order: plain division by the decode scale
        s_b = rcodes.reshape(-1, 1).view(ml_dtypes.float8_e4m3fn).astype(F32)
        s_t = F32(np.max(np.abs(x)) / F32(448.0 * 6.0)) if two else F32(1.0)
        v = x.reshape(-1, BLOCK) / (s_t * s_b)
        alt = np.clip(v, -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(F32) * (s_t * s_b)
        differs_from_division += int((~_same(alt.reshape(x.shape), ry)).sum())
    assert differs_from_division > 0


# --------------------------------------------------------------------------
# 2. Hand-computed cases (values written out by hand from the recipe)
# --------------------------------------------------------------------------
def _blk(*vals):
    assert len(vals) <= BLOCK
    return list(vals) + [0.0] * (BLOCK - len(vals))


SINGLE_CASES = [
    # amax 6 -> s_b = 1: fp4 grid values exact
    (_blk(0, .5, 1, 1.5, 2, 3, 4, 6, -.5, -1, -1.5, -2, -3, -4, -6),
     _blk(0, .5, 1, 1.5, 2, 3, 4, 6, -.5, -1, -1.5, -2, -3, -4, -6), E4M3_1),
    # ties at half fp4 steps -> even code (s_b = 1)
    (_blk(6, .25, .75, 1.25, 1.75, 2.5, 3.5, 5, -.25, -.75, -1.25, -1.75, -2.5, -3.5, -5),
     _blk(6, 0, 1, 1, 2, 2, 4, 4, -0.0, -1, -1, -2, -2, -4, -4), E4M3_1),
    # amax 6.3: 6.3/6 = 1.05 -> e4m3 rounds down to 1.0 -> 6.3 clamps to 6
    (_blk(6.3, -2.6, 2.4, 0.3, 0.2, 5.1, 1.2), _blk(6, -3, 2, 0.5, 0, 6, 1), E4M3_1),
    # amax 6.5: 6.5/6 = 1.083 -> s_b = 1.125 -> 6.5/1.125 = 5.78 -> 6 -> 6.75
    (_blk(6.5, 1.0, 2.0, -3.0, 0.2, 0.3), _blk(6.75, 1.125, 2.25, -3.375, 0.0, 0.5625),
     E4M3_1_125),
    # amax 12 -> s_b = 2
    (_blk(12, 5, -7, 0.6), _blk(12, 4, -8, 1.0), E4M3_2),
    # amax 9 -> s_b = 1.5 (not a power of two); 3.75 / 1.5 = 2.5 is a tie -> 2 -> 3.0
    (_blk(9, 3, 0.75, 2.25, -4.5, 3.75), _blk(9, 3, 0.75, 2.25, -4.5, 3.0), E4M3_1_5),
    # all zero -> zeros, s_b clamped up to 2^-6
    ([0.0] * BLOCK, [0.0] * BLOCK, E4M3_MIN),
    # amax 0.01 -> 0.00167 clamps to 2^-6: outputs on the 2^-7 grid
    (_blk(0.01, 0.005, 0.003, -0.01), _blk(2.0**-7, 2.0**-7, 0.0, -2.0**-7), E4M3_MIN),
    # amax 1e4 -> 1667 clamps to 448 -> saturate at +-6*448 = +-2688
    (_blk(1e4, -1e4, 500, 100), _blk(2688, -2688, 448, 0.0), E4M3_448),
    # NaN in the block -> the whole block is NaN (scale NaN)
    (_blk(1.0, NAN, 2.0), [NAN] * BLOCK, E4M3_NAN),
]


def test_hand_computed_single_level():
    x = np.array([c[0] for c in SINGLE_CASES], F32)
    want = np.array([c[1] for c in SINGLE_CASES], F32)
    want_codes = np.array([c[2] for c in SINGLE_CASES], np.uint8)[:, None]
    y, yd, q = _run(jnp.asarray(x), "nvfp4_single")
    _assert_same(y, want, signed_zeros=False, what="nvfp4_single hand cases")
    _assert_same(yd, want, signed_zeros=False, what="nvfp4_single hand cases (dequantize)")
    np.testing.assert_array_equal(np.asarray(q.scales), want_codes)
    assert q.tensor_scale is None
    ry, rcodes, _ = ref_nvfp4(x, False)
    _assert_same(ry, want, signed_zeros=False, what="ref_nvfp4 self-check")
    np.testing.assert_array_equal(rcodes, want_codes)


def test_hand_computed_two_level():
    # tensor amax 5376 = 2 * 448 * 6 -> s_t = 2
    x = np.array([
        _blk(5376, 1000, -5376),  # amax_b/6/s_t = 448 -> s_b = 448; 1000/896 = 1.1 -> 1 -> 896
        _blk(12, 5, -7, 0.6),  # s_b = 1: x/2 = 6, 2.5, -3.5, 0.3 -> 6, 2, -4, 0.5 -> *2
        [0.0] * BLOCK,  # s_b = 2^-6
        _blk(0.01, 0.003, -0.01),  # s_b = 2^-6: x*32 = 0.32 -> 0.5 -> 0.5 * 2 * 2^-6
    ], F32)
    want = np.array([
        _blk(5376, 896, -5376),
        _blk(12, 4, -8, 1.0),
        [0.0] * BLOCK,
        _blk(2.0**-6, 0.0, -2.0**-6),
    ], F32)
    want_codes = np.array([[E4M3_448], [E4M3_1], [E4M3_MIN], [E4M3_MIN]], np.uint8)
    y, yd, q = _run(jnp.asarray(x), "nvfp4")
    assert np.asarray(q.tensor_scale).reshape(()) == 2.0
    _assert_same(y, want, signed_zeros=False, what="nvfp4 two-level hand cases")
    _assert_same(yd, want, signed_zeros=False, what="nvfp4 two-level hand cases (dequantize)")
    np.testing.assert_array_equal(np.asarray(q.scales), want_codes)


def test_all_zero_tensor_gives_zeros():
    """All-zero tensor: no NaN from s_t = 0 (zeros in -> zeros out, block scales 2^-6)."""
    x = np.zeros((2, 32), F32)
    x[1, ::3] = -0.0
    for spec in ("nvfp4", "nvfp4_single"):
        y, yd, q = _run(jnp.asarray(x), spec)
        assert np.all(np.asarray(y) == 0) and np.all(np.asarray(yd) == 0), spec
        np.testing.assert_array_equal(np.asarray(q.scales), E4M3_MIN)
        if spec == "nvfp4":
            assert np.isfinite(np.asarray(q.tensor_scale)).all()


def test_two_level_equals_single_level_when_tensor_scale_is_one():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 64)) * 10.0 ** rng.uniform(-3, 2, size=(8, 1))).astype(F32)
    x = np.clip(x, -2000, 2000)
    x[3, 17] = -2688.0  # tensor amax = 448 * 6 -> s_t = 1
    x = x.astype(F32)
    y2, yd2, q2 = _run(jnp.asarray(x), "nvfp4")
    y1, yd1, q1 = _run(jnp.asarray(x), "nvfp4_single")
    assert np.asarray(q2.tensor_scale).reshape(()) == 1.0
    _assert_same(y2, y1, what="two-level vs single-level at s_t = 1")
    _assert_same(yd2, yd1, what="two-level vs single-level at s_t = 1 (dequantize)")
    np.testing.assert_array_equal(np.asarray(q2.scales), np.asarray(q1.scales))
    np.testing.assert_array_equal(np.asarray(q2.codes), np.asarray(q1.codes))


# --------------------------------------------------------------------------
# 3. Round trip, axis, errors
# --------------------------------------------------------------------------
def test_dequantize_quantize_equals_fake_quant_special_inputs():
    d = _data()
    for xkey in ("x", "x_random", "x_special"):
        for spec in ("nvfp4", "nvfp4_single"):
            y, yd, _ = _run(jnp.asarray(d[xkey]), spec)
            _assert_same(yd, y, what=f"{spec} on {xkey}")
    # x_special has a NaN block: two-level -> the per-tensor amax is NaN -> everything NaN
    y, _, q = _run(jnp.asarray(d["x_special"]), "nvfp4")
    assert np.isnan(np.asarray(y)).all() and np.isnan(np.asarray(q.tensor_scale)).all()
    _assert_same(y, ref_nvfp4(d["x_special"], True)[0], what="two-level x_special vs ref")


def test_axis0_equals_last_axis_of_transpose():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((64, 8)) * 10.0 ** rng.uniform(-2, 2, size=(1, 8))).astype(F32)
    for spec in ("nvfp4", "nvfp4_single"):
        y0, yd0, q0 = _run(jnp.asarray(x), spec, axis=0)
        yt, _, qt = _run(jnp.asarray(x.T), spec)
        _assert_same(y0, np.asarray(yt).T, what=f"{spec} axis=0")
        _assert_same(yd0, y0, what=f"{spec} axis=0 dequantize")
        np.testing.assert_array_equal(np.asarray(q0.scales), np.asarray(qt.scales).T)


def test_block_must_divide_axis():
    x = jnp.ones((4, 24), jnp.float32)
    for spec in ("nvfp4", "nvfp4_single"):
        with pytest.raises(ValueError) as e:
            bs.fake_quant(x, spec)
        assert "16" in str(e.value) and "24" in str(e.value), str(e.value)
        with pytest.raises(ValueError):
            bs.quantize(x, spec)
    with pytest.raises(ValueError):
        bs.fake_quant(jnp.ones((40, 16), jnp.float32), "nvfp4", axis=0)
