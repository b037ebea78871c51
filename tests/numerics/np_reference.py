"""An independent numpy implementation of every spec's fake-quant, for the golden tests.

It follows the documented semantics (README "Formats and specs" and "Exactness notes",
FORMATS.md): element rounding exact in float64, subnormals included; scale arithmetic in float32
with subnormal operands read as zero and results below 2^-126 flushed (DAZ / FTZ), computed here
in float64 and rounded once; it shares no code with bitscale. Nearest rounding only.
"""

from __future__ import annotations

import numpy as np

import ml_dtypes

F32 = np.float32
TINY = F32(2.0**-126)


def _f32(v) -> np.ndarray:
    return np.asarray(v, np.float32)


# ---------------------------------------------------------------------------------------------
# float32 arithmetic with DAZ / FTZ


def flush(x) -> np.ndarray:
    x = _f32(x)
    return np.where(np.abs(x) < TINY, np.copysign(F32(0), x), x).astype(np.float32)


def to_f32_ftz(r) -> np.ndarray:
    """float64 -> float32 nearest even with an unbounded exponent, then flushed below 2^-126."""
    r = np.asarray(r, np.float64)
    with np.errstate(all="ignore"):
        small = np.abs(r) < 2.0**-100
        scaled = np.where(small, r * 2.0**128, r).astype(np.float32)  # rounds in normal range
        tiny = np.abs(scaled) < np.where(small, F32(4.0), TINY)  # below 2^-126 once rounded
        out = np.where(small, scaled.astype(np.float64) * 2.0**-128, scaled).astype(np.float32)
    return np.where(tiny, np.copysign(F32(0), out), out).astype(np.float32)


def ftz_op(name: str, a, b) -> np.ndarray:
    """a (op) b for op in mul / div / add / sub: flushed operands, float64 arithmetic (exact for
    products; one rounding to float32 is then correct for all four, since 53 >= 2 * 24 + 2)."""
    a64, b64 = flush(a).astype(np.float64), flush(b).astype(np.float64)
    with np.errstate(all="ignore"):
        r = {"mul": np.multiply, "div": np.divide, "add": np.add, "sub": np.subtract}[name](
            a64, b64)
    return to_f32_ftz(r)


def mul(a, b):
    return ftz_op("mul", a, b)


def div(a, b):
    return ftz_op("div", a, b)


def sub(a, b):
    return ftz_op("sub", a, b)


# ---------------------------------------------------------------------------------------------
# Element grids


def round_float(x, ebits: int, mbits: int, convention: str, signed: bool = True) -> np.ndarray:
    """Saturating nearest-even rounding of float32 ``x`` to an ExMy grid, in float64."""
    x = _f32(x)
    bias = 2 ** (ebits - 1) - 1
    emin = 1 - bias
    emax = bias if convention == "ieee" else bias + 1
    full = 2 ** (mbits + 1) - 1
    top = (full - 1 if convention == "fn" else full) * 2.0 ** (emax - mbits)
    with np.errstate(all="ignore"):
        a = np.abs(x.astype(np.float64))
        _, e = np.frexp(np.where(np.isfinite(a) & (a > 0), a, 1.0))
        p = np.maximum(e - 1, emin)
        quantum = np.ldexp(1.0, p - mbits)
        y = np.rint(a / quantum) * quantum
        y = np.minimum(y, top)
    y = np.where(np.isinf(a), np.inf if convention == "ieee" else top, y)
    y = np.where(np.signbit(x), -y, y)
    if not signed:
        y = np.where(np.signbit(x), 0.0, y)
    y = np.where(np.isnan(x), np.nan, y)
    return y.astype(np.float32)


FORMATS = {"fp8_e4m3": (4, 3, "fn", True), "fp8_e5m2": (5, 2, "ieee", True),
           "fp6_e3m2": (3, 2, "ext", True), "fp6_e2m3": (2, 3, "ext", True),
           "fp4_e2m1": (2, 1, "ext", True), "bf16": (8, 7, "ieee", True),
           "fp16": (5, 10, "ieee", True), "ue4m3": (4, 3, "fn", False),
           "e3m4": (3, 4, "ieee", True), "e4m3": (4, 3, "ieee", True),
           "e3m3": (3, 3, "ieee", True), "e3m2": (3, 2, "ieee", True)}


def fmt_max(f) -> float:
    ebits, mbits, conv, _ = f
    bias = 2 ** (ebits - 1) - 1
    emax = bias if conv == "ieee" else bias + 1
    full = 2 ** (mbits + 1) - 1
    return (full - 1 if conv == "fn" else full) * 2.0 ** (emax - mbits)


