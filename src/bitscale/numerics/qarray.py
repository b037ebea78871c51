"""quantize / dequantize / fake-quantize for every spec, and the `QArray` container.

The fake-quant path and `dequantize(quantize(x))` compute each output with the same operations on
the same values, so they agree bit for bit (see the README's format table for the one exception:
NaN inputs of unscaled formats that have no NaN code).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.numerics import bits as B
from bitscale.numerics import elementwise as E
from bitscale.numerics import ieee
from bitscale.numerics import packing
from bitscale.numerics import scaling as S
from bitscale.numerics.formats import (
    BinaryFormat, E8M0Format, FloatFormat, IntFormat, TernaryFormat)
from bitscale.numerics.specs import MSE_CLIP_RATIOS, QuantSpec, Spec, resolve_spec

U32, I32 = B.U32, B.I32
Rounding = Literal["nearest", "stochastic"]
ROUNDINGS = ("nearest", "stochastic")
_FLOAT_INPUTS = (jnp.float32, jnp.bfloat16, jnp.float16)


# ---------------------------------------------------------------------------------------------
# Validation


def check_input(x: Any, name: str = "x") -> jax.Array:
    """Accepts float32 / bfloat16 / float16 arrays; rejects everything else by name."""
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype  # before any x64 downcast
    if dtype not in [jnp.dtype(d) for d in _FLOAT_INPUTS]:
        raise TypeError(
            f"{name} must be a float32, bfloat16 or float16 array, got dtype {dtype}"
            + ("; cast integers to float first" if jnp.issubdtype(dtype, jnp.integer) else "")
            + ("; float64 is not supported (cast to float32)" if dtype == np.float64 else ""))
    return jnp.asarray(x)


def check_axis(axis: int, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}: {axis!r}")
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"axis {axis!r} is out of range for an array of rank {ndim}")
    return int(axis) % max(ndim, 1)


def check_rounding(rounding: str, key: Any) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs a PRNG key: pass key=jax.random.key(seed)")


def random_bits_for(x: jax.Array, rounding: str, key: Any) -> jax.Array | None:
    return B.random_bits(key, x.shape) if rounding == "stochastic" else None


# ---------------------------------------------------------------------------------------------
# QArray


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """Quantized array: packed element codes plus scales.

    Attributes:
      codes: uint8 codes packed along the last axis (uint16 for 16-bit formats).
      scales: per-group scales in the caller's layout (``axis`` holds the groups): float32, or
        uint8 codes of the spec's scale format (E8M0 exponents, UE4M3 bits); None for casts.
      zero_point: int32 per-group zero points (asymmetric integers) or None.
      tensor_scale: float32 scalar of two-level specs (NVFP4) or None.
      spec, shape, dtype, axis: static metadata.
    """

    codes: jax.Array
    scales: jax.Array | None
    zero_point: jax.Array | None
    tensor_scale: jax.Array | None
    spec: Spec = dataclasses.field(metadata=dict(static=True))
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))
    axis: int = dataclasses.field(metadata=dict(static=True))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def bits_per_element(self) -> float:
        """Storage bits per element: element codes plus scales, zero points and tensor scale."""
        total = self.size * elem_bits(self.spec)
        for a in (self.scales, self.zero_point):
            if a is not None:
                per = 8 * a.dtype.itemsize if a is self.scales else elem_bits(self.spec)
                total += per * int(np.prod(a.shape))
        if self.tensor_scale is not None:
            total += 32
        return total / max(self.size, 1)


def elem_bits(spec: Spec) -> int:
    fmt = spec.elem if isinstance(spec, QuantSpec) else spec
    return fmt.storage_bits


# ---------------------------------------------------------------------------------------------
# Core


class _Out(NamedTuple):
    y: jax.Array  # float32 fake-quant result in group layout
    codes: jax.Array | None  # uint32 element codes (group layout)
    clipped: jax.Array | None  # bool: the element was outside the representable range
    step: jax.Array | None  # float32 local grid spacing (for the trust estimator)


def quantize_elements(x: jax.Array, fmt, rand, want_codes: bool, want: str | None) -> _Out:
    """Unscaled element casts."""
    mag = B.to_bits(x) & U32(B.ABS_MASK)
    if isinstance(fmt, FloatFormat) and not want_codes and want is None:
        return _Out(E.cast_float(x, fmt, rand), None, None, None)
    if isinstance(fmt, FloatFormat):
        r = E.round_float(x, fmt, rand)
        y = E.rounded_to_f32(r)
        codes = E.encode_float(r, fmt) if want_codes else None
        clipped = (mag > B.to_bits(jnp.float32(fmt.max_value))) & ~(B.is_inf_bits(mag) & fmt.has_inf)
        step = B.from_bits(B.compose(jnp.ones_like(r.q), r.qexp)) if want == "step" else None
        return _Out(y, codes, clipped, step)
    if isinstance(fmt, E8M0Format):
        c = E.e8m0_codes_from_f32(x)
        y = E.e8m0_exp_to_f32(c)
        return _Out(y, c, mag > B.to_bits(jnp.float32(2.0**127)), y if want == "step" else None)
    q = E.round_fixed(jnp.clip(x, float(fmt.qmin), float(fmt.qmax)), 0, rand)
    y = E.keep_nan(q.astype(jnp.float32), x)
    codes = (q.astype(U32) & U32(2**fmt.bits - 1)) if want_codes else None
    clipped = (x > fmt.qmax) | (x < fmt.qmin)
    return _Out(y, codes, clipped, jnp.ones_like(y) if want == "step" else None)


def _pow2_groups(xg, spec: QuantSpec, rand, k, bad, want_codes, want) -> _Out:
    """OCP MX style: power-of-two scale 2^k per group folded into the exponent arithmetic."""
    fmt = spec.elem
    mag = B.to_bits(xg) & U32(B.ABS_MASK)
    if isinstance(fmt, FloatFormat):
        r = E.round_float(xg, fmt, rand, scale_exp=k)
        y = E.rounded_to_f32(r, k)
        codes = E.encode_float(r, fmt) if want_codes else None
        limit = B.compose(jnp.full_like(mag, fmt.max_significand), fmt.emax - fmt.mbits + k)
        step = B.from_bits(B.compose(jnp.ones_like(r.q), r.qexp + k)) if want == "step" else None
    else:  # MXINT-b: sign-magnitude k / 2^(b-2)
        qe = S.mxint_qexp(fmt)
        qmax = 2 ** (fmt.bits - 1) - 1
        q = E.round_fixed(xg, qe, rand, scale_exp=k)
        q = jnp.clip(q, -qmax, qmax)
        y = _mxint_value(q, qe + k)
        codes = (q.astype(U32) & U32(2**fmt.bits - 1)) if want_codes else None
        limit = B.compose(jnp.full_like(mag, qmax), qe + k)
        step = (jnp.broadcast_to(B.from_bits(B.pow2_bits(qe + k)), y.shape)
                if want == "step" else None)
    y = jnp.where(bad, jnp.float32(jnp.nan), y)
    return _Out(y, codes, mag > limit, step)


def _mxint_value(q: jax.Array, qexp: jax.Array) -> jax.Array:
    """float32 value of the signed integer q times 2^qexp, built on the bits (exact)."""
    sign = jnp.where(q < 0, U32(B.SIGN_MASK), U32(0))
    return B.from_bits(B.compose(jnp.abs(q).astype(U32), qexp) | sign)


def _float_scaled_groups(xg, spec: QuantSpec, rand, sc: S.FloatScales, want_codes, want) -> _Out:
    """Float32 or float-format scales: encode x * enc, round onto the element grid, decode * dec.

    Both products are `ieee.mul` (float32 with DAZ / FTZ, the same bits on every backend).
    """
    fmt = spec.elem
    if isinstance(fmt, BinaryFormat):
        neg = (B.to_bits(xg) >= U32(B.SIGN_MASK)) & ((B.to_bits(xg) & U32(B.ABS_MASK)) != 0)
        dec = jnp.broadcast_to(sc.dec, xg.shape)
        y = jnp.where(neg, -dec, dec)
        y = jnp.where(jnp.isnan(xg), jnp.float32(jnp.nan), y)
        codes = neg.astype(U32) if want_codes else None
        clipped = (jnp.abs(ieee.mul(xg, ieee.div(1.0, sc.dec))) > 1.0
                   if want == "clipped" else None)
        step = jnp.broadcast_to(ieee.mul(2.0, sc.dec), y.shape) if want == "step" else None
        return _Out(y, codes, clipped, step)
    v = ieee.mul(xg, sc.enc)
    if isinstance(fmt, FloatFormat) and not want_codes and want is None:
        return _Out(ieee.mul(E.cast_float(v, fmt, rand), sc.dec), None, None, None)
    if isinstance(fmt, FloatFormat):
        r = E.round_float(v, fmt, rand)
        y = ieee.mul(E.rounded_to_f32(r), sc.dec)
        codes = E.encode_float(r, fmt) if want_codes else None
        clipped = jnp.abs(v) > fmt.max_value
        step = (ieee.mul(B.from_bits(B.compose(jnp.ones_like(r.q), r.qexp)), sc.dec)
                if want == "step" else None)
        return _Out(y, codes, clipped, step)
    if isinstance(fmt, TernaryFormat):
        qmin, qmax, zp = -1, 1, None
    elif spec.int_range == "asymmetric":
        qmin, qmax, zp = 0, S.asym_qmax(fmt), sc.zero_point
    elif spec.int_range == "full":
        qmin, qmax, zp = fmt.qmin, fmt.qmax, None
    else:
        qmin, qmax, zp = -fmt.qmax, fmt.qmax, None
    vc = jnp.clip(v, -2.0**22, 2.0**22)
    # A NaN scaled value (NaN input or scale, Inf times a zero encoder) stores code 0, which
    # decodes to NaN as fake_quant's output is: its group's scale is NaN or Inf.
    q = jnp.where(jnp.isnan(v), 0, E.round_fixed(vc, 0, rand))
    if zp is not None:
        q = q + zp
    q = jnp.clip(q, qmin, qmax)
    deq = ((q - zp) if zp is not None else q).astype(jnp.float32)
    # NaN where the scaled value is NaN: a NaN input, a NaN scale, or Inf times a zero encoder.
    y = E.keep_nan(ieee.mul(deq, sc.dec), v)
    nbits = 2 if isinstance(fmt, TernaryFormat) else fmt.bits
    codes = (q.astype(U32) & U32(2**nbits - 1)) if want_codes else None
    clipped = None
    if want == "clipped":
        shifted = v if zp is None else ieee.add(v, zp.astype(jnp.float32))
        clipped = (shifted > qmax) | (shifted < qmin)
    step = jnp.broadcast_to(sc.dec, y.shape) if want == "step" else None
    return _Out(y, codes, clipped, step)


class _Scales(NamedTuple):
    """What `quantize` stores besides the codes, in group layout."""

    scales: jax.Array | None
    zero_point: jax.Array | None
    tensor_scale: jax.Array | None


def quantize_groups(xg, spec: QuantSpec, rand, want_codes: bool, want: str | None,
            tensor_amax: jax.Array | None = None):
    """Fake-quantizes [rows, groups, size] float32 groups; returns (_Out, _Scales).

    ``tensor_amax`` (two-level specs) overrides the tensor amax taken over ``xg``: a kernel that
    sees one tile passes the whole tensor's amax.
    """
    if spec.elem.name in ("ternary", "binary"):
        sc = S.absmean_scales(xg, spec)
        out = _float_scaled_groups(xg, spec, rand, sc, want_codes, want)
        return out, _Scales(sc.dec, None, None)
    amax_b = S.amax_bits(xg)
    bad = B.is_nan_bits(amax_b) | B.is_inf_bits(amax_b)
    if spec.pow2_scales:
        def qdq_pow2(amax_f32):
            k = S.pow2_scale_exp(B.to_bits(amax_f32), spec)
            return _pow2_groups(xg, spec, None, k, bad, False, None).y
        amax = B.from_bits(amax_b)
        if spec.clip == "mse":
            amax = S.mse_search(xg, amax, _mse_ratios(), qdq_pow2)
        k = S.pow2_scale_exp(B.to_bits(amax), spec)
        out = _pow2_groups(xg, spec, rand, k, bad, want_codes, want)
        scale_codes = jnp.where(bad, 255, k + 127).astype(jnp.uint8)
        return out, _Scales(scale_codes, None, None)
    amax = B.from_bits(amax_b)
    s_t = None
    if spec.tensor_scale:
        t_amax = B.from_bits(jnp.max(amax_b)) if tensor_amax is None else tensor_amax
        s_t = S.tensor_scale(t_amax, spec)
    lo_hi = None
    if isinstance(spec.elem, IntFormat) and spec.int_range == "asymmetric":
        # NaN groups get NaN bounds explicitly: XLA's min/max reductions may drop NaN.
        nan_g = B.is_nan_bits(amax_b)
        lo_hi = tuple(jnp.where(nan_g, jnp.float32(jnp.nan), v) for v in (
            ieee.minimum(ieee.reduce_min(xg, axis=-1, keepdims=True), 0.0),
            ieee.maximum(ieee.reduce_max(xg, axis=-1, keepdims=True), 0.0)))
    if spec.clip == "mse":
        def qdq(amax_c):
            lh = None if lo_hi is None else tuple(
                ieee.mul(v, ieee.div(amax_c, ieee.maximum(amax, 1e-30))) for v in lo_hi)
            sc_c = S.float_scales(xg, amax_c, spec, s_t, lh)
            return _float_scaled_groups(xg, spec, None, sc_c, False, None).y
        best = S.mse_search(xg, amax, _mse_ratios(), qdq)
        if lo_hi is not None:
            lo_hi = tuple(ieee.mul(v, ieee.div(best, ieee.maximum(amax, 1e-30))) for v in lo_hi)
        amax = best
    sc = S.float_scales(xg, amax, spec, s_t, lo_hi)
    out = _float_scaled_groups(xg, spec, rand, sc, want_codes, want)
    if spec.scale_format is None:
        stored = sc.dec
    else:
        sf = spec.scale_format
        stored = E.encode_float(E.round_float(sc.block_scale, sf), sf).astype(
            jnp.uint16 if sf.storage_bits > 8 else jnp.uint8)
    return out, _Scales(stored, sc.zero_point, s_t)


def _mse_ratios():
    return MSE_CLIP_RATIOS


def fake_quant_core(x: jax.Array, spec: Spec, axis: int, rand: jax.Array | None,
                    want: str | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Fake-quantizes validated float input; returns (y in x.dtype, aux in x's layout).

    ``want`` is None, ``"clipped"`` (aux = bool mask of clipped elements) or ``"step"`` (aux =
    local grid spacing in x's units).
    """
    xf = E.to_f32(x)
    if not isinstance(spec, QuantSpec):
        out = quantize_elements(xf, spec, rand, False, want)
        aux = {"clipped": out.clipped, "step": out.step}.get(want) if want else None
        return E.from_f32(ieee.canonical_nan(out.y), x.dtype), aux
    g = S.grouping(x.shape, spec, axis)
    rg = None if rand is None else g.to_groups(rand)
    out, _ = quantize_groups(g.to_groups(xf), spec, rg, False, want)
    y = E.from_f32(ieee.canonical_nan(g.from_groups(out.y)), x.dtype)
    aux = {"clipped": out.clipped, "step": out.step}.get(want) if want else None
    return y, (None if aux is None else g.from_groups(aux))


