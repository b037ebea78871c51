"""Integer formats: casts, torchao affine int-b, channel/group scales, ternary/binary, MSE clip.

References are independent of bitscale: numpy (np.round is round-half-to-even), the torchao 0.18
`choose_qparams_affine` / `quantize_affine` / `dequantize_affine` vectors (int_affine.npz),
and the BitNet b1.58 / XNOR-Net vectors in tests/numerics/vectors/ternary_binary.npz.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitscale as bs
from bitscale.numerics.packing import unpack_codes
from bitscale.numerics.specs import MSE_CLIP_RATIOS

DATA = pathlib.Path(__file__).parent / "vectors"
INT_AFFINE = np.load(DATA / "int_affine.npz")
TERNARY_BINARY = np.load(DATA / "ternary_binary.npz")
BITS = list(range(2, 9))


@functools.lru_cache(maxsize=None)
def _jit(kind, spec, axis=-1):
    """Jitted fake_quant / quantize / dequantize for one-off specs and shapes (one compile of the
    whole graph is cheaper than eager op-by-op compilation)."""
    if kind == "fq":
        return jax.jit(lambda v: bs.fake_quant(v, spec, axis=axis))
    if kind == "q":
        return jax.jit(lambda v: bs.quantize(v, spec, axis=axis))
    return jax.jit(bs.dequantize)


def _u32(a):
    return np.asarray(a, np.float32).view(np.uint32)


def assert_same(got, want, x=None, what="", signed_zero=True):
    """Bit-for-bit equality, NaN == NaN; with ``signed_zero=False`` -0 and +0 are equal."""
    got = np.asarray(got, np.float32)
    want = np.asarray(want, np.float32)
    assert got.shape == want.shape, (got.shape, want.shape)
    if not signed_zero:
        got, want = got + np.float32(0), want + np.float32(0)  # -0 + 0 = +0
    bad = (_u32(got) != _u32(want)) & ~(np.isnan(got) & np.isnan(want))
    if bad.any():
        idx = np.argwhere(bad)[:12]
        rows = [f"  at {tuple(int(v) for v in i)}: "
                + (f"x={float(np.asarray(x)[tuple(i)])!r} " if x is not None else "")
                + f"got {float(got[tuple(i)])!r}, want {float(want[tuple(i)])!r}" for i in idx]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} differ\n" + "\n".join(rows))


def signed_codes(q, bits):
    """Unpacked two's-complement codes of a QArray as int32."""
    n = q.shape[-1]
    c = np.asarray(unpack_codes(q.codes, bits, n)).astype(np.int32)
    return np.where(c >= 2 ** (bits - 1), c - 2**bits, c)


# ---------------------------------------------------------------------------------------------
# Plain integer casts


CASTS = {"int4": (-8, 7), "int8": (-128, 127), "uint8": (0, 255)}


def _cast_probes(qmin, qmax):
    """Probe values padded with zeros to one length (8192), so every cast shares one shape."""
    k = np.arange(qmin - 3, qmax + 4, dtype=np.float32)
    ties = k + np.float32(0.5)
    grid = np.arange(qmin - 3, qmax + 3, 0.125, dtype=np.float32)
    rng = np.random.default_rng(11)
    rnd = rng.uniform(qmin - 20, qmax + 20, 3000).astype(np.float32)
    special = np.array([0.0, -0.0, -1e-30, 1e-30, -0.49999997, 0.49999997, -0.5, 0.5, 1e30, -1e30,
                        np.inf, -np.inf, np.float32(3.4028235e38), 2.0**-149, -2.0**-149,
                        8388607.5, -8388607.5, 4194304.5], np.float32)
    x = np.concatenate([k, ties, np.nextafter(ties, np.float32(np.inf)),
                        np.nextafter(ties, np.float32(-np.inf)), grid, rnd, special])
    assert x.size <= 8192
    return np.concatenate([x, np.zeros(8192 - x.size, np.float32)])


@pytest.mark.parametrize("name", list(CASTS))
def test_int_cast_is_rne_with_saturation(name):
    qmin, qmax = CASTS[name]
    x = _cast_probes(qmin, qmax)
    want = (np.clip(np.round(x), qmin, qmax) + np.float32(0)).astype(np.float32)  # single +0
    got = np.asarray(bs.fake_quant(jnp.asarray(x), name))[: x.size]
    assert_same(got, want, x, f"fake_quant(x, {name!r})")
    assert not np.signbit(got[got == 0]).any(), "integer grids have a single zero (+0)"


