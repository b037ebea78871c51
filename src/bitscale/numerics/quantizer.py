"""The quantizer core: element casts and scale groups rounded onto a spec's grid.

`quantize_elements` rounds unscaled element casts; `quantize_groups` computes the scales of
``[rows, groups, size]`` groups (`scaling`) and rounds each element onto its group's grid,
returning the fake-quant values and, on request, the codes, the clipped mask or the local step.
The public `quantize` / `dequantize` / `fake_quant` (`quantization`) and the Pallas kernels both
call these, so they agree bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from bitscale.numerics import bits as B
from bitscale.numerics import elementwise as E
from bitscale.numerics import ieee
from bitscale.numerics import scaling as S
from bitscale.numerics.formats import (
    BinaryFormat, E8M0Format, FloatFormat, IntFormat, TernaryFormat)
from bitscale.numerics.specs import HEADROOM, MSE_CLIP_RATIOS, QuantSpec

U32, I32 = B.U32, B.I32


class Out(NamedTuple):
    y: jax.Array  # float32 fake-quant result in group layout
    codes: jax.Array | None  # uint32 element codes (group layout)
    clipped: jax.Array | None  # bool: the element was outside the representable range
    step: jax.Array | None  # float32 local grid spacing (for the trust estimator)


def quantize_elements(x: jax.Array, fmt, rand, want_codes: bool, want: str | None) -> Out:
    """Unscaled element casts."""
    mag = B.to_bits(x) & U32(B.ABS_MASK)
    if isinstance(fmt, FloatFormat) and not want_codes and want is None:
        return Out(E.cast_float(x, fmt, rand), None, None, None)
    if isinstance(fmt, FloatFormat):
        r = E.round_float(x, fmt, rand)
        y = E.rounded_to_f32(r)
        codes = E.encode_float(r, fmt) if want_codes else None
        clipped = (mag > B.to_bits(jnp.float32(fmt.max_value))) & ~(B.is_inf_bits(mag) & fmt.has_inf)
        step = B.from_bits(B.compose(jnp.ones_like(r.q), r.qexp)) if want == "step" else None
        return Out(y, codes, clipped, step)
    if isinstance(fmt, E8M0Format):
        c = E.e8m0_codes_from_f32(x)
        y = E.e8m0_exp_to_f32(c)
        return Out(y, c, mag > B.to_bits(jnp.float32(2.0**127)), y if want == "step" else None)
    q = E.round_fixed(jnp.clip(x, float(fmt.qmin), float(fmt.qmax)), 0, rand)
    y = E.keep_nan(q.astype(jnp.float32), x)
    codes = (q.astype(U32) & U32(2**fmt.bits - 1)) if want_codes else None
    clipped = (x > fmt.qmax) | (x < fmt.qmin)
    return Out(y, codes, clipped, jnp.ones_like(y) if want == "step" else None)


def _pow2_groups(xg, spec: QuantSpec, rand, k, bad, want_codes, want) -> Out:
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
        y = mxint_value(q, qe + k)
        codes = (q.astype(U32) & U32(2**fmt.bits - 1)) if want_codes else None
        limit = B.compose(jnp.full_like(mag, qmax), qe + k)
        step = (jnp.broadcast_to(B.from_bits(B.pow2_bits(qe + k)), y.shape)
                if want == "step" else None)
    y = jnp.where(bad, jnp.float32(jnp.nan), y)
    return Out(y, codes, mag > limit, step)


def mxint_value(q: jax.Array, qexp: jax.Array) -> jax.Array:
    """float32 value of the signed integer q times 2^qexp, built on the bits (exact)."""
    sign = jnp.where(q < 0, U32(B.SIGN_MASK), U32(0))
    return B.from_bits(B.compose(jnp.abs(q).astype(U32), qexp) | sign)


def _float_scaled_groups(xg, spec: QuantSpec, rand, sc: S.FloatScales, want_codes, want) -> Out:
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
        return Out(y, codes, clipped, step)
    v = ieee.mul(xg, sc.enc)
    if isinstance(fmt, FloatFormat) and not want_codes and want is None:
        return Out(ieee.mul(E.cast_float(v, fmt, rand), sc.dec), None, None, None)
    if isinstance(fmt, FloatFormat):
        r = E.round_float(v, fmt, rand)
        y = ieee.mul(E.rounded_to_f32(r), sc.dec)
        codes = E.encode_float(r, fmt) if want_codes else None
        clipped = jnp.abs(v) > fmt.max_value
        step = (ieee.mul(B.from_bits(B.compose(jnp.ones_like(r.q), r.qexp)), sc.dec)
                if want == "step" else None)
        return Out(y, codes, clipped, step)
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
    return Out(y, codes, clipped, step)


class Scales(NamedTuple):
    """What `quantize` stores besides the codes, in group layout."""

    scales: jax.Array | None
    zero_point: jax.Array | None
    tensor_scale: jax.Array | None


def quantize_groups(xg, spec: QuantSpec, rand, want_codes: bool, want: str | None,
            tensor_amax: jax.Array | None = None):
    """Fake-quantizes [rows, groups, size] float32 groups; returns (`Out`, `Scales`).

    ``tensor_amax`` (two-level specs) overrides the tensor amax taken over ``xg``: a kernel that
    sees one tile passes the whole tensor's amax.
    """
    if spec.elem.name in ("ternary", "binary"):
        sc = S.absmean_scales(xg, spec)
        out = _float_scaled_groups(xg, spec, rand, sc, want_codes, want)
        return out, Scales(sc.dec, None, None)
    amax_b = S.amax_bits(xg)
    bad = B.is_nan_bits(amax_b) | B.is_inf_bits(amax_b)
    clip = use_amax = None
    if spec.clip == "rms":
        clip, use_amax = S.rms_clip(xg, amax_b, S.rms_alpha(spec))
    if spec.pow2_scales:
        def qdq_pow2(amax_f32):
            k = S.pow2_scale_exp(B.to_bits(amax_f32), spec)
            return _pow2_groups(xg, spec, None, k, bad, False, None).y
        amax = B.from_bits(amax_b)
        if spec.clip == "mse":
            amax = S.mse_search(xg, amax, _mse_ratios(), qdq_pow2)
        if spec.clip == "rms":
            k = S.pow2_scale_exp_clip(clip, amax_b, use_amax, spec)
        else:
            k = S.pow2_scale_exp(B.to_bits(amax), spec)
        if spec.headroom:
            # Tseng et al.: the block's scale comes from amax of x; the elements are 3/4 x.
            out = _pow2_groups(ieee.mul(xg, HEADROOM), spec, rand, k, bad, want_codes, want)
            out = out._replace(y=ieee.div(out.y, HEADROOM),
                               step=None if out.step is None else ieee.div(out.step, HEADROOM))
        else:
            out = _pow2_groups(xg, spec, rand, k, bad, want_codes, want)
        scale_codes = jnp.where(bad, 255, k + 127).astype(jnp.uint8)
        return out, Scales(scale_codes, None, None)
    amax = B.from_bits(amax_b) if clip is None else clip
    s_t = None
    if spec.tensor_scale:
        if tensor_amax is not None:
            t_amax = tensor_amax
        elif clip is not None:  # +rms: the largest clip takes amax's place
            t_amax = B.from_bits(jnp.max(lax.bitcast_convert_type(
                B.to_bits(clip) & U32(B.ABS_MASK), jnp.int32)).astype(U32))
        else:
            t_amax = B.from_bits(jnp.max(amax_b))
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
    if spec.clip == "4o6":
        sc, out = _four_over_six(xg, amax, spec, s_t, rand, want_codes, want)
    else:
        sc = S.float_scales(xg, amax, spec, s_t, lo_hi)
        out = _float_scaled_groups(xg, spec, rand, sc, want_codes, want)
    if spec.scale_format is None:
        stored = sc.dec
    else:
        sf = spec.scale_format
        stored = E.encode_float(E.round_float(sc.block_scale, sf), sf).astype(
            jnp.uint16 if sf.storage_bits > 8 else jnp.uint8)
    return out, Scales(stored, sc.zero_point, s_t)


def _four_over_six(xg, amax, spec: QuantSpec, s_t, rand, want_codes, want):
    """Four Over Six (Cook et al., arXiv:2512.02010): each group is quantized with the block scale
    of amax -> 6 and of amax -> 4 (same rounding, same random bits); the candidate with the
    smaller sum of squared errors in x's units (`ieee` float32, `ieee.pairwise_sum`'s order) is
    kept, the amax -> 6 one on ties (and on NaN errors)."""
    cands = []
    for divisor in (spec.elem.max_value, 4.0):
        sc = S.float_scales(xg, amax, spec, s_t, None, divisor)
        out = _float_scaled_groups(xg, spec, rand, sc, want_codes, want)
        d = ieee.sub(out.y, xg)
        cands.append((sc, out, ieee.pairwise_sum(ieee.mul(d, d), axis=-1, keepdims=True)))
    (sc6, out6, err6), (sc4, out4, err4) = cands
    four = err4 < err6

    def pick(a, b):
        return None if a is None else jnp.where(four, b, a)

    sc = S.FloatScales(pick(sc6.enc, sc4.enc), pick(sc6.dec, sc4.dec), None,
                       pick(sc6.block_scale, sc4.block_scale), sc6.tensor_scale)
    out = Out(*(pick(a, b) for a, b in zip(out6, out4)))
    return sc, out


def _mse_ratios():
    return MSE_CLIP_RATIOS