def fmt_emax(f) -> int:
    ebits, _, conv, _ = f
    bias = 2 ** (ebits - 1) - 1
    return bias if conv == "ieee" else bias + 1


def fmt_min_normal(f) -> float:
    return 2.0 ** (2 - 2 ** (f[0] - 1))


def round_int(x, qmin: int, qmax: int) -> np.ndarray:
    x = _f32(x)
    with np.errstate(invalid="ignore"):
        q = np.rint(np.clip(x, qmin, qmax)) + 0.0  # integer grids have one zero, +0
        return np.where(np.isnan(x), np.nan, q).astype(np.float32)


def e8m0_cast(x) -> np.ndarray:
    """ml_dtypes' float8_e8m0fnu cast with finite overflow and +Inf saturated to 2^127."""
    x = _f32(x)
    with np.errstate(invalid="ignore"):
        clipped = np.where(np.isnan(x), x, np.minimum(x, F32(2.0**127)))
        y = clipped.astype(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    return np.where((x <= 0) | np.isnan(x), np.nan, y).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Sums and groups


def pairwise_sum(x: np.ndarray) -> np.ndarray:
    """Sum over the last axis: pad with +0 to a power of two, add adjacent pairs level by level,
    subnormal inputs and partial sums flushed to zero."""
    x = flush(x)
    n = x.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()
    x = np.concatenate([x, np.zeros(x.shape[:-1] + (size - n,), np.float32)], axis=-1)
    with np.errstate(all="ignore"):
        while x.shape[-1] > 1:
            x = flush(x[..., 0::2] + x[..., 1::2])
    return x[..., :1]


def to_groups(x: np.ndarray, granularity: str, block: int) -> np.ndarray:
    """[..., n] (the quantization axis last) -> [rows, groups, size]."""
    if granularity == "tensor":
        return x.reshape(1, 1, -1)
    n = x.shape[-1]
    size = n if granularity == "channel" else block
    return x.reshape(-1, n // size, size)


# ---------------------------------------------------------------------------------------------
# Scaled specs


def _amax(xg):
    with np.errstate(invalid="ignore"):
        a = np.max(np.abs(xg), axis=-1, keepdims=True)
    return np.where(np.isnan(xg).any(-1, keepdims=True), np.nan, a).astype(np.float32)


def _max_nan(a, b):
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(a), np.nan, np.maximum(a, F32(b))).astype(np.float32)


def _cast_scale(s, sf):
    with np.errstate(invalid="ignore"):
        s = np.clip(s, F32(fmt_min_normal(sf)), F32(fmt_max(sf)))
    return round_float(s, *sf)


def float_scaled(xg, elem, sf, two_level: bool, int_range: str, amax, s_t, lo_hi=None):
    """torchao-style float scales (reciprocal multiplication) and the fake-quant output."""
    with np.errstate(all="ignore"):
        if elem[0] == "int" and int_range == "asymmetric":
            bits = elem[1]
            qmax_u = 2**bits - 1
            lo, hi = lo_hi
            scale = div(sub(hi, lo), F32(qmax_u))
            scale = _max_nan(scale, TINY)
            if sf is not None:
                scale = _cast_scale(scale, sf)
            zp = np.clip(-np.rint(div(lo, scale)), 0, qmax_u)
            zp = np.where(np.isnan(scale), 0, zp)
            enc, dec = div(F32(1), scale), scale
            v = mul(xg, enc)
            q = np.rint(np.clip(v, -2.0**22, 2.0**22)) + 0.0 + zp
            q = np.where(np.isnan(v), zp, np.clip(q, 0, qmax_u))
            y = mul((q - zp).astype(np.float32), dec)
            return np.where(np.isnan(v), np.nan, y).astype(np.float32)
        if elem[0] == "int":
            bits = elem[1]
            qmax = 2 ** (bits - 1) - 1
            qmin = -qmax - 1 if int_range == "full" else -qmax
            rng = F32((qmax - (-qmax - 1)) / 2 if int_range == "full" else qmax)
        else:
            rng = F32(fmt_max(elem[1]))
        ratio = div(amax, rng)
        if two_level:
            s_b = _cast_scale(div(ratio, s_t), sf)
            enc, dec = div(div(F32(1), s_t), s_b), mul(s_t, s_b)
        elif sf is None:
            scale = _max_nan(ratio, TINY)
            enc, dec = div(F32(1), scale), scale
        else:
            s_b = _cast_scale(ratio, sf)
            enc, dec = div(F32(1), s_b), s_b
        v = mul(xg, enc)
        if elem[0] == "int":
            q = np.clip(np.rint(np.clip(v, -2.0**22, 2.0**22)) + 0.0, qmin, qmax)
            y = mul(np.where(np.isnan(v), 0, q).astype(np.float32), dec)
            return np.where(np.isnan(v), np.nan, y).astype(np.float32)
        return mul(round_float(v, *elem[1]), dec)


def _floor_log2(a):
    _, e = np.frexp(np.where(a > 0, a.astype(np.float64), 1.0))
    return e - 1


def pow2_exp(amax, elem, rule: str):
    """OCP MX shared exponent k (scale 2^k) from the float32 amax."""
    emax = 0 if elem[0] == "int" else fmt_emax(elem[1])
    mbits = elem[1] - 2 if elem[0] == "int" else elem[1][1]
    a = _f32(amax)
    if rule == "rceil":
        top = F32(127 / 64) if elem[0] == "int" else F32(fmt_max(elem[1]))
        r = div(a, top)
        m, e = np.frexp(np.where(r > 0, r.astype(np.float64), 1.0))
        k = np.where(m > 0.5, e, e - 1)
        k = np.where(r > 0, k, -127)
    else:
        if rule == "even":
            a = (a.view(np.uint32) + np.uint32(1 << (22 - mbits))).view(np.float32)
        k = np.where(a > 0, _floor_log2(a), -126)
        if rule == "ceil":
            exact = (a.view(np.uint32) & np.uint32(0x7FFFFF)) == 0
            k = np.where((a > 0) & ~exact, k + 1, k)
        k = k - emax
    return np.clip(k, -127, 127)


def pow2_scaled(xg, elem, k):
    scale = np.ldexp(1.0, k)
    with np.errstate(all="ignore"):
        v = xg.astype(np.float64) / scale
        if elem[0] == "int":
            q = (np.clip(np.rint(v * 64.0), -127, 127) + 0.0) / 64.0
            y = q * scale
            y = np.where(np.isnan(xg), np.nan, y)
        else:
            y = round_float(v.astype(np.float32), *elem[1]).astype(np.float64) * scale
    return y.astype(np.float32)


MSE_RATIOS = [F32(1.0 - k / 40.0) for k in range(25)]


def _mse(xg, amax, qdq):
    best_err = np.full(amax.shape, np.inf, np.float32)
    best = amax.copy()
    for r in MSE_RATIOS:
        with np.errstate(all="ignore"):
            cand = mul(amax, r)
            d = sub(xg, qdq(cand))
            err = pairwise_sum(mul(d, d))
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, cand, best)
    return best


