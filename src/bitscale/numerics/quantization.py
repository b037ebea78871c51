"""``quantize``, ``dequantize`` and ``fake_quant`` for every spec.

The fake-quant path and `dequantize(quantize(x))` compute each output with the same operations on
the same values (`quantizer`), so they agree bit for bit (see the README's format table for the
one exception: NaN inputs of unscaled formats that have no NaN code). `fake_quant`'s gradient is
the chosen estimator's (`estimators`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bitscale.numerics import bits as B
from bitscale.numerics import elementwise as E
from bitscale.numerics import ieee
from bitscale.numerics import packing
from bitscale.numerics import quantizer as QZ
from bitscale.numerics import scaling as S
from bitscale.numerics import validate as V
from bitscale.numerics.estimators import ClippedSTE, Estimator, STE, resolve_estimator
from bitscale.numerics.formats import (
    BinaryFormat, E8M0Format, FloatFormat, IntFormat, TernaryFormat)
from bitscale.numerics.qarray import QArray, elem_bits
from bitscale.numerics.specs import HEADROOM, QuantSpec, Spec, resolve_spec

U32, I32 = B.U32, B.I32


def fake_quant_core(x: jax.Array, spec: Spec, axis: int, rand: jax.Array | None,
                    want: str | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Fake-quantizes validated float input; returns (y in x.dtype, aux in x's layout).

    ``want`` is None, ``"clipped"`` (aux = bool mask of clipped elements) or ``"step"`` (aux =
    local grid spacing in x's units).
    """
    xf = E.to_f32(x)
    if not isinstance(spec, QuantSpec):
        out = QZ.quantize_elements(xf, spec, rand, False, want)
        aux = {"clipped": out.clipped, "step": out.step}.get(want) if want else None
        return E.from_f32(ieee.canonical_nan(out.y), x.dtype), aux
    g = S.grouping(x.shape, spec, axis)
    rg = None if rand is None else g.to_groups(rand)
    out, _ = QZ.quantize_groups(g.to_groups(xf), spec, rg, False, want)
    y = E.from_f32(ieee.canonical_nan(g.from_groups(out.y)), x.dtype)
    aux = {"clipped": out.clipped, "step": out.step}.get(want) if want else None
    return y, (None if aux is None else g.from_groups(aux))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fq(x, rand, spec, axis, est):
    return fake_quant_core(x, spec, axis, rand)[0]


def _fq_fwd(x, rand, spec, axis, est):
    if isinstance(est, STE):
        return fake_quant_core(x, spec, axis, rand)[0], None
    if isinstance(est, ClippedSTE):
        y, clipped = fake_quant_core(x, spec, axis, rand, "clipped")
        return y, ~clipped
    y, step = fake_quant_core(x, spec, axis, rand, "step")
    err = jnp.abs(ieee.sub(E.to_f32(x), E.to_f32(y)))
    return y, ieee.less_equal(err, ieee.mul(est.factor / 2, step))


def _fq_bwd(spec, axis, est, mask, g):
    if mask is None:
        return g, None
    return jnp.where(mask, g, jnp.zeros_like(g)), None


_fq.defvjp(_fq_fwd, _fq_bwd)


def fake_quant(x: jax.Array, spec: "str | Spec", *, axis: int = -1, rounding: str = "nearest",
               key: jax.Array | None = None, estimator: "str | Estimator" = "ste") -> jax.Array:
    """Quantizes and dequantizes ``x``, returning an array of x's dtype and shape.

    Args:
      x: float32, bfloat16 or float16 array.
      spec: a name (``"fp8_e4m3"``, ``"int8@channel"``, ``"mxfp4"``, ...; see `specs`) or a spec
        object. A plain element format is a saturating cast with no scale.
      axis: the axis along which elements share a scale (channel and block specs; 2-D block
        specs tile the last two axes and accept either of them, with the same result).
      rounding: ``"nearest"`` (ties to even) or ``"stochastic"`` (needs ``key``); the random bits
        are a counter hash of (key, flat element index), identical on every backend.
      key: a `jax.random` key.
      estimator: ``"ste"``, ``"clipped_ste"``, ``"trust"`` or an estimator object.
    """
    spec = resolve_spec(spec)
    x = V.check_input(x)
    axis = V.check_axis(axis, x.ndim)
    V.check_rounding(rounding, key)
    est = resolve_estimator(estimator)
    if isinstance(spec, QuantSpec):
        S.grouping(x.shape, spec, axis)  # validate the block size eagerly
    rand = V.random_bits_for(x, rounding, key)
    return _fq(x, rand, spec, axis, est)



# ---------------------------------------------------------------------------------------------
# quantize / dequantize


def quantize(x: jax.Array, spec: "str | Spec", *, axis: int = -1,
             rounding: V.Rounding = "nearest", key: jax.Array | None = None) -> QArray:
    """Quantizes ``x`` to packed codes and scales; `dequantize` inverts it.

    ``dequantize(quantize(x, ...)) == fake_quant(x, ...)`` bit for bit, except that NaN inputs of
    unscaled formats without a NaN code (fp4/fp6, integers) are stored as zero codes. ``+4o6``
    stores each block's chosen UE4M3 scale; ``+headroom`` stores the codes of 3/4 x, which
    `dequantize` divides by 3/4 again.
    """
    spec = resolve_spec(spec)
    x = V.check_input(x)
    axis = V.check_axis(axis, x.ndim)
    V.check_rounding(rounding, key)
    rand = V.random_bits_for(x, rounding, key)
    xf = E.to_f32(x)
    if not isinstance(spec, QuantSpec):
        out = QZ.quantize_elements(xf, spec, rand, True, None)
        codes, sc = out.codes, QZ.Scales(None, None, None)
    else:
        g = S.grouping(x.shape, spec, axis)
        rg = None if rand is None else g.to_groups(rand)
        out, sc = QZ.quantize_groups(g.to_groups(xf), spec, rg, True, None)
        codes = g.from_groups(out.codes)
        sc = QZ.Scales(None if sc.scales is None else g.scales_out(sc.scales),
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
            y = QZ.mxint_value(_signed(cg, fmt.bits), S.mxint_qexp(fmt) + k)
        y = jnp.where(sc == 255, jnp.float32(jnp.nan), y)
        if spec.headroom:  # the codes hold 3/4 x (Tseng et al.): undo it as fake_quant does
            y = ieee.div(y, HEADROOM)
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