# ---------------------------------------------------------------------------------------------
# Public quantize / dequantize


def quantize(x: jax.Array, spec: "str | Spec", *, axis: int = -1, rounding: Rounding = "nearest",
             key: jax.Array | None = None) -> QArray:
    """Quantizes ``x`` to packed codes and scales; `dequantize` inverts it.

    ``dequantize(quantize(x, ...)) == fake_quant(x, ...)`` bit for bit, except that NaN inputs of
    unscaled formats without a NaN code (fp4/fp6, integers) are stored as zero codes.
    """
    spec = resolve_spec(spec)
    x = check_input(x)
    axis = check_axis(axis, x.ndim)
    check_rounding(rounding, key)
    rand = random_bits_for(x, rounding, key)
    xf = E.to_f32(x)
    if not isinstance(spec, QuantSpec):
        out = quantize_elements(xf, spec, rand, True, None)
        codes, sc = out.codes, _Scales(None, None, None)
    else:
        g = S.grouping(x.shape, spec, axis)
        rg = None if rand is None else g.to_groups(rand)
        out, sc = quantize_groups(g.to_groups(xf), spec, rg, True, None)
        codes = g.from_groups(out.codes)
        sc = _Scales(None if sc.scales is None else g.scales_out(sc.scales),
                     None if sc.zero_point is None else g.scales_out(sc.zero_point),
                     sc.tensor_scale)
    nbits = elem_bits(spec)
    container = jnp.uint16 if nbits > 8 else jnp.uint8
    packed = packing.pack_codes(codes.astype(container).reshape(codes.shape or (1,)), nbits)
    return QArray(packed, sc.scales, sc.zero_point, sc.tensor_scale, spec, tuple(x.shape),
                  jnp.dtype(x.dtype), axis)