@pytest.mark.parametrize("name", list(CASTS))
def test_int_cast_nan_and_codes(name):
    qmin, qmax = CASTS[name]
    x = np.zeros(8192, np.float32)
    x[:4] = [np.nan, 1.0, -np.nan, -0.0]
    got = np.asarray(bs.fake_quant(jnp.asarray(x), name))[:4]
    assert np.isnan(got[[0, 2]]).all() and got[1] == 1.0
    assert_same(got[3:], [0.0], what="-0 -> +0")
    # Codes: b-bit two's complement (signed) or plain (unsigned) of the rounded integer.
    x = _cast_probes(qmin, qmax)
    bits = int(name.lstrip("uint"))
    q = bs.quantize(jnp.asarray(x), name)
    c = np.asarray(unpack_codes(q.codes, bits, x.size)).astype(np.int64)
    want = np.clip(np.round(x), qmin, qmax).astype(np.int64) % 2**bits
    np.testing.assert_array_equal(c, want)
    assert_same(bs.dequantize(q), bs.fake_quant(jnp.asarray(x), name), x, "dequantize(quantize)")


# ---------------------------------------------------------------------------------------------
# Scaled ints vs torchao affine


MODES = {"sym": "+full", "sym_restricted": "", "asym": "+asym"}
GRANS = {"tensor": "@tensor", "group32": "@g32"}
AFFINE_CASES = [(b, mode, gran) for b in BITS for mode in MODES for gran in GRANS]


def _spec(b, mode, gran):
    return f"int{b}{GRANS[gran]}{MODES[mode]}"


ROWS = 12  # every affine test runs on a [12, 64] array (one shape, shared compiled ops)


def _pad_rows(x):
    """Pads [r, 64] with zero rows to [12, 64]. Zero rows change neither a per-tensor scale
    (max|x|, min(x, 0) and max(x, 0) are unchanged) nor any existing group of 32 along the rows."""
    xp = np.zeros((ROWS, 64), np.float32)
    xp[: x.shape[0]] = x
    return xp


@pytest.mark.parametrize("b,mode,gran", AFFINE_CASES,
                         ids=[f"int{b}_{m}_{g}" for b, m, g in AFFINE_CASES])
def test_scaled_int_matches_torchao(b, mode, gran):
    key = f"int{b}_{mode}_{gran}"
    x = INT_AFFINE["x_random"]
    r = x.shape[0]
    xp = jnp.asarray(_pad_rows(x))
    spec = _spec(b, mode, gran)
    got = np.asarray(bs.fake_quant(xp, spec))
    assert_same(got[:r], INT_AFFINE[f"{key}__y"], x, f"fake_quant(x, {spec!r}) vs torchao",
                signed_zero=False)
    q = bs.quantize(xp, spec)
    want_scale = INT_AFFINE[f"{key}__scale"]
    scales = np.asarray(q.scales)
    assert scales.dtype == np.float32
    if gran == "group32":
        assert scales.shape == (ROWS, 2)
        scales, zp = scales[:r], (None if q.zero_point is None else np.asarray(q.zero_point)[:r])
    else:
        zp = None if q.zero_point is None else np.asarray(q.zero_point)
    assert_same(scales.reshape(want_scale.shape), want_scale, what=f"{spec} scales")
    if mode == "asym":
        want_zp = INT_AFFINE[f"{key}__zero_point"]
        np.testing.assert_array_equal(zp.reshape(want_zp.shape), want_zp)
    assert_same(bs.dequantize(q), got, np.asarray(xp), f"dequantize(quantize(x, {spec!r}))")


@pytest.mark.parametrize("b,mode", [(b, m) for b in BITS for m in MODES],
                         ids=[f"int{b}_{m}" for b in BITS for m in MODES])
def test_scaled_int_ties_match_torchao(b, mode):
    key = f"ties_int{b}_{mode}"
    x = INT_AFFINE[f"{key}__x"]
    xp = jnp.asarray(_pad_rows(x))
    spec = _spec(b, mode, "tensor")
    got = np.asarray(bs.fake_quant(xp, spec))[: x.shape[0]]
    assert_same(got, INT_AFFINE[f"{key}__y"], x, f"fake_quant(ties, {spec!r}) vs torchao",
                signed_zero=False)
    q = bs.quantize(xp, spec)
    assert_same(np.asarray(q.scales).reshape(-1), INT_AFFINE[f"{key}__scale"].reshape(-1),
                what=f"{spec} scale")
    if mode == "asym":
        np.testing.assert_array_equal(np.asarray(q.zero_point).reshape(-1),
                                      INT_AFFINE[f"{key}__zero_point"].reshape(-1))


# ---------------------------------------------------------------------------------------------
# Restricted symmetric default


def _amax_groups(rng):
    """[12, 64] heavy-tailed data whose groups of 32 each hold both +amax and -amax."""
    x = rng.standard_t(3, (ROWS, 64)).astype(np.float32)
    g = x.reshape(ROWS, 2, 32)
    amax = np.abs(g).max(-1)
    g[:, :, 3] = amax
    g[:, :, 17] = -amax
    return g.reshape(ROWS, 64)


