"""Element-wise float formats (fp8/fp6/fp4/bf16/fp16, arbitrary ExMy, E8M0, unsigned) vs references.

References used here are independent of bitscale:
* ml_dtypes 0.6 casts stored in tests/numerics/vectors/minifloat_*.npz (`ml_dtypes_sat` = np.clip then cast),
  and ml_dtypes / np.float16 casts computed in the test (bf16, fp16);
* a float64 textbook enumeration of every ExMy code (normal (1 + M/2^m) 2^(E-bias), subnormal
  M/2^m 2^(1-bias), reserved codes of each convention removed) with a nearest-neighbour search;
* microxcaling's `_quantize_elemwise_core` vectors (minifloat_generic_ExMy.npz);
* ml_dtypes float8_e8m0fnu casts (scale_e8m0.npz).

Every array handed to bitscale is padded to one fixed length, so each code path is compiled once.
"""

import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import bitscale as bs
from bitscale.numerics.packing import unpack_codes

DATA = pathlib.Path(__file__).parent / "vectors"
L = 1 << 16  # fixed length of every array passed to bitscale (one compile per code path)
FLT_MAX = float(np.finfo(np.float32).max)

# bitscale name -> (numpy dtype of the reference cast, reference file stem, max, bits, keeps inf)
ML_FORMATS = {
    "fp8_e4m3": (ml_dtypes.float8_e4m3fn, "float8_e4m3fn", 448.0, 8, False),
    "fp8_e5m2": (ml_dtypes.float8_e5m2, "float8_e5m2", 57344.0, 8, True),
    "fp6_e3m2": (ml_dtypes.float6_e3m2fn, "float6_e3m2fn", 28.0, 6, False),
    "fp6_e2m3": (ml_dtypes.float6_e2m3fn, "float6_e2m3fn", 7.5, 6, False),
    "fp4_e2m1": (ml_dtypes.float4_e2m1fn, "float4_e2m1fn", 6.0, 4, False),
    "bf16": (ml_dtypes.bfloat16, "bfloat16", float(ml_dtypes.finfo(ml_dtypes.bfloat16).max), 16,
             True),
    "fp16": (np.float16, "float16", 65504.0, 16, True),
}
SUB_BYTE = ("fp6_e3m2", "fp6_e2m3", "fp4_e2m1")  # ml_dtypes stores NaN as -0 / +0 there


# ---------------------------------------------------------------------------------------------
# Helpers


def _load(stem):
    return np.load(DATA / f"{stem}.npz")


def _chunked(fn, x):
    """Applies ``fn`` (jax array of length L -> array of length L) to a 1-D numpy array."""
    x = np.asarray(x).reshape(-1)
    out = None
    for s in range(0, max(x.size, 1), L):
        c = x[s:s + L]
        buf = np.zeros(L, x.dtype)
        buf[:c.size] = c
        r = np.asarray(fn(jnp.asarray(buf)))
        if out is None:
            out = np.empty(x.shape, r.dtype)
        out[s:s + c.size] = r[:c.size]
    return out


def fq(x, spec):
    """bs.fake_quant on a 1-D numpy array (float32, bfloat16 or float16)."""
    return _chunked(lambda v: bs.fake_quant(v, spec), x)


def qdq(x, spec):
    """bs.dequantize(bs.quantize(x)) on a 1-D numpy array."""
    return _chunked(lambda v: bs.dequantize(bs.quantize(v, spec)), x)


def codes_of(x, spec, bits):
    """Unpacked element codes of bs.quantize on a 1-D numpy array."""
    return _chunked(lambda v: unpack_codes(bs.quantize(v, spec).codes, bits, L), x)


def _uint_view(a):
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


