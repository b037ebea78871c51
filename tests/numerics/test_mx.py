"""OCP MX block formats (MXFP8/MXFP6/MXFP4/MXINT8) against references and the OCP MX v1.0 rule.

References:
  * tests/numerics/vectors/mx_<fmt>.npz: microsoft/microxcaling (`microxcaling_even`, `microxcaling_scale_exp`)
    and torchao 0.18.0 (`torchao_{FLOOR,CEIL,EVEN,RCEIL}` + scales + codes);
    see tests/numerics/vectors/REFERENCE_VECTORS.md.
  * hand-computed blocks from the OCP MX v1.0 conversion rule (section 6.3):
      X = 2^(floor(log2 amax) - emax_elem),  P_i = RNE(V_i / X) clamped to the element max normal;
    emax_elem: e4m3 8, e5m2 15, e3m2 4, e2m3 2, e2m1 2, int8 0.
  * an independent numpy / ml_dtypes implementation of the same rule (`ref_mx`).
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

# spec name -> reference file stem
MX_FILES = {
    "mxfp8_e4m3": "mx_mxfp8_e4m3",
    "mxfp8_e5m2": "mx_mxfp8_e5m2",
    "mxfp6_e3m2": "mx_mxfp6_e3m2",
    "mxfp6_e2m3": "mx_mxfp6_e2m3",
    "mxfp4": "mx_mxfp4_e2m1",
    "mxint8": "mx_mxint8",
}
ALL_MX = tuple(MX_FILES)
FP_MX = tuple(n for n in ALL_MX if n != "mxint8")
EMAX = {"mxfp8_e4m3": 8, "mxfp8_e5m2": 15, "mxfp6_e3m2": 4, "mxfp6_e2m3": 2, "mxfp4": 2,
        "mxint8": 0}
ELEM_BITS = {"mxfp8_e4m3": 8, "mxfp8_e5m2": 8, "mxfp6_e3m2": 6, "mxfp6_e2m3": 6, "mxfp4": 4,
             "mxint8": 8}
ML_DTYPE = {
    "mxfp8_e4m3": ml_dtypes.float8_e4m3fn,
    "mxfp8_e5m2": ml_dtypes.float8_e5m2,
    "mxfp6_e3m2": ml_dtypes.float6_e3m2fn,
    "mxfp6_e2m3": ml_dtypes.float6_e2m3fn,
    "mxfp4": ml_dtypes.float4_e2m1fn,
}
ELEM_MAX = {"mxfp8_e4m3": 448.0, "mxfp8_e5m2": 57344.0, "mxfp6_e3m2": 28.0, "mxfp6_e2m3": 7.5,
            "mxfp4": 6.0, "mxint8": 127.0 / 64.0}
TORCHAO_MODES = ("FLOOR", "CEIL", "EVEN", "RCEIL")
BLOCK = 32
NAN = float("nan")
INF = float("inf")


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _spec_name(fmt, mode):
    return fmt if mode == "FLOOR" else f"{fmt}+{mode.lower()}"


@functools.partial(jax.jit, static_argnames=("spec", "axis"))
def _run(x, spec, axis=-1):
    """fake_quant, dequantize(quantize), scales and packed codes in one compiled call."""
    q = bs.quantize(x, spec, axis=axis)
    return bs.fake_quant(x, spec, axis=axis), bs.dequantize(q), q.scales, q.codes


@functools.lru_cache(maxsize=None)
def _load(stem):
    with np.load(DATA / f"{stem}.npz") as d:
        return {k: d[k] for k in d.files}


@functools.lru_cache(maxsize=None)
def _ref_file_results(spec):
    """Runs `spec` on the x of the MX reference file of its element format (cached)."""
    base = spec.split("+")[0]
    x = _load(MX_FILES[base])["x"]
    y, yd, s, c = _run(jnp.asarray(x), spec)
    return np.asarray(y), np.asarray(yd), np.asarray(s), np.asarray(c)


def _same(got, want, signed_zeros=True):
    """Element-wise bit equality of float32 arrays; NaN == NaN (any payload)."""
    got = np.asarray(got, np.float32)
    want = np.asarray(want, np.float32)
    assert got.shape == want.shape, (got.shape, want.shape)
    ok = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    if not signed_zeros:
        ok |= (got == 0) & (want == 0)
    return ok


def _assert_same(got, want, signed_zeros=True, mask=None, what=""):
    ok = _same(got, want, signed_zeros)
    if mask is not None:
        ok |= ~mask
    if not ok.all():
        got = np.asarray(got, np.float32)
        want = np.asarray(want, np.float32)
        idx = np.argwhere(~ok)[:8]
        details = [(tuple(int(v) for v in i), float(got[tuple(i)]), float(want[tuple(i)]))
                   for i in idx]
        raise AssertionError(f"{what}: {int((~ok).sum())} mismatches (index, got, want): {details}")


def _scale_exp_from_codes(codes):
    codes = np.asarray(codes)
    return np.where(codes == 255, np.nan, codes.astype(np.float32) - 127.0)


def _floor_log2(a):
    """floor(log2 a) for positive finite float64 a, exactly (frexp, no log2 rounding)."""
    _, e = np.frexp(a)
    return e - 1


def ref_mx(x, fmt):
    """Independent OCP MX (FLOOR) fake-quant along the last axis: numpy + ml_dtypes casts.

    Returns (y float32, scale exponent float64 with NaN for NaN/Inf blocks).
    """
    x = np.asarray(x, np.float32)
    xb = x.reshape(-1, BLOCK).astype(np.float64)
    amax = np.max(np.abs(xb), axis=1)  # NaN propagates
    bad = ~np.isfinite(amax)
    safe = np.where(bad | (amax == 0), 2.0**-126, amax)
    shared = np.maximum(_floor_log2(safe) - EMAX[fmt], -127).astype(np.float64)
    scale = np.exp2(shared)[:, None]
    v = xb / scale  # exact (power-of-two scale)
    if fmt == "mxint8":
        k = np.clip(np.round(v * 64.0), -127, 127)  # np.round is round-half-even
        y = k / 64.0 * scale
    else:
        m = ELEM_MAX[fmt]
        c = np.clip(v, -m, m).astype(np.float32).astype(ML_DTYPE[fmt])
        y = c.astype(np.float64) * scale
    y = np.where(bad[:, None], np.nan, y).astype(np.float32).reshape(x.shape)
    shared = np.where(bad, np.nan, shared).reshape(x.shape[:-1] + (x.shape[-1] // BLOCK,))
    return y, shared


def _blk(*vals):
    """A 32-element block: the given values followed by zeros."""
    assert len(vals) <= BLOCK
    return list(vals) + [0.0] * (BLOCK - len(vals))


# --------------------------------------------------------------------------
# 1. Reference vectors
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ALL_MX)
def test_matches_microxcaling_even(fmt):
    ref = _load(MX_FILES[fmt])
    y, _, scales, _ = _ref_file_results(fmt)
    # microxcaling returns +0 for -0: signed zeros excluded.
    _assert_same(y, ref["microxcaling_even"], signed_zeros=False, what=f"{fmt} values")
    assert scales.dtype == np.uint8
    assert scales.shape == (12, 4)
    _assert_same(_scale_exp_from_codes(scales), ref["microxcaling_scale_exp"],
                 what=f"{fmt} scale exponents")


@pytest.mark.parametrize("mode", TORCHAO_MODES)
@pytest.mark.parametrize("fmt", FP_MX)
def test_matches_torchao(fmt, mode):
    ref = _load(MX_FILES[fmt])
    spec = _spec_name(fmt, mode)
    y, _, scales, packed = _ref_file_results(spec)
    keep = np.ones((12, 128), bool)
    keep[2] = False  # inf / tiny-scale blocks: known torchao 0.18 defects
    _assert_same(y, ref[f"torchao_{mode}"], signed_zeros=True, mask=keep, what=f"{spec} values")
    keep_s = np.ones((12, 4), bool)
    keep_s[2] = False
    want_s = ref[f"torchao_{mode}_scale_e8m0"]
    bad = (scales != want_s) & keep_s
    assert not bad.any(), (f"{spec} scales: got {scales[bad]}, want {want_s[bad]} "
                           f"at {np.argwhere(bad).tolist()}")
    # element codes (fp8 bytes, fp6 6-bit codes, fp4 4-bit codes, unpacked)
    codes = np.asarray(unpack_codes(jnp.asarray(packed), ELEM_BITS[fmt], 128))
    want_c = ref[f"torchao_{mode}_codes"]
    # element codes of a block whose scale is NaN (255) carry no information
    nan_block = np.repeat(want_s == 255, BLOCK, axis=1)
    bad = (codes != want_c) & keep & ~nan_block
    assert not bad.any(), (f"{spec} codes: got {codes[bad][:8]}, want {want_c[bad][:8]} "
                           f"at {np.argwhere(bad)[:8].tolist()}")


@pytest.mark.parametrize("fmt", ALL_MX)
def test_dequantize_quantize_equals_fake_quant_reference_inputs(fmt):
    y, yd, scales, _ = _ref_file_results(fmt)
    _assert_same(yd, y, signed_zeros=True, what=f"{fmt} dequantize(quantize) vs fake_quant")
    # the reference input has NaN/Inf blocks: they are NaN in both, with scale code 255
    assert np.isnan(y).any() and (scales == 255).any()


# --------------------------------------------------------------------------
# 2. Hand-computed OCP MX v1.0 cases (expected values written out by hand)
#    Each case: (input block, expected block, expected E8M0 scale code).
# --------------------------------------------------------------------------
_NAN_BLOCKS = [
    (_blk(1.0, NAN, 2.0), [NAN] * BLOCK, 255),  # NaN in block -> all NaN
    (_blk(1.0, INF, -2.0), [NAN] * BLOCK, 255),  # +Inf -> all NaN
    (_blk(-INF, 3.0), [NAN] * BLOCK, 255),  # -Inf -> all NaN
    ([NAN] * BLOCK, [NAN] * BLOCK, 255),
]

HAND_CASES = {
    # E2M1 grid: 0, .5, 1, 1.5, 2, 3, 4, 6
    "mxfp4": [
        # amax 6: X = 2^(2-2) = 1, values on the grid unchanged
        (_blk(0, .5, 1, 1.5, 2, 3, 4, 6, -.5, -1, -1.5, -2, -3, -4, -6),
         _blk(0, .5, 1, 1.5, 2, 3, 4, 6, -.5, -1, -1.5, -2, -3, -4, -6), 127),
        # amax 7.96: X = 1 (floor rule) -> 7.96 clamps to 6
        (_blk(7.96, -7.96, 5.1, 2.4, 0.3, 0.2, -2.6),
         _blk(6, -6, 6, 2, 0.5, 0, -3), 127),
        # ties at half grid steps -> even code
        (_blk(6, .25, .75, 1.25, 1.75, 2.5, 3.5, 5, -.25, -.75, -1.25, -1.75, -2.5, -3.5, -5),
         _blk(6, 0, 1, 1, 2, 2, 4, 4, -0.0, -1, -1, -2, -2, -4, -4), 127),
        # outlier: amax 1000 -> X = 2^(9-2) = 128; 1000/128 = 7.8 -> 6 -> 768
        ([1000.0] + [0.3] * 20 + [40, -40, 31, 100, 200, 300, -0.31, 0.28, 0.33, -0.3, 0.32],
         [768.0] + [0.0] * 20 + [64, -64, 0, 128, 192, 256, -0.0, 0, 0, -0.0, 0], 134),
        # amax 0.75 -> X = 2^(-1-2) = 1/8
        (_blk(0.75, 0.1, 0.3, -0.7), _blk(0.75, 0.125, 0.25, -0.75), 124),
        # near FLT_MAX: amax 3e38 -> floor(log2) = 127 -> X = 2^125
        (_blk(3e38, 1e38, -1.5 * 2.0**127),
         _blk(6 * 2.0**125, 2.0**126, -6 * 2.0**125), 252),
        # amax 2^-126 -> shared exp -128 clamps to -127 (code 0); elements on the 2^-127 grid
        (_blk(2.0**-126, 3 * 2.0**-128, 2.0**-128, 2.0**-129, 3 * 2.0**-129, -2.0**-126),
         _blk(2.0**-126, 3 * 2.0**-128, 2.0**-128, 0.0, 2.0**-127, -2.0**-126), 0),
        ([0.0] * BLOCK, [0.0] * BLOCK, 0),  # all zero -> zeros, X = 2^-127
    ] + _NAN_BLOCKS,
    # MXINT8: k/64 * X, |k| <= 127
    "mxint8": [
        # amax 1.0 -> X = 1
        (_blk(1.0, -1.0, 0.5, 0.3, 3 / 128, 5 / 128, 0.5 + 1 / 128, -0.3, 1 / 256),
         _blk(1.0, -1.0, 0.5, 19 / 64, 2 / 64, 2 / 64, 0.5, -19 / 64, 0.0), 127),
        # amax 1.99 -> X = 1 -> 127.36 clamps to 127
        (_blk(1.99, -1.99, 1.5, 1 + 1 / 128, 255 / 128, 1 + 3 / 128),
         _blk(127 / 64, -127 / 64, 1.5, 1.0, 127 / 64, 1 + 2 / 64), 127),
        # amax 100 -> X = 2^6 = 64 -> integer grid, ties to even
        (_blk(100, 2.5, 3.5, -2.5, 0.4, 99.5, 98.5, -0.6),
         _blk(100, 2, 4, -2, 0, 100, 98, -1), 133),
        # amax 2^-130 -> X = 2^-127 (clamped) -> grid step 2^-133
        (_blk(2.0**-130, 2.0**-133 * 2.5, -(2.0**-134)),
         _blk(2.0**-130, 2.0**-132, 0.0), 0),
        ([0.0] * BLOCK, [0.0] * BLOCK, 1),  # all zero -> X = 2^-126 (code 1)
    ] + _NAN_BLOCKS,
    # E4M3: max 448; step 32 in [256, 448], 2 in [16, 32), 8 in [64, 128); subnormal 2^-9
    "mxfp8_e4m3": [
        # amax 448 -> X = 2^(8-8) = 1
        (_blk(448, -448, 272, 304, 17, 19, 2.0**-10, 3 * 2.0**-10, 5 * 2.0**-10, -2.0**-9),
         _blk(448, -448, 256, 320, 16, 20, 0.0, 2.0**-8, 2.0**-8, -2.0**-9), 127),
        # amax 509.44 -> X = 1 -> clamps to 448
        (_blk(500, 509.44, -480, 100), _blk(448, 448, -448, 96), 127),
        # outlier: amax 1e6 -> X = 2^(19-8) = 2048
        (_blk(1e6, 1.0, 3000, -2.0**-11), _blk(917504, 0.0, 3072, -0.0), 138),
        ([0.0] * BLOCK, [0.0] * BLOCK, 0),
    ] + _NAN_BLOCKS,
    # E5M2: 2 mantissa bits, max 57344, min subnormal 2^-16
    "mxfp8_e5m2": [
        # amax 1 -> X = 2^(0-15)
        (_blk(1.0, 1.1, 1.125, 1.375, 0.3, 2.0**-32, 3 * 2.0**-32, -1.125),
         _blk(1.0, 1.0, 1.0, 1.5, 0.3125, 0.0, 2.0**-30, -1.0), 112),
        # amax 61440 -> X = 1 -> 57344 (clamped, not inf)
        (_blk(61440, 60000, -61440, 3.0), _blk(57344, 57344, -57344, 3.0), 127),
        ([0.0] * BLOCK, [0.0] * BLOCK, 0),
    ] + _NAN_BLOCKS,
    # E3M2: max 28, step 4 in [16, 32), subnormal step 1/16
    "mxfp6_e3m2": [
        (_blk(30, 18, 22, 0.1, 0.03125, -17.0),
         _blk(28, 16, 24, 0.125, 0.0, -16.0), 127),
        ([0.0] * BLOCK, [0.0] * BLOCK, 0),
    ] + _NAN_BLOCKS,
    # E2M3: max 7.5, step .5 in [4, 8), subnormal step 1/8
    "mxfp6_e2m3": [
        (_blk(7.9, 4.25, 4.75, 0.0625, 0.1875, -7.76, 1.0625),
         _blk(7.5, 4.0, 5.0, 0.0, 0.25, -7.5, 1.0), 127),
        ([0.0] * BLOCK, [0.0] * BLOCK, 0),
    ] + _NAN_BLOCKS,
}


@pytest.mark.parametrize("fmt", ALL_MX)
def test_hand_computed_blocks(fmt):
    cases = HAND_CASES[fmt]
    x = np.array([c[0] for c in cases], np.float32)
    want = np.array([c[1] for c in cases], np.float32)
    want_codes = np.array([c[2] for c in cases], np.uint8)[:, None]
    y, yd, scales, _ = _run(jnp.asarray(x), fmt)
    _assert_same(y, want, signed_zeros=False, what=f"{fmt} fake_quant")
    _assert_same(yd, want, signed_zeros=False, what=f"{fmt} dequantize")
    scales = np.asarray(scales)
    assert scales.dtype == np.uint8
    np.testing.assert_array_equal(scales, want_codes)
    # the numpy / ml_dtypes reference agrees with the hand-written numbers
    ry, rs = ref_mx(x, fmt)
    _assert_same(ry, want, signed_zeros=False, what=f"{fmt} ref_mx self-check")
    _assert_same(np.where(np.isnan(rs), 255, rs + 127), want_codes, what="ref_mx scales")


# Alternative E8M0 scale rules (torchao ScaleCalculationMode), hand-computed:
#   ceil:  X = 2^(ceil(log2 amax) - emax);  rceil: X = 2^ceil(log2(amax / max_elem));
#   even:  amax rounded (half up) to the element mantissa width first, then the floor rule.
SCALE_RULE_CASES = {
    "mxfp4+ceil": [
        (_blk(7.96, 1.0, -3.1), _blk(8, 1, -3), 128),  # ceil(log2 7.96) = 3 -> X = 2
        (_blk(4.0, 1.3), _blk(4, 1.5), 127),  # exact power of two: X = 1
        (_blk(3.0, 0.7), _blk(3, 0.5), 127),
    ] + _NAN_BLOCKS,
    "mxfp4+rceil": [
        (_blk(7.96, 1.0, -3.1), _blk(8, 1, -3), 128),  # 7.96/6 = 1.33 -> X = 2
        (_blk(6.0, 1.3), _blk(6, 1.5), 127),  # 6/6 = 1 -> X = 1
        (_blk(3.0, 0.7), _blk(3, 0.75), 126),  # 3/6 = 0.5 -> X = 1/2
        (_blk(6.01, 1.3), _blk(6, 1.0), 128),  # just above 6 -> X = 2
    ] + _NAN_BLOCKS,
    "mxfp4+even": [
        (_blk(7.0, 1.0), _blk(8, 1), 128),  # 1.75 * 4 rounds to 8 -> X = 2; 3.5 ties to 4
        (_blk(5.9, 1.0), _blk(6, 1), 127),  # 1.475 * 4 -> 1.5 * 4 -> X = 1
        (_blk(6.9, 1.0), _blk(6, 1), 127),  # 1.725 * 4 -> 1.5 * 4 -> X = 1 (6.9 clamps to 6)
    ] + _NAN_BLOCKS,
    "mxfp8_e4m3+rceil": [
        (_blk(500, 3.0), _blk(512, 3), 128),  # 500/448 -> X = 2; 250 -> 256 on the e4m3 grid
        (_blk(448, 3.0), _blk(448, 3), 127),
    ] + _NAN_BLOCKS,
}


@pytest.mark.parametrize("spec", list(SCALE_RULE_CASES))
def test_hand_computed_scale_rules(spec):
    cases = SCALE_RULE_CASES[spec]
    x = np.array([c[0] for c in cases], np.float32)
    want = np.array([c[1] for c in cases], np.float32)
    want_codes = np.array([c[2] for c in cases], np.uint8)[:, None]
    y, yd, scales, _ = _run(jnp.asarray(x), spec)
    _assert_same(y, want, signed_zeros=False, what=f"{spec} fake_quant")
    _assert_same(yd, want, signed_zeros=False, what=f"{spec} dequantize")
    np.testing.assert_array_equal(np.asarray(scales), want_codes)


def test_all_zero_and_signed_zero_blocks():
    """All-zero blocks (with and without -0) give zeros, scale code 0 (FP) / 1 (MXINT8)."""
    x = np.zeros((2, BLOCK), np.float32)
    x[1, ::2] = -0.0
    for fmt in ALL_MX:
        y, yd, scales, _ = _run(jnp.asarray(x), fmt)
        assert np.all(np.asarray(y) == 0) and np.all(np.asarray(yd) == 0), fmt
        np.testing.assert_array_equal(np.asarray(scales), 1 if fmt == "mxint8" else 0, err_msg=fmt)


# --------------------------------------------------------------------------
# 3. Random inputs against the numpy reference
# --------------------------------------------------------------------------
def _random_input(seed, rows=32, cols=256):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols))
    # per-block magnitudes across (almost) the whole float32 range
    mags = 10.0 ** rng.uniform(-35, 35, size=(rows, cols // BLOCK, 1))
    x = (x.reshape(rows, cols // BLOCK, BLOCK) * mags).reshape(rows, cols)
    x[::5] = rng.standard_t(2, size=(len(x[::5]), cols))  # heavy tails
    x[1::7, 3] *= 1000.0  # outliers
    x[2] = np.round(8 * rng.standard_normal(cols)) / 8  # many exact ties
    return x.astype(np.float32)


@pytest.mark.parametrize("fmt", ALL_MX)
def test_random_against_numpy_reference(fmt):
    x = _random_input(1)
    y, yd, scales, _ = _run(jnp.asarray(x), fmt)
    ry, rs = ref_mx(x, fmt)
    _assert_same(y, ry, signed_zeros=fmt != "mxint8", what=f"{fmt} random values")
    _assert_same(yd, y, what=f"{fmt} dequantize(quantize) random")
    _assert_same(_scale_exp_from_codes(scales), rs, what=f"{fmt} random scales")


# --------------------------------------------------------------------------
# 4. axis semantics and shape checks
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mxfp4", "mxint8", "mxfp8_e4m3"])
def test_axis0_equals_last_axis_of_transpose(fmt):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 8)) * 10.0 ** rng.uniform(-3, 3, size=(1, 8))).astype(np.float32)
    x[5, 3] = 300.0
    y0, yd0, s0, _ = _run(jnp.asarray(x), fmt, axis=0)
    yt, _, st, _ = _run(jnp.asarray(x.T), fmt, axis=-1)
    _assert_same(y0, np.asarray(yt).T, what=f"{fmt} axis=0 vs transpose")
    _assert_same(yd0, y0, what=f"{fmt} axis=0 dequantize")
    ry, _ = ref_mx(x.T, fmt)
    _assert_same(np.asarray(y0).T, ry, signed_zeros=fmt != "mxint8", what=f"{fmt} axis=0 vs ref")
    # scales hold the groups along axis 0: [64 / 32, 8]
    assert np.asarray(s0).shape == (2, 8)
    np.testing.assert_array_equal(np.asarray(s0), np.asarray(st).T)


def test_block_size_must_divide_axis():
    x = jnp.ones((4, 48), jnp.float32)
    with pytest.raises(ValueError) as e:
        bs.fake_quant(x, "mxfp4")
    assert "32" in str(e.value) and "48" in str(e.value), str(e.value)
    with pytest.raises(ValueError) as e:
        bs.quantize(x, "mxfp4")
    assert "32" in str(e.value) and "48" in str(e.value), str(e.value)
    # along axis 0 of a [48, 4] array as well
    with pytest.raises(ValueError):
        bs.fake_quant(jnp.ones((48, 4), jnp.float32), "mxint8", axis=0)


# --------------------------------------------------------------------------
# 5. Stochastic rounding inside MX
# --------------------------------------------------------------------------
N_KEYS = 2000


def _positive_grid(fmt):
    if fmt == "mxint8":
        return np.arange(128, dtype=np.float64) / 64.0
    dt = ML_DTYPE[fmt]
    nbits = ELEM_BITS[fmt]
    vals = np.arange(2**nbits, dtype=np.uint8).view(dt).astype(np.float64)
    return np.unique(vals[np.isfinite(vals) & (vals >= 0)])


@functools.partial(jax.jit, static_argnames=("spec",))
def _sr_run(x, keys, spec):
    sr = jax.vmap(lambda k: bs.fake_quant(x, spec, rounding="stochastic", key=k))(keys)
    q_sr = bs.quantize(x, spec, rounding="stochastic", key=keys[0])
    q_n = bs.quantize(x, spec)
    again = bs.fake_quant(x, spec, rounding="stochastic", key=keys[0])
    return sr, q_sr.scales, q_n.scales, again, bs.dequantize(q_sr)


@pytest.mark.parametrize("fmt", ALL_MX)
def test_stochastic_rounding(fmt):
    rng = np.random.default_rng(3)
    mags = 10.0 ** rng.uniform(-4, 4, size=(4, 4, 1))
    x = (rng.standard_normal((4, 4, BLOCK)) * mags).reshape(4, 128)
    # block 0: X = 1 and one element above the element max (clamped under the floor rule)
    x[0, :BLOCK] = rng.uniform(-0.9, 0.9, BLOCK) * 2.0 ** EMAX[fmt]
    x[0, 0] = 1.99 * 2.0 ** EMAX[fmt]
    x = x.astype(np.float32)
    keys = jax.random.split(jax.random.key(0), N_KEYS)
    sr, s_sr, s_n, again, deq = _sr_run(jnp.asarray(x), keys, fmt)
    sr = np.asarray(sr).astype(np.float64)
    # the scale does not depend on the rounding mode
    np.testing.assert_array_equal(np.asarray(s_sr), np.asarray(s_n))
    # same key -> same result; dequantize(quantize) == fake_quant under SR as well
    _assert_same(again, sr[0].astype(np.float32), what="same key")
    _assert_same(deq, sr[0].astype(np.float32), what="SR dequantize(quantize)")
    # neighbours on each block's scaled grid
    scale = np.exp2(np.asarray(s_n).astype(np.float64) - 127.0).repeat(BLOCK, axis=1)
    grid = _positive_grid(fmt)
    a = np.abs(x.astype(np.float64)) / scale
    i = np.searchsorted(grid, a, side="right") - 1  # grid[i] <= a
    lo = grid[i]
    hi = np.where(lo == a, lo, grid[np.minimum(i + 1, len(grid) - 1)])
    in_range = a <= grid[-1]
    lo = np.where(in_range, lo, grid[-1])
    hi = np.where(in_range, hi, grid[-1])
    sign = np.sign(x)
    lo_v, hi_v = sign * lo * scale, sign * hi * scale
    ok = (sr == lo_v) | (sr == hi_v)
    assert ok.all(), (f"{fmt}: {int((~ok).sum())} SR outputs are not grid neighbours, e.g. x="
                      f"{x[np.nonzero(~ok.all(0))][:4]}")
    # unbiased within 5 standard errors for in-range elements
    mean = sr.mean(axis=0)
    var = np.where(in_range, (hi - a) * (a - lo), 0.0) * scale**2
    se = np.sqrt(var / N_KEYS)
    err = np.abs(mean - x.astype(np.float64))
    bad = in_range & (err > 5 * se)
    assert not bad.any(), f"{fmt}: biased at x={x[bad][:4]}, mean={mean[bad][:4]}, se={se[bad][:4]}"
    # elements strictly between grid points do round both ways for some keys (not a fixed rounding)
    frac = np.where(hi > lo, (a - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    mid = in_range & (frac > 0.2) & (frac < 0.8)
    assert mid.sum() > 50
    assert np.all((sr[:, mid] == lo_v[mid]).any(0) & (sr[:, mid] == hi_v[mid]).any(0))
    # outside the range (clamped under the floor rule): saturate to the max
    assert np.all(sr[:, 0, 0] == ELEM_MAX[fmt] * scale[0, 0])


def test_stochastic_rounding_special_blocks():
    """NaN / +-Inf blocks are all NaN with scale code 255 under stochastic rounding too."""
    x = np.ones((4, BLOCK), np.float32)
    x[0, 3], x[1, 4], x[2, 5] = np.nan, np.inf, -np.inf
    x[3] = 0.0
    keys = jax.random.split(jax.random.key(1), 4)
    for fmt in ("mxfp4", "mxint8"):
        sr, s_sr, s_n, _, deq = _sr_run(jnp.asarray(x), keys, fmt)
        sr = np.asarray(sr)
        assert np.isnan(sr[:, :3]).all() and np.all(sr[:, 3] == 0), fmt
        assert np.isnan(np.asarray(deq)[:3]).all()
        want = [255, 255, 255, 1 if fmt == "mxint8" else 0]
        np.testing.assert_array_equal(np.asarray(s_sr).ravel(), want)
        np.testing.assert_array_equal(np.asarray(s_sr), np.asarray(s_n))