@pytest.mark.parametrize("b", BITS)
def test_restricted_symmetric_never_emits_qmin_and_hits_amax(b):
    rng = np.random.default_rng(b)
    qmax = 2 ** (b - 1) - 1
    for gran, x in (("@g32", _amax_groups(rng)), ("@tensor", _pad_rows(INT_AFFINE["x_random"])),
                    ("@g32", _pad_rows(INT_AFFINE["x_random"])),
                    ("@tensor", rng.standard_cauchy((ROWS, 64)).astype(np.float32))):
        spec = f"int{b}{gran}"
        q = bs.quantize(jnp.asarray(x), spec)
        c = signed_codes(q, b)
        assert c.min() >= -qmax, f"{spec} emitted code {c.min()} (= -2^(b-1))"
        assert c.max() <= qmax
        # Negating the input negates the codes exactly (the restricted range is symmetric).
        cn = signed_codes(bs.quantize(jnp.asarray(-x), spec), b)
        np.testing.assert_array_equal(cn, -c)
    # +amax and -amax map to +-scale*qmax (float32 product), scale = amax / qmax (float32).
    x = _amax_groups(rng)
    spec = f"int{b}@g32"
    y = np.asarray(bs.fake_quant(jnp.asarray(x), spec)).reshape(ROWS, 2, 32)
    scales = np.asarray(bs.quantize(jnp.asarray(x), spec).scales)
    assert scales.shape == (ROWS, 2)
    amax = np.abs(x.reshape(ROWS, 2, 32)).max(-1)
    assert_same(scales, amax / np.float32(qmax), what=f"{spec} scale = amax/qmax")
    top = scales * np.float32(qmax)
    assert_same(y[:, :, 3], top, what=f"{spec}: +amax")
    assert_same(y[:, :, 17], -top, what=f"{spec}: -amax")


# ---------------------------------------------------------------------------------------------
# Channel and group scales vs numpy


def _np_sym(x, scale, qmax):
    """torchao-style fake quant in float32 numpy: clip(round(x * (1/scale))) * scale."""
    inv = np.float32(1) / scale
    y = np.clip(np.round(x * inv), -qmax, qmax) + np.float32(0)  # integer grid: single +0
    return (y * scale).astype(np.float32)


@pytest.mark.parametrize("axis", [0, -1, 1])
def test_int8_channel(axis):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((16, 64)) * np.exp(rng.uniform(-3, 3, (16, 1)))
         * np.exp(rng.uniform(-2, 2, (1, 64)))).astype(np.float32)
    q = _jit("q", "int8@channel", axis)(jnp.asarray(x))
    want_scale = np.abs(x).max(axis=axis, keepdims=True) / np.float32(127)
    scales = np.asarray(q.scales)
    assert scales.shape == want_scale.shape, (scales.shape, want_scale.shape)
    assert_same(scales, want_scale, what=f"int8@channel axis={axis} scales")
    got = np.asarray(_jit("fq", "int8@channel", axis)(jnp.asarray(x)))
    assert_same(got, _np_sym(x, want_scale, 127), x, f"int8@channel axis={axis} values")
    assert_same(_jit("dq", None)(q), got, x, "dequantize(quantize)")


def test_int4_g128():
    rng = np.random.default_rng(6)
    x = rng.standard_t(4, (4, 256)).astype(np.float32)
    q = _jit("q", "int4@g128")(jnp.asarray(x))
    g = x.reshape(4, 2, 128)
    want_scale = np.abs(g).max(-1, keepdims=True) / np.float32(7)
    assert_same(np.asarray(q.scales), want_scale.reshape(4, 2), what="int4@g128 scales")
    got = np.asarray(_jit("fq", "int4@g128")(jnp.asarray(x)))
    assert_same(got, _np_sym(g, want_scale, 7).reshape(4, 256), x, "int4@g128 values")
    assert_same(_jit("dq", None)(q), got, x, "dequantize(quantize)")
    assert signed_codes(q, 4).min() >= -7


def test_block_size_must_divide_axis():
    x = jnp.zeros((4, 100), jnp.float32)
    for call in (lambda: bs.fake_quant(x, "int4@g128"), lambda: bs.quantize(x, "int4@g128")):
        with pytest.raises(ValueError) as info:
            call()
        assert "128" in str(info.value) and "100" in str(info.value), str(info.value)


# ---------------------------------------------------------------------------------------------
# Ternary and binary


TB_CASES = ["normal", "heavy", "zeros", "tiny", "ties"]