def assert_bits_equal(got, want, x, what=""):
    """Bit-for-bit equality (NaN == NaN whatever its payload), with a readable failure message."""
    got, want, x = np.asarray(got), np.asarray(want), np.asarray(x)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    both_nan = np.isnan(got.astype(np.float32)) & np.isnan(want.astype(np.float32))
    bad = (_uint_view(got) != _uint_view(want)) & ~both_nan
    if bad.any():
        idx = np.flatnonzero(bad)[:12]
        rows = [f"  x={x.reshape(-1)[i]!r} ({float(x.reshape(-1)[i]).hex()}): got "
                f"{float(got.reshape(-1)[i])!r}, want {float(want.reshape(-1)[i])!r}" for i in idx]
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} differ\n" + "\n".join(rows))


def ml_reference(x, name):
    """Semantics of the ml_dtypes-backed casts, computed with ml_dtypes on float32 ``x``.

    RNE after np.clip(x, -max, max) (saturating); Inf kept where the format has Inf; NaN -> NaN.
    """
    dt, _, mx, _, keeps_inf = ML_FORMATS[name]
    x = np.asarray(x, np.float32)
    with np.errstate(invalid="ignore"):
        ref = np.clip(x, -mx, mx).astype(dt).astype(np.float32)
    if keeps_inf:
        ref = np.where(np.isinf(x), x, ref)
    return np.where(np.isnan(x), np.float32(np.nan), ref).astype(np.float32)


def ml_reference_bits(x, name):
    """Reference codes for non-NaN float32 ``x`` (same semantics as `ml_reference`)."""
    dt, _, mx, bits, keeps_inf = ML_FORMATS[name]
    x = np.asarray(x, np.float32)
    src = np.clip(x, -mx, mx)
    if keeps_inf:
        src = np.where(np.isinf(x), x, src)
    return src.astype(dt).view(np.uint16 if bits == 16 else np.uint8)


def reference_inputs(name):
    """The reference file's input vector (and its ml_dtypes_sat column where stored)."""
    stem = ML_FORMATS[name][1]
    d = _load(f"minifloat_{stem}")
    return d


# ---------------------------------------------------------------------------------------------
# ml_dtypes-backed formats


@pytest.mark.parametrize("name", list(ML_FORMATS))
def test_fake_quant_matches_ml_dtypes_sat(name):
    d = reference_inputs(name)
    x = d["x"]
    if "ml_dtypes_sat" in d:
        ref = d["ml_dtypes_sat"].copy()
        # The stored column is np.clip + cast: Inf -> +-max (right except for formats with Inf),
        # NaN -> -0/+0 for fp4/fp6 (ml_dtypes has no NaN there; bitscale propagates NaN).
        if ML_FORMATS[name][4]:
            ref = np.where(np.isinf(x), x, ref)
        ref = np.where(np.isnan(x), np.float32(np.nan), ref).astype(np.float32)
        # The stored column and the in-test ml_dtypes computation agree.
        assert_bits_equal(ml_reference(x, name), ref, x, f"{name} stored vs recomputed reference")
    else:
        ref = ml_reference(x, name)
        # bf16/fp16 files store the non-saturating cast: equal wherever no finite overflow occurs.
        mx = ML_FORMATS[name][2]
        ok = ~(np.isfinite(x) & (np.abs(x) > mx))
        assert_bits_equal(ref[ok], d["ml_dtypes"][ok], x[ok], f"{name} reference sanity")
    got = fq(x, name)
    assert got.dtype == np.float32
    assert_bits_equal(got, ref, x, f"fake_quant(x, {name!r}) vs ml_dtypes_sat")


@pytest.mark.parametrize("name", list(ML_FORMATS))
def test_nan_and_inf_semantics(name):
    mx = np.float32(ML_FORMATS[name][2])
    keeps_inf = ML_FORMATS[name][4]
    neg_nan = np.float32(-np.nan) if np.signbit(np.float32(-np.nan)) else \
        np.array([0xFFC00000], np.uint32).view(np.float32)[0]
    x = np.array([np.nan, neg_nan, np.inf, -np.inf, FLT_MAX, -FLT_MAX, 1e30, -1e30], np.float32)
    got = fq(x, name)
    assert np.isnan(got[:2]).all(), f"{name}: NaN inputs must give NaN, got {got[:2]}"
    if keeps_inf:
        np.testing.assert_array_equal(got[2:4], [np.inf, -np.inf])
    else:
        np.testing.assert_array_equal(got[2:4], [mx, -mx])
    np.testing.assert_array_equal(got[4:6], [mx, -mx])  # finite overflow saturates
    assert_bits_equal(got[6:], ml_reference(x[6:], name), x[6:], name)