def fake_quant(x: np.ndarray, spec: dict) -> np.ndarray:
    """Fake-quantizes float32 ``x`` along its last axis; ``spec`` is a dict (see `parse`)."""
    x = _f32(x)
    kind = spec["kind"]
    if kind == "scaled" and spec["granularity"] == "block2d":
        # NVIDIA's 2-D tiles: reshape(R/b, b, C/b, b).transpose(0, 2, 1, 3), each a 1-D block.
        b, (r, c) = spec["block"], x.shape[-2:]
        t = x.reshape(-1, r // b, b, c // b, b).transpose(0, 1, 3, 2, 4)
        y = fake_quant(t.reshape(-1, (c // b) * b * b), dict(spec, granularity="block",
                                                             block=b * b))
        return y.reshape(-1, r // b, c // b, b, b).transpose(0, 1, 3, 2, 4).reshape(x.shape)
    if kind == "float":
        return round_float(x, *spec["elem"][1])
    if kind == "int":
        bits, signed = spec["elem"][1], spec["signed"]
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        return round_int(x, lo, hi)
    if kind == "e8m0":
        return e8m0_cast(x)
    xg = to_groups(x, spec["granularity"], spec["block"])
    elem = spec["elem"]
    if elem[0] in ("ternary", "binary"):
        with np.errstate(all="ignore"):
            gamma = div(pairwise_sum(np.abs(xg)), F32(xg.shape[-1]))
            if elem[0] == "binary":
                neg = np.signbit(xg) & (xg != 0)
                y = np.where(neg, -gamma, gamma)
            else:
                enc = div(F32(1), _max_nan(gamma, F32(1e-5)))
                dec = div(F32(1), enc)
                v = mul(xg, enc)
                y = mul((np.clip(np.rint(v), -1, 1) + 0.0).astype(np.float32), dec)
                y = np.where(np.isnan(v), np.nan, y)
        y = np.where(np.isnan(xg), np.nan, y).astype(np.float32)
        return y.reshape(x.shape)
    amax = _amax(xg)
    bad = ~np.isfinite(amax)
    if spec["pow2"]:
        def qdq(a):
            return pow2_scaled(xg, elem, pow2_exp(a, elem, spec["rule"]))
        if spec["mse"]:
            amax = _mse(xg, amax, qdq)
        y = np.where(bad, np.nan, qdq(amax))
        return y.astype(np.float32).reshape(x.shape)
    s_t = None
    if spec["two_level"]:
        at = F32(np.max(np.abs(x))) if not np.isnan(x).any() else F32(np.nan)
        rng = (F32(fmt_max(elem[1])) if elem[0] == "float" else
               F32(2 ** (elem[1] - 1) - 1))
        with np.errstate(all="ignore"):
            s_t = F32(1.0) if at == 0 else div(at, F32(fmt_max(spec["sf"]) * rng))
    lo_hi = None
    if spec["int_range"] == "asymmetric":
        with np.errstate(invalid="ignore"):
            lo = np.minimum(np.min(xg, -1, keepdims=True), F32(0))
            hi = np.maximum(np.max(xg, -1, keepdims=True), F32(0))
        nan_g = np.isnan(xg).any(-1, keepdims=True)
        lo_hi = (np.where(nan_g, np.nan, lo).astype(np.float32),
                 np.where(nan_g, np.nan, hi).astype(np.float32))

    def qdq(a, lh=lo_hi):
        return float_scaled(xg, elem, spec["sf"], spec["two_level"], spec["int_range"], a, s_t,
                            lh)
    if spec["mse"]:
        def qdq_mse(cand):
            lh = None
            if lo_hi is not None:
                with np.errstate(all="ignore"):
                    ratio = div(cand, _max_nan(amax, F32(1e-30)))
                lh = tuple(mul(v, ratio) for v in lo_hi)
            return qdq(cand, lh)
        best = _mse(xg, amax, qdq_mse)
        if lo_hi is not None:
            with np.errstate(all="ignore"):
                ratio = div(best, _max_nan(amax, F32(1e-30)))
            lo_hi = tuple(mul(v, ratio) for v in lo_hi)
        amax = best
    return qdq(amax, lo_hi).reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# Spec names (the grammar of README "Formats and specs", parsed independently)

_NAMED = {
    "mxfp8_e4m3": "fp8_e4m3@g32:e8m0", "mxfp8_e5m2": "fp8_e5m2@g32:e8m0",
    "mxfp6_e3m2": "fp6_e3m2@g32:e8m0", "mxfp6_e2m3": "fp6_e2m3@g32:e8m0",
    "mxfp4": "fp4_e2m1@g32:e8m0", "mxint8": "int8@g32:e8m0",
    "nvfp4": "fp4_e2m1@g16:ue4m3+2level", "nvfp4_single": "fp4_e2m1@g16:ue4m3",
    "nvfp4_2d": "fp4_e2m1@g16x16:ue4m3+2level", "nvint4": "int4@g16:ue4m3+2level",
    "ternary": "ternary@tensor", "binary": "binary@tensor",
}


def _elem(name: str):
    if name in FORMATS:
        return ("float", FORMATS[name])
    if name.startswith("uint"):
        return ("uint", int(name[4:]))
    if name.startswith("int"):
        return ("int", int(name[3:]))
    if name in ("ternary", "binary"):
        return (name, None)
    raise ValueError(name)


def parse(name: str) -> dict:
    head, *opts = name.split("+")
    if head in _NAMED:
        head, *more = _NAMED[head].split("+")
        opts = more + opts
    head, _, sf = head.partition(":")
    base, at, gran = head.partition("@")
    if base == "e8m0":
        return {"kind": "e8m0"}
    elem = _elem(base)
    if not at and not sf and not opts:
        if elem[0] == "float":
            return {"kind": "float", "elem": elem}
        return {"kind": "int", "elem": elem, "signed": elem[0] == "int"}
    if gran.startswith("g") and "x" in gran:  # g<N>x<N>: one scale per N x N tile
        granularity, block = "block2d", int(gran[1:].partition("x")[0])
    else:
        granularity, block = ("block", int(gran[1:])) if gran.startswith("g") else (gran, 0)
    pow2 = sf == "e8m0"
    rule = next((o for o in opts if o in ("floor", "ceil", "even", "rceil")), "floor")
    int_range = ("asymmetric" if "asym" in opts else "full" if "full" in opts
                 else "restricted")
    return {"kind": "scaled", "elem": elem, "granularity": granularity, "block": block,
            "pow2": pow2, "rule": rule, "sf": None if pow2 or not sf else FORMATS[sf],
            "two_level": "2level" in opts, "int_range": int_range, "mse": "mse" in opts}