def _check_pattern(got, want, what):
    np.testing.assert_array_equal(np.sign(got), np.sign(want), err_msg=f"{what}: sign pattern")
    np.testing.assert_array_equal(got == 0, want == 0, err_msg=f"{what}: zero pattern")


@pytest.mark.parametrize("case", TB_CASES)
def test_ternary_matches_bitnet_reference(case):
    w = TERNARY_BINARY[f"ternary_{case}__w"]
    want = TERNARY_BINARY[f"ternary_{case}__y"]
    got = np.asarray(_jit("fq", "ternary")(jnp.asarray(w)))
    _check_pattern(got, want, f"ternary {case}")
    if case == "ties":
        # Exact (RNE: +-0.5 gamma -> 0, +-1.5 gamma -> +-1); the integer grid has a single +0.
        assert_same(got, want, w, "ternary ties", signed_zero=False)
    else:
        np.testing.assert_array_max_ulp(got, want, maxulp=2)
    q = _jit("q", "ternary")(jnp.asarray(w))
    assert set(np.unique(signed_codes(q, 2))) <= {-1, 0, 1}
    gamma = max(float(TERNARY_BINARY[f"ternary_{case}__gamma"][0]), 1e-5)
    scale = float(np.asarray(q.scales).reshape(()))
    np.testing.assert_allclose(scale, gamma, rtol=1e-6)


@pytest.mark.parametrize("case", TB_CASES)
def test_binary_matches_formula(case):
    w = TERNARY_BINARY[f"ternary_{case}__w"]
    want = TERNARY_BINARY[f"binary_{case}__y__formula"]
    got = np.asarray(_jit("fq", "binary")(jnp.asarray(w)))
    _check_pattern(got, want, f"binary {case}")
    np.testing.assert_array_max_ulp(got, want, maxulp=2)
    assert_same(_jit("dq", None)(_jit("q", "binary")(jnp.asarray(w))), got, w, "binary qdq")


# ---------------------------------------------------------------------------------------------
# MSE clip search


def test_int4_mse_clip_is_optimal_over_candidates():
    rng = np.random.default_rng(9)
    x = rng.standard_t(2.5, (16, 256)).astype(np.float32)
    g = x.reshape(16, 8, 32)
    y_mse = np.asarray(_jit("fq", "int4@g32+mse")(jnp.asarray(x))).reshape(16, 8, 32)
    y_abs = np.asarray(_jit("fq", "int4@g32")(jnp.asarray(x))).reshape(16, 8, 32)

    def sse(y):
        return np.sum((g.astype(np.float64) - y.astype(np.float64)) ** 2, axis=-1)

    err_mse, err_abs = sse(y_mse), sse(y_abs)
    assert np.all(err_mse <= err_abs * (1 + 1e-6)), np.max(err_mse / err_abs)
    amax = np.abs(g).max(-1, keepdims=True)
    errs = []
    for r in MSE_CLIP_RATIOS:
        scale = (amax * np.float32(r)) / np.float32(7)  # float32 throughout
        errs.append(sse(_np_sym(g, scale, 7)))
    best = np.min(np.stack(errs), axis=0)
    np.testing.assert_allclose(err_mse, best, rtol=1e-5)
    assert np.mean(err_mse < err_abs * (1 - 1e-3)) > 0.5  # clipping helps on heavy tails
    # The output of every group lies on the grid of one candidate scale (an int multiple).
    q = _jit("q", "int4@g32+mse")(jnp.asarray(x))
    s = np.asarray(q.scales).reshape(16, 8, 1)
    c = signed_codes(q, 4).reshape(16, 8, 32)
    assert_same(c.astype(np.float32) * s, y_mse, what="codes * scales")


# ---------------------------------------------------------------------------------------------
# Storage cost


@pytest.mark.parametrize("spec,shape,want", [
    ("int4@g128", (8, 256), 4 + 32 / 128),
    ("int8", (8, 256), 8.0),
    ("mxfp4", (8, 64), 4 + 8 / 32),
    ("nvfp4", (8, 64), 4 + 8 / 16 + 32 / 512),
])
def test_bits_per_element(spec, shape, want):
    # Storage cost depends on shapes and dtypes only: trace quantize abstractly (no compile).
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    q = jax.eval_shape(lambda v: bs.quantize(v, spec), x)
    assert isinstance(q, bs.QArray)
    assert q.bits_per_element == pytest.approx(want, rel=1e-12)


def test_bits_per_element_concrete():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((ROWS, 64)).astype(np.float32))
    assert bs.quantize(x, "int4@g32").bits_per_element == pytest.approx(4 + 32 / 32)
    assert bs.quantize(x, "int4@g32+asym").bits_per_element == pytest.approx(4 + 32 / 32 + 4 / 32)