def _signed(codes: jax.Array, nbits: int) -> jax.Array:
    c = codes.astype(I32)
    return jnp.where(c >= 2 ** (nbits - 1), c - 2**nbits, c)


def dequantize(q: QArray) -> jax.Array:
    """Decodes a `QArray` back to its original dtype."""
    if not isinstance(q, QArray):
        raise TypeError(f"dequantize expects a QArray, got {type(q).__name__}")
    spec, nbits = q.spec, elem_bits(q.spec)
    n_last = q.shape[-1] if q.shape else 1
    codes = packing.unpack_codes(q.codes, nbits, n_last).astype(U32)
    if not q.shape:
        codes = codes.reshape(())
    if not isinstance(spec, QuantSpec):
        y = _decode_cast(codes, spec)
        return E.from_f32(ieee.canonical_nan(y), q.dtype)
    g = S.grouping(q.shape, spec, q.axis)
    cg = g.to_groups(codes)
    fmt = spec.elem
    if spec.pow2_scales:
        sc = g.scales_in(q.scales).astype(I32)
        k = sc - 127
        if isinstance(fmt, FloatFormat):
            y = E.rounded_to_f32(E.decode_float(cg, fmt), k)
        else:
            y = _mxint_value(_signed(cg, fmt.bits), S.mxint_qexp(fmt) + k)
        y = jnp.where(sc == 255, jnp.float32(jnp.nan), y)
    else:
        dec = g.scales_in(q.scales)
        if spec.scale_format is not None:
            dec = E.rounded_to_f32(E.decode_float(dec, spec.scale_format))
            if q.tensor_scale is not None:
                dec = ieee.mul(q.tensor_scale, dec)
        if isinstance(fmt, FloatFormat):
            y = ieee.mul(E.rounded_to_f32(E.decode_float(cg, fmt)), dec)
        elif isinstance(fmt, BinaryFormat):
            dec = jnp.broadcast_to(dec, cg.shape)
            y = jnp.where(cg == 1, -dec, dec)
        else:
            nb = 2 if isinstance(fmt, TernaryFormat) else fmt.bits
            if isinstance(fmt, IntFormat) and spec.int_range == "asymmetric":
                qi = cg.astype(I32) - g.scales_in(q.zero_point)
                y = ieee.mul(qi.astype(jnp.float32), dec)
            else:
                y = ieee.mul(_signed(cg, nb).astype(jnp.float32), dec)
    return E.from_f32(ieee.canonical_nan(g.from_groups(y)), q.dtype)


def _decode_cast(codes: jax.Array, fmt) -> jax.Array:
    if isinstance(fmt, FloatFormat):
        return E.rounded_to_f32(E.decode_float(codes, fmt))
    if isinstance(fmt, E8M0Format):
        return E.e8m0_exp_to_f32(codes)
    if fmt.signed:
        return _signed(codes, fmt.bits).astype(jnp.float32)
    return codes.astype(jnp.float32)