@pytest.mark.parametrize("name", list(ML_FORMATS))
def test_every_code_is_a_fixed_point(name):
    dt, stem, _, bits, _ = ML_FORMATS[name]
    if bits == 16:
        values = np.arange(2**16, dtype=np.uint16).view(dt).astype(np.float32)
    else:
        d = _load(f"minifloat_{stem}")
        values = d["code_values"]
        # The stored decode table is ml_dtypes' own.
        np.testing.assert_array_equal(
            _uint_view(values), _uint_view(d["codes"].view(dt).astype(np.float32)))
    values = values[~np.isnan(values)]
    assert_bits_equal(fq(values, name), values, values, f"{name} decode table fixed points")


@pytest.mark.parametrize("name", list(ML_FORMATS))
def test_quantize_codes_match_ml_dtypes_bits(name):
    d = reference_inputs(name)
    x = d["x"]
    bits = ML_FORMATS[name][3]
    mx = ML_FORMATS[name][2]
    codes = codes_of(x, name, bits)
    in_range = np.isfinite(x) & (np.abs(x) <= mx)
    if "ml_dtypes_bits" in d:
        want = d["ml_dtypes_bits"]
    else:
        with np.errstate(over="ignore"):
            want = x.astype(ML_FORMATS[name][0]).view(np.uint16)
    assert_bits_equal(codes[in_range].astype(np.uint32), want[in_range].astype(np.uint32),
                      x[in_range], f"quantize({name!r}) codes, in-range inputs")
    # Out-of-range finite values and Inf: the codes of the saturated (or Inf) value.
    rest = ~in_range & ~np.isnan(x)
    assert_bits_equal(codes[rest].astype(np.uint32),
                      ml_reference_bits(x[rest], name).astype(np.uint32),
                      x[rest], f"quantize({name!r}) codes, out-of-range inputs")


@pytest.mark.parametrize("name", list(ML_FORMATS))
def test_dequantize_quantize_equals_fake_quant(name):
    x = reference_inputs(name)["x"]
    x = x[~np.isnan(x)]
    assert_bits_equal(qdq(x, name), fq(x, name), x, f"dequantize(quantize(x, {name!r}))")


@pytest.mark.parametrize("in_dtype", [ml_dtypes.bfloat16, np.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", list(ML_FORMATS))
def test_low_precision_input_dtypes(name, in_dtype):
    x32 = reference_inputs(name)["x"]
    with np.errstate(over="ignore"):
        x = x32.astype(in_dtype)
    up = x.astype(np.float32)
    with np.errstate(over="ignore"):
        want = ml_reference(up, name).astype(in_dtype)
    got = fq(x, name)
    assert got.dtype == np.dtype(in_dtype), got.dtype
    assert_bits_equal(got, want, up, f"fake_quant({np.dtype(in_dtype).name} x, {name!r})")


# ---------------------------------------------------------------------------------------------
# Arbitrary ExMy: independent float64 enumeration of the grid


def exmy_valid(e, m, conv):
    """The documented validity rules (formats.py / API.md), evaluated independently."""
    if conv == "ieee" and e < 2:  # all-ones exponent reserved: e = 1 has no normals
        return False
    if conv == "fn" and m < 1:  # the only NaN is S.1..1.1..1: needs a mantissa bit
        return False
    return exmy_grid(e, m, conv)[0][-1] <= FLT_MAX


def exmy_grid(e, m, conv):
    """Sorted non-negative magnitudes of every non-reserved code, and their integer significands.

    The significand q is M for subnormals and 2^m + M for normals; its parity is the tie breaker
    (for m >= 1 it is the mantissa LSB of the code).
    """
    bias = 2 ** (e - 1) - 1
    E, M = np.meshgrid(np.arange(2**e), np.arange(2**m), indexing="ij")
    E, M = E.reshape(-1), M.reshape(-1)
    keep = np.ones(E.shape, bool)
    top = 2**e - 1
    if conv == "ieee":
        keep &= E != top
    elif conv == "fn":
        keep &= ~((E == top) & (M == 2**m - 1))
    E, M = E[keep], M[keep]
    sub = E == 0
    val = np.where(sub, np.ldexp(M / 2.0**m, 1 - bias),
                   np.ldexp(1.0 + M / 2.0**m, (E - bias).astype(np.int64)))
    q = np.where(sub, M, M + 2**m)
    order = np.argsort(val, kind="stable")
    val, q = val[order], q[order]
    assert np.all(np.diff(val) > 0)  # every code has a distinct non-negative value
    return val, q


def exmy_round(x, grid, q, has_inf):
    """Nearest grid value of float32 ``x`` in float64, ties to the even significand.

    If both neighbours have odd significands (m = 0, consecutive powers of two) the tie goes to the
    larger magnitude, as ml_dtypes' float8_e8m0fnu cast does (1.5 -> 2, 3 -> 4). |x| >= max
    saturates to max (including the tie between max and the next binade); Inf stays Inf only
    where the format has Inf; NaN -> NaN; the sign (and -0) is kept.
    """
    x = np.asarray(x, np.float32)
    a = np.abs(x.astype(np.float64))
    mx = grid[-1]
    fin = np.isfinite(a)
    af = np.where(fin, a, 0.0)
    i = np.clip(np.searchsorted(grid, af, side="left"), 1, grid.size - 1)
    lo, hi = grid[i - 1], grid[i]
    dlo, dhi = af - lo, hi - af
    hi_even = q[i] % 2 == 0
    lo_even = q[i - 1] % 2 == 0
    tie_hi = hi_even | ~lo_even
    pick_hi = (dhi < dlo) | ((dhi == dlo) & tie_hi)
    r = np.where(pick_hi, hi, lo)
    r = np.where(af >= mx, mx, r)
    r = np.where(np.isinf(a), np.inf if has_inf else mx, r)
    r = np.where(np.isnan(a), np.nan, r)
    return np.copysign(r, x.astype(np.float64)).astype(np.float32)


def exmy_probes(grid, e, m, conv, seed):
    """Probe points (float32): every grid point, midpoint, the midpoints' float32 neighbours,
    random values across the range, values beyond max and below min_subnormal / 2, specials."""
    g32 = grid.astype(np.float32)
    assert np.array_equal(g32.astype(np.float64), grid)
    mids = (grid[:-1] + grid[1:]) / 2
    m32 = mids.astype(np.float32)
    assert np.array_equal(m32.astype(np.float64), mids)  # midpoints are exact ties in float32
    mx = grid[-1]
    bias = 2 ** (e - 1) - 1
    emax = bias if conv == "ieee" else bias + 1
    min_sub = grid[1]
    edge = [mx + 2.0 ** (emax - m) / 2,  # tie between max and the next binade above
            mx * (1 + 2.0**-20), mx * 1.5, mx * 2, mx * 4, 1e30, 1e38, FLT_MAX,
            min_sub / 2, min_sub / 4, min_sub / 3, 2.0**-149, 2.0**-126, 1.0, 3.0, 1.5]
    edge = np.array([v for v in edge if v <= FLT_MAX], np.float64).astype(np.float32)
    rng = np.random.default_rng(seed)
    lo_l, hi_l = np.log2(min_sub / 4), np.log2(min(mx * 4, FLT_MAX))
    rnd = np.exp2(rng.uniform(lo_l, hi_l, 4000)).astype(np.float32)
    with np.errstate(over="ignore"):
        pos = np.concatenate([
            g32, m32, np.nextafter(m32, np.float32(np.inf)), np.nextafter(m32, np.float32(0)),
            edge, np.nextafter(edge, np.float32(np.inf)), np.nextafter(edge, np.float32(0)), rnd])
    pos = pos[np.isfinite(pos)]
    specials = np.array([np.inf, -np.inf, np.nan, -np.nan], np.float32)
    return np.concatenate([pos, -pos, specials]).astype(np.float32)


SWEEP = [(e, m, c) for c in ("ieee", "fn", "ext") for e in range(1, 9) for m in range(0, 11)]
VALID = [p for p in SWEEP if exmy_valid(*p)]
INVALID = [p for p in SWEEP if not exmy_valid(*p)]


def _exmy_name(e, m, conv):
    return f"e{e}m{m}_{conv}"


@pytest.mark.parametrize("e,m,conv", VALID, ids=[_exmy_name(*p) for p in VALID])
def test_exmy_against_textbook_grid(e, m, conv):
    grid, q = exmy_grid(e, m, conv)
    name = _exmy_name(e, m, conv)
    fmt = bs.element_format(name)
    assert (fmt.ebits, fmt.mbits, fmt.convention) == (e, m, conv)
    assert fmt.max_value == grid[-1], (fmt.max_value, grid[-1])
    assert fmt.min_subnormal == grid[1] or m == 0
    x = exmy_probes(grid, e, m, conv, seed=1000 * e + 10 * m + len(conv))
    want = exmy_round(x, grid, q, has_inf=(conv == "ieee"))
    got = fq(x, name)
    assert_bits_equal(got, want, x, f"fake_quant(x, {name!r}) vs enumerated grid")


ML_DTYPES_EXMY = [(ml_dtypes.float8_e4m3fn, 4, 3, "fn"), (ml_dtypes.float8_e5m2, 5, 2, "ieee"),
                  (ml_dtypes.float8_e4m3, 4, 3, "ieee"), (ml_dtypes.float8_e3m4, 3, 4, "ieee"),
                  (ml_dtypes.float6_e3m2fn, 3, 2, "ext"), (ml_dtypes.float6_e2m3fn, 2, 3, "ext"),
                  (ml_dtypes.float4_e2m1fn, 2, 1, "ext"), (np.float16, 5, 10, "ieee"),
                  (ml_dtypes.bfloat16, 8, 7, "ieee")]


@pytest.mark.parametrize("dt,e,m,conv", ML_DTYPES_EXMY, ids=lambda v: getattr(v, "__name__", None))
def test_textbook_reference_agrees_with_ml_dtypes(dt, e, m, conv):
    """Sanity check of the test's own reference (numpy only): the enumerated grid and its RNE
    search equal ml_dtypes' saturating cast on the same probes (NaN and Inf excluded)."""
    grid, q = exmy_grid(e, m, conv)
    assert grid[-1] == float(ml_dtypes.finfo(dt).max)
    x = exmy_probes(grid, e, m, conv, seed=5)
    x = x[np.isfinite(x)]
    want = np.clip(x, -grid[-1], grid[-1]).astype(dt).astype(np.float32)
    assert_bits_equal(exmy_round(x, grid, q, conv == "ieee"), want, x, f"reference vs {dt}")


@pytest.mark.parametrize("e,m,conv", INVALID, ids=[_exmy_name(*p) for p in INVALID])
def test_exmy_invalid_combinations_raise(e, m, conv):
    with pytest.raises(ValueError):
        bs.FloatFormat(e, m, conv)
    with pytest.raises(ValueError):
        bs.fake_quant(jnp.zeros(4, jnp.float32), _exmy_name(e, m, conv))


@pytest.mark.parametrize("args", [(0, 3, "ieee"), (9, 3, "ieee"), (4, -1, "ieee"), (4, 24, "ieee"),
                                  (4, 3, "ocp"), (4, 3, "IEEE")])
def test_floatformat_out_of_range_arguments_raise(args):
    with pytest.raises(ValueError):
        bs.FloatFormat(*args)


def test_exmy_default_convention_is_ieee():
    x = np.linspace(-70000, 70000, 2001, dtype=np.float32)
    assert_bits_equal(fq(x, "e5m2"), fq(x, "e5m2_ieee"), x, "e5m2 vs e5m2_ieee")
    assert_bits_equal(fq(x, "e5m2"), fq(x, "fp8_e5m2"), x, "e5m2 vs fp8_e5m2")
    assert_bits_equal(fq(x, "e4m3_fn"), fq(x, "fp8_e4m3"), x, "e4m3_fn vs fp8_e4m3")
    assert bs.element_format("e4m3").max_value == 240.0


def _generic_keys():
    d = _load("minifloat_generic_ExMy")
    return sorted(k[:-3] for k in d.files if k.endswith("__x"))


@pytest.mark.parametrize("base", _generic_keys())
def test_exmy_against_microxcaling(base):
    d = _load("minifloat_generic_ExMy")
    rows = [str(r) for r in d["params_rows"]]
    cols = [str(c) for c in d["params_columns"]]
    p = dict(zip(cols, d["params"][rows.index(base)]))
    conv = base.split("_")[1]
    x = d[f"{base}__x"]
    ref = d[f"{base}__microxcaling_sat"].copy()
    mx = np.float32(p["max_normal"])
    min_sub = np.float32(p["min_subnormal"])
    # Documented microxcaling defects (REFERENCE_VECTORS.md "Known defects"):
    #  * |x| = FLT_MAX -> NaN (log2 rounding) and nextdown(min_sub / 2) rounded up: excluded;
    #  * -0 -> +0: bitscale keeps the sign of zero results;
    #  * Inf kept whatever the convention: bitscale keeps Inf only for the ieee convention.
    nextdown_half = np.nextafter(np.float32(min_sub / 2), np.float32(0))
    keep = (np.abs(x) != np.float32(FLT_MAX)) & (np.abs(x) != nextdown_half)
    ref = np.where(ref == 0, np.copysign(np.float32(0), x), ref)
    if conv != "ieee":
        ref = np.where(np.isinf(x), np.copysign(mx, x), ref)
    ref = ref.astype(np.float32)
    x, ref = x[keep], ref[keep]
    got = fq(x, base)
    assert_bits_equal(got, ref, x, f"fake_quant(x, {base!r}) vs microxcaling_sat")


# ---------------------------------------------------------------------------------------------
# E8M0


def _e8m0_expected():
    d = _load("scale_e8m0")
    x = d["x"]
    want = d["ml_dtypes"].copy()
    bits = d["ml_dtypes_bits"].copy()
    # Documented difference: >= 1.5 * 2^127 and +Inf saturate to 2^127 (code 254), ml_dtypes -> NaN.
    sat = x >= np.float32(1.5 * 2.0**127)
    want[sat] = np.float32(2.0**127)
    bits[sat] = 254
    return x, want, bits


def test_e8m0_fake_quant_matches_ml_dtypes():
    x, want, _ = _e8m0_expected()
    assert_bits_equal(fq(x, "e8m0"), want, x, "fake_quant(x, 'e8m0') vs ml_dtypes")
    # Spot checks of the documented rules.
    probe = np.array([1.5, 0.75, 3.0, 6.0, np.nextafter(np.float32(1.5), np.float32(0)), 0.0, -0.0,
                      -1.0, np.nan, np.inf, FLT_MAX, 2.0**-140], np.float32)
    got = fq(probe, "e8m0")
    want_p = np.array([2, 1, 4, 8, 1, np.nan, np.nan, np.nan, np.nan, 2.0**127, 2.0**127,
                       2.0**-127], np.float32)
    assert_bits_equal(got, want_p, probe, "e8m0 spot checks")


def test_e8m0_quantize_codes():
    x, want, bits = _e8m0_expected()
    codes = codes_of(x, "e8m0", 8)
    assert_bits_equal(codes.astype(np.uint32), bits.astype(np.uint32), x, "e8m0 codes")
    assert_bits_equal(qdq(x, "e8m0"), fq(x, "e8m0"), x, "e8m0 dequantize(quantize)")


def test_e8m0_decode_table_fixed_points():
    d = _load("scale_e8m0")
    vals = d["code_values_ml_dtypes"][:255]
    np.testing.assert_array_equal(vals, np.exp2(np.arange(255, dtype=np.float64) - 127)
                                  .astype(np.float32))
    assert_bits_equal(fq(vals, "e8m0"), vals, vals, "e8m0 decode table")


# ---------------------------------------------------------------------------------------------
# Unsigned formats


def _unsigned_probes():
    x = reference_inputs("fp8_e4m3")["x"]
    extra = np.array([0.0, -0.0, -1e-30, -1.0, -448.0, -np.inf, np.inf, 448.0, 464.0, 480.0, 1e6,
                      np.nan, 2.0**-9, 2.0**-10, 3 * 2.0**-10], np.float32)
    return np.concatenate([x, extra])


def test_ue4m3_is_e4m3_clamped_to_nonnegative():
    x = _unsigned_probes()
    pos = np.where(np.signbit(x), np.float32(0), x)  # negatives (incl. -0, -Inf) -> +0
    with np.errstate(invalid="ignore"):
        want = np.clip(pos, 0, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    want = np.where(np.isnan(x), np.float32(np.nan), want).astype(np.float32)
    got = fq(x, "ue4m3")
    assert_bits_equal(got, want, x, "fake_quant(x, 'ue4m3')")
    assert not np.signbit(got[~np.isnan(got)]).any(), "unsigned output with a sign bit"
    # Codes: the e4m3 code of the clamped value (no sign bit), 7 bits.
    fin = ~np.isnan(x)
    codes = codes_of(x[fin], "ue4m3", 7)
    want_codes = np.clip(pos[fin], 0, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    assert_bits_equal(codes.astype(np.uint32), want_codes.astype(np.uint32), x[fin], "ue4m3 codes")


def test_ue5m3_against_textbook_grid():
    fmt = bs.element_format("ue5m3")
    assert fmt.max_value == 114688.0
    grid, q = exmy_grid(5, 3, "fn")
    assert grid[-1] == 114688.0
    x = exmy_probes(grid, 5, 3, "fn", seed=53)
    want = exmy_round(np.where(np.signbit(x), np.float32(0), x), grid, q, has_inf=False)
    want = np.where(np.isnan(x), np.float32(np.nan), want).astype(np.float32)
    got = fq(x, "ue5m3")
    assert_bits_equal(got, want, x, "fake_quant(x, 'ue5m3')")
    assert fq(np.array([1e6, -1e6, np.inf], np.float32), "ue5m3").tolist() == [114688.0, 0.0,
                                                                              114688.0]


@pytest.mark.parametrize("e,m,conv", [(2, 1, "ext"), (3, 2, "ext"), (4, 3, "fn"), (5, 2, "ieee")])
def test_arbitrary_unsigned_exmy(e, m, conv):
    grid, q = exmy_grid(e, m, conv)
    x = exmy_probes(grid, e, m, conv, seed=7 * e + m)
    name = "u" + _exmy_name(e, m, conv)
    want = exmy_round(np.where(np.signbit(x), np.float32(0), x), grid, q, has_inf=conv == "ieee")
    want = np.where(np.isnan(x), np.float32(np.nan), want).astype(np.float32)
    assert_bits_equal(fq(x, name), want, x, f"fake_quant(x, {name!r})")


# ---------------------------------------------------------------------------------------------
# Signed zero, NaN, jit / vmap


FLOAT_NAMES = list(ML_FORMATS) + ["e3m3_fn", "e2m2_ext", "e6m4"]


@pytest.mark.parametrize("name", FLOAT_NAMES)
def test_signed_zero_kept(name):
    # 2^-149 and 2^-140 are below half the smallest subnormal of every format listed.
    x = np.array([0.0, -0.0, -2.0**-149, 2.0**-149, -2.0**-140], np.float32)
    got = fq(x, name)
    assert_bits_equal(got, np.array([0.0, -0.0, -0.0, 0.0, -0.0], np.float32), x, name)


@pytest.mark.parametrize("name", FLOAT_NAMES + ["ue4m3", "ue5m3", "e8m0", "int8", "uint4"])
def test_nan_propagates(name):
    neg_nan = np.array([0xFFC00000], np.uint32).view(np.float32)[0]
    x = np.array([np.nan, neg_nan, 1.0, np.nan], np.float32)
    got = fq(x, name)
    assert np.isnan(got[[0, 1, 3]]).all(), f"{name}: {got}"
    assert got[2] == 1.0


JIT_NAMES = ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "bf16", "e8m0", "ue4m3", "e3m3_fn"]


def _mixed_input():
    rng = np.random.default_rng(3)
    x = (rng.standard_cauchy((16, 256)) * 4).astype(np.float32)
    x[0, :8] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -3e38, 2.0**-10]
    return x


@pytest.mark.parametrize("name", JIT_NAMES)
def test_jit_and_vmap_match_eager(name):
    x = jnp.asarray(_mixed_input())
    eager = np.asarray(bs.fake_quant(x, name))
    jitted = np.asarray(jax.jit(lambda v: bs.fake_quant(v, name))(x))
    vmapped = np.asarray(jax.vmap(lambda v: bs.fake_quant(v, name))(x))
    assert_bits_equal(jitted, eager, np.asarray(x), f"jit {name}")
    assert_bits_equal(vmapped, eager, np.asarray(x), f"vmap {name}")
    flat = np.asarray(x).reshape(-1)
    assert_bits_equal(eager.reshape(-1), fq(flat, name), flat, f"2-D vs 1-D {name}")


def test_jit_of_vmap_of_quantize_roundtrip():
    x = jnp.asarray(_mixed_input())
    x = jnp.where(jnp.isnan(x), 0.0, x)
    f = jax.jit(jax.vmap(lambda v: bs.dequantize(bs.quantize(v, "fp6_e3m2"))))
    assert_bits_equal(np.asarray(f(x)), np.asarray(bs.fake_quant(x, "fp6_e3m2")), np.asarray(x),
                      "jit(vmap(qdq))")


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("bad", ["fp8_e4m4x", "int9", "fp5", "mxfp3", "nvfp8_e4m3"])
def test_unknown_format_name(bad):
    x = jnp.zeros(8, jnp.float32)
    for call in (lambda: bs.fake_quant(x, bad), lambda: bs.quantize(x, bad),
                 lambda: bs.resolve_spec(bad)):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert bad in msg, msg
        assert "fp8_e4m3" in msg and "mxfp4" in msg, msg
    with pytest.raises(ValueError, match="fp8_e4m3"):
        bs.element_format(bad)


@pytest.mark.parametrize("dtype", [np.int32, np.complex64, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("fn", ["fake_quant", "quantize"])
def test_unsupported_input_dtype(dtype, fn):
    x = np.ones(8, dtype)
    with pytest.raises(TypeError) as info:
        getattr(bs, fn)(x, "fp8_e4m3")
    assert np.dtype(dtype).name in str(info.value), str(info.value)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64, jnp.uint8, jnp.int8],
                         ids=["int32", "complex64", "uint8", "int8"])
def test_unsupported_jax_input_dtype(dtype):
    x = jnp.ones(8, dtype)
    with pytest.raises(TypeError) as info:
        bs.fake_quant(x, "fp8_e4m3")
    assert jnp.dtype(dtype).name in str(info.value), str(info.value)
