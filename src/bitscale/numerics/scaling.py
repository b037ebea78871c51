"""Scale groups and scale rules: absmax, MSE clip search inputs, OCP MX E8M0 rules, NVFP4,
QuEST RMS clipping and Four Over Six.

Elements that share a scale are laid out as ``[rows, groups, group_size]``; every rule reduces over
the last axis and returns per-group values of shape ``[rows, groups, 1]``. 2-D blocks (``block2d``)
put each ``b x b`` tile of the last two axes in one group, its elements in row-major tile order,
whatever ``axis`` is.

References:
  OCP Microscaling Formats (MX) Specification v1.0, 2023, section 6.3.
  Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv:2310.10537.
  NVIDIA, "Pretraining Large Language Models with NVFP4", arXiv:2509.25149, appendix B.
  torchao 0.18 `quant_primitives.choose_qparams_affine` (integer scales and zero points).
  Panferov et al., "QuEST", arXiv:2502.05003; Castro et al., "Quartet", arXiv:2505.14669 (RMS
    clip; Quartet's MXFP4 kernel floors alpha * RMS / 6 to a power of two).
  Cook et al., "Four Over Six", arXiv:2512.02010 (tensor scale amax / (6 * 256)).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bitscale.numerics import bits as B
from bitscale.numerics import elementwise as E
from bitscale.numerics import ieee
from bitscale.numerics.formats import FloatFormat, IntFormat
from bitscale.numerics.specs import FLOAT_HEADROOM, FOUR_OVER_SIX_SCALE_MAX, QuantSpec

U32, I32 = B.U32, B.I32
F32_SMALLEST_NORMAL = 2.0**-126


@dataclasses.dataclass(frozen=True)
class Grouping:
    """How an array is viewed as [rows, groups, group_size] for a spec and axis."""

    shape: tuple[int, ...]
    axis: int
    granularity: str
    block_size: int

    @property
    def _tiles(self) -> tuple[int, int, int]:
        """block2d: (leading elements, tile rows, tile columns)."""
        lead = 1
        for d in self.shape[:-2]:
            lead *= d
        b = self.block_size
        return lead, self.shape[-2] // b, self.shape[-1] // b

    @property
    def moved_shape(self) -> tuple[int, ...]:
        s = list(self.shape)
        return tuple(s[: self.axis] + s[self.axis + 1:] + [s[self.axis]])

    @property
    def group_shape(self) -> tuple[int, int, int]:
        size = 1
        for d in self.shape:
            size *= d
        if self.granularity == "tensor":
            return (1, 1, size)
        if self.granularity == "block2d":
            lead, tr, tc = self._tiles
            return (lead * tr, tc, self.block_size * self.block_size)
        n = self.shape[self.axis]
        rows = size // n if n else 0
        bs = n if self.granularity == "channel" else self.block_size
        return (rows, n // bs if bs else 0, bs)

    @property
    def scale_shape(self) -> tuple[int, ...]:
        """Shape of per-group arrays in the caller's layout (axis kept, holding the groups)."""
        if self.granularity == "tensor":
            return ()
        if self.granularity == "block2d":
            return tuple(self.shape[:-2]) + self._tiles[1:]
        s = list(self.shape)
        s[self.axis] = self.group_shape[1]
        return tuple(s)

    def to_groups(self, x: jax.Array) -> jax.Array:
        if self.granularity == "tensor":
            return x.reshape(self.group_shape)
        if self.granularity == "block2d":
            lead, tr, tc = self._tiles
            b = self.block_size
            t = x.reshape(lead, tr, b, tc, b).transpose(0, 1, 3, 2, 4)
            return t.reshape(self.group_shape)
        return jnp.moveaxis(x, self.axis, -1).reshape(self.group_shape)

    def from_groups(self, xg: jax.Array) -> jax.Array:
        if self.granularity == "tensor":
            return xg.reshape(self.shape)
        if self.granularity == "block2d":
            lead, tr, tc = self._tiles
            b = self.block_size
            t = xg.reshape(lead, tr, tc, b, b).transpose(0, 1, 3, 2, 4)
            return t.reshape(self.shape)
        return jnp.moveaxis(xg.reshape(self.moved_shape), -1, self.axis)

    def scales_out(self, s: jax.Array) -> jax.Array:
        """[rows, groups, 1] per-group values -> `scale_shape`."""
        if self.granularity == "tensor":
            return s.reshape(())
        if self.granularity == "block2d":
            return s.reshape(self.scale_shape)
        moved = self.moved_shape[:-1] + (self.group_shape[1],)
        return jnp.moveaxis(s.reshape(moved), -1, self.axis)

    def scales_in(self, s: jax.Array) -> jax.Array:
        """Inverse of `scales_out`."""
        rows, groups, _ = self.group_shape
        if self.granularity == "tensor":
            return s.reshape(1, 1, 1)
        if self.granularity == "block2d":
            return s.reshape(rows, groups, 1)
        return jnp.moveaxis(s, self.axis, -1).reshape(rows, groups, 1)


def grouping(shape: tuple[int, ...], spec: QuantSpec, axis: int) -> Grouping:
    """Validates ``axis`` and the block size against ``shape``."""
    shape = tuple(shape)
    if spec.granularity == "block2d":
        return _grouping_2d(shape, spec, axis)
    g = Grouping(shape, axis, spec.granularity, spec.block_size)
    if spec.granularity == "block":
        n = shape[axis]
        if n % spec.block_size:
            raise ValueError(
                f"block size {spec.block_size} of spec {spec.name!r} does not divide axis {axis} "
                f"of length {n} (shape {tuple(shape)}); use an axis whose length is a multiple of "
                f"{spec.block_size}, or a spec with a block size that divides {n}")
    return g


def _grouping_2d(shape: tuple[int, ...], spec: QuantSpec, axis: int) -> Grouping:
    b, nd = spec.block_size, len(shape)
    tile = f"{b}x{b} 2-D blocks"
    if nd < 2:
        raise ValueError(
            f"spec {spec.name!r} has {tile}, one scale per tile of the last two axes; it needs an "
            f"array of rank >= 2, got shape {shape} (use a 1-D block spec such as g{b} instead)")
    ax = axis % nd if isinstance(axis, int) and -nd <= axis < nd else axis
    if ax not in (nd - 2, nd - 1):
        raise ValueError(
            f"spec {spec.name!r} has {tile} tiling the last two axes of shape {shape}; axis must "
            f"be one of them ({nd - 2} or {nd - 1}, i.e. -2 or -1: both give the same result), "
            f"got axis {axis!r}")
    r, c = shape[-2:]
    if r % b or c % b:
        raise ValueError(
            f"spec {spec.name!r}: {tile} do not tile the last two axes {r} x {c} of shape "
            f"{shape}; both must be multiples of {b} (or use a spec with a block size dividing "
            "both)")
    return Grouping(shape, ax, "block2d", b)


def amax_bits(xg: jax.Array) -> jax.Array:
    """max |x| per group as float32 bits (exact on subnormals; NaN bits > Inf bits)."""
    # The sign bit is masked off, so the int32 order is the uint32 order; Mosaic TPU has no
    # reductions over unsigned integers.
    m = jnp.max(lax.bitcast_convert_type(B.to_bits(xg) & U32(B.ABS_MASK), jnp.int32), axis=-1,
                keepdims=True)
    return lax.bitcast_convert_type(m, jnp.uint32)


# ---------------------------------------------------------------------------------------------
# E8M0 (power-of-two) scales


def elem_emax(spec: QuantSpec) -> int:
    """Largest power of two of the element grid (OCP MX emax_elem); 0 for MXINT."""
    return spec.elem.emax if isinstance(spec.elem, FloatFormat) else 0


def elem_mbits(spec: QuantSpec) -> int:
    return spec.elem.mbits if isinstance(spec.elem, FloatFormat) else spec.elem.bits - 2


def mxint_qexp(fmt: IntFormat) -> int:
    """MXINT-b elements are k / 2^(b-2) with |k| <= 2^(b-1) - 1 (MXINT8: k/64)."""
    return -(fmt.bits - 2)


def pow2_scale_exp(amax: jax.Array, spec: QuantSpec) -> jax.Array:
    """Shared exponent k (int32, scale 2^k in [2^-127, 2^127]) from amax float32 bits.

    ``floor`` is OCP MX v1.0 section 6.3: k = floor(log2 amax) - emax_elem, where an all-zero block
    uses amax = 2^-126 as microxcaling does. NaN/Inf amax handling is left to the caller.
    """
    emax = elem_emax(spec)
    rule = spec.scale_rounding
    if rule == "even":
        amax = amax + (U32(1) << (22 - elem_mbits(spec)))
    if rule == "rceil":
        ratio = ieee.div(B.from_bits(amax), spec.elem.max_value)
        _, mag, sig, exp = B.split(ratio)
        k = exp + (sig != U32(B.IMPLICIT_BIT)).astype(I32)
        k = jnp.where(mag == 0, -127, k)
    else:
        _, mag, sig, exp = B.split(B.from_bits(amax))
        exp = jnp.where(mag == 0, -126, exp)
        if rule == "ceil":
            exp = exp + ((sig != U32(B.IMPLICIT_BIT)) & (mag != 0)).astype(I32)
        k = exp - emax
    return jnp.clip(k, -127, 127).astype(I32)


def elem_max(spec: QuantSpec) -> float:
    """Largest element value on the unscaled grid: the float max, or MXINT's (2^(b-1)-1)/2^(b-2)."""
    if isinstance(spec.elem, FloatFormat):
        return spec.elem.max_value
    return (2 ** (spec.elem.bits - 1) - 1) * 2.0 ** mxint_qexp(spec.elem)


def pow2_scale_exp_clip(clip: jax.Array, amax: jax.Array, use_amax: jax.Array,
                        spec: QuantSpec) -> jax.Array:
    """Shared exponent k of an RMS clip (Quartet's MXFP4 kernel): 2^k = 2^floor(log2(clip /
    max_elem)) (``floor``), or the ceiling (``ceil`` / ``rceil``); ``clip / max_elem`` is an `ieee`
    float32 division (a quotient below 2^-126 flushes and gives the smallest scale, 2^-127).
    Groups marked ``use_amax`` (zero RMS, NaN / Inf) take the absmax rule on ``amax`` bits.
    """
    ratio = ieee.div(clip, elem_max(spec))
    _, mag, sig, exp = B.split(ratio)
    if spec.scale_rounding in ("ceil", "rceil"):
        exp = exp + (sig != U32(B.IMPLICIT_BIT)).astype(I32)
    k = jnp.where(mag == 0, -127, exp)
    k = jnp.where(use_amax, pow2_scale_exp(amax, spec), k)
    return jnp.clip(k, -127, 127).astype(I32)


# ---------------------------------------------------------------------------------------------
# RMS (QuEST) clip


def sqrt(x) -> jax.Array:
    """Correctly rounded float32 square root (IEEE 754 ``squareRoot``), identical on every backend.

    Computed on the bits, without the hardware square root (approximate on TPUs, flushing
    subnormal inputs on CPUs): ``x = N * 2^(2p - 48)`` with an integer ``N`` in [2^48, 2^50),
    ``floor(sqrt(N))`` (25 bits: the 24-bit significand and the rounding bit) by the restoring
    digit-by-digit method in uint32 (two radicand bits per step; the remainder stays below
    2^27), rounded to nearest (a square root of a float32 is never exactly halfway). Subnormal
    inputs are exact (their roots are normal); sqrt(+-0) = +-0, sqrt(+Inf) = +Inf, negative and
    NaN inputs give the canonical NaN.
    """
    x = jnp.asarray(x, jnp.float32)
    sign, mag, sig, exp = B.split(x)
    odd = (exp & 1).astype(U32)
    p2 = exp - odd.astype(I32)  # even
    # N = sig * 2^(25 + odd) = S * 2^24 with S = sig << (1 + odd) < 2^26: the radicand's upper
    # 13 bit pairs come from S, the lower 12 are zero.
    s_ = sig << (U32(1) + odd)
    q = jnp.zeros_like(sig)
    rem = jnp.zeros_like(sig)
    for j in range(24, -1, -1):
        pair = (s_ >> U32(2 * j - 24)) & U32(3) if j >= 12 else U32(0)
        rem = (rem << U32(2)) | pair
        trial = (q << U32(2)) | U32(1)
        ge = rem >= trial
        rem = jnp.where(ge, rem - trial, rem)
        q = (q << U32(1)) | ge.astype(U32)
    r = (q >> U32(1)) + (q & U32(1))  # in [2^23, 2^24]
    # sqrt(x) = sqrt(N) * 2^(p2/2 - 24) = (q / 2) * 2^(p2/2 - 23)
    out = B.compose(r, p2 // 2 - 23)
    out = jnp.where(mag == 0, B.to_bits(x), out)  # +-0
    out = jnp.where(B.is_inf_bits(mag), U32(B.INF_BITS), out)
    nan = B.is_nan_bits(mag) | ((sign != 0) & (mag != 0))
    out = jnp.where(nan, U32(ieee.QNAN_BITS), out)
    return B.from_bits(out)


def rms_clip(xg: jax.Array, amax_b: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """QuEST's clip alpha * sqrt(mean(x^2)) per group, and where the absmax rule is used instead.

    Float32 `ieee` arithmetic in a fixed order: the squares summed with `ieee.pairwise_sum`,
    divided by the group size, the correctly rounded `sqrt`, times float32(alpha). The group is
    first multiplied by 2^-e (e the exponent of its amax, exact on normal numbers), and the root
    by 2^e, so the squares of huge groups do not overflow nor those of tiny groups flush to
    zero; where the unscaled squares stay in float32's normal range this is the same as the
    unscaled formula. Groups whose RMS is 0 (all zeros or float32 subnormals, which the
    arithmetic reads as zero), that hold a NaN or an Inf, or whose clip overflows or flushes keep
    ``amax`` (the returned mask ``use_amax``).

    Returns (clip [rows, groups, 1] float32, use_amax [rows, groups, 1] bool).
    """
    amax = B.from_bits(amax_b)
    _, _, _, e = B.split(amax)
    e = jnp.clip(e, -126, 126)
    y = ieee.mul(xg, B.from_bits(B.pow2_bits(-e)))
    mean = ieee.div(ieee.pairwise_sum(ieee.mul(y, y), axis=-1, keepdims=True),
                    float(xg.shape[-1]))
    rms = ieee.mul(sqrt(mean), B.from_bits(B.pow2_bits(e)))
    clip = ieee.mul(rms, float(np.float32(alpha)))
    cb = B.to_bits(clip) & U32(B.ABS_MASK)
    use_amax = ((B.to_bits(rms) & U32(B.ABS_MASK)) == 0) | (cb == 0) | (cb >= U32(B.INF_BITS))
    use_amax = use_amax | B.is_nan_bits(amax_b) | B.is_inf_bits(amax_b)
    return jnp.where(use_amax, amax, clip), use_amax


def rms_alpha(spec: QuantSpec) -> float:
    """The float32 Gaussian-optimal clip ratio of the spec's element grid (`gaussian`)."""
    from bitscale.numerics.gaussian import gaussian_optimal_clip_for

    return float(np.float32(gaussian_optimal_clip_for(spec)))


# ---------------------------------------------------------------------------------------------
# Float32 and float-format scales


@dataclasses.dataclass(frozen=True)
class FloatScales:
    """Per-group float scales: elements are encoded as x * enc and decoded as (q - zp) * dec."""

    enc: jax.Array
    dec: jax.Array
    zero_point: jax.Array | None = None
    block_scale: jax.Array | None = None  # the scale_format-rounded block scale (two-level: s_b)
    tensor_scale: jax.Array | None = None  # two-level: float32 per-tensor s_t


def int_divisor(spec: QuantSpec) -> float:
    fmt = spec.elem
    if spec.int_range == "full":
        return (fmt.qmax - fmt.qmin) / 2.0
    return float(fmt.qmax)


def elem_range(spec: QuantSpec) -> float:
    """The value amax maps to: elements' max, or the integer divisor."""
    return int_divisor(spec) if isinstance(spec.elem, IntFormat) else spec.elem.max_value


def cast_scale(s: jax.Array, spec: QuantSpec) -> jax.Array:
    """Clamps a float32 scale to the scale format's [min normal, max] and rounds it into it."""
    sf = spec.scale_format
    if sf is None:
        return s
    s = ieee.minimum(ieee.maximum(s, sf.min_normal), sf.max_value)
    return E.cast_float(s, sf)


def tensor_scale(amax_t: jax.Array, spec: QuantSpec) -> jax.Array:
    """Two-level per-tensor scale s_t = amax / (max_scale_format * max_elem) (NVFP4: /(448*6);
    Four Over Six: /(256*6), so that the amax/4 candidate's block scales fit UE4M3)."""
    top = FOUR_OVER_SIX_SCALE_MAX if spec.clip == "4o6" else spec.scale_format.max_value
    if spec.headroom:
        amax_t = ieee.mul(amax_t, FLOAT_HEADROOM)
    st = ieee.div(amax_t, top * elem_range(spec))
    return jnp.where(B.to_bits(amax_t) == 0, jnp.float32(1.0), st)


def float_scales(xg: jax.Array, amax: jax.Array, spec: QuantSpec,
                 s_t: jax.Array | None, lo_hi: tuple[jax.Array, jax.Array] | None,
                 divisor: float | None = None) -> FloatScales:
    """Scales for float32 / float-format scale groups (amax is a float32 array [rows, groups, 1]).

    ``divisor`` (default `elem_range`) is the grid value amax maps to (Four Over Six's 4).

    Every operation is `ieee` float32 (correctly rounded, subnormals flushed: the same bits on
    every backend), in the order the reference library performs it: torchao's integer affine
    scales and NVFP4 (reciprocal multiplication), true division where it divides.
    """
    fmt = spec.elem
    if isinstance(fmt, IntFormat) and spec.int_range == "asymmetric":
        lo, hi = lo_hi
        scale = ieee.div(ieee.sub(hi, lo), float(asym_qmax(fmt)))
        scale = cast_scale(ieee.maximum(scale, F32_SMALLEST_NORMAL), spec)
        # Rounded on the bits (no ``round``: Triton cannot lower it); clamping the rounded value
        # to [0, qmax] makes its saturation at +-2^22 exact.
        zp = jnp.clip(-E.round_half_even_i32(ieee.div(lo, scale)), 0, asym_qmax(fmt))
        zp = jnp.where(jnp.isnan(scale), 0, zp)  # NaN groups: a defined zero point
        return FloatScales(ieee.div(1.0, scale), scale, zp.astype(I32))
    ratio = ieee.div(amax, elem_range(spec) if divisor is None else divisor)
    if spec.headroom:  # float-format scales: amax maps to max * 16/17 (`specs.FLOAT_HEADROOM`)
        ratio = ieee.mul(ratio, FLOAT_HEADROOM)
    if s_t is not None:
        s_b = cast_scale(ieee.div(ratio, s_t), spec)
        return FloatScales(ieee.div(ieee.div(1.0, s_t), s_b), ieee.mul(s_t, s_b), None, s_b, s_t)
    if spec.scale_format is None:
        scale = ieee.maximum(ratio, F32_SMALLEST_NORMAL)
        return FloatScales(ieee.div(1.0, scale), scale)
    s_b = cast_scale(ratio, spec)
    return FloatScales(ieee.div(1.0, s_b), s_b, None, s_b)


def asym_qmax(fmt: IntFormat) -> int:
    """Largest code of asymmetric (unsigned, zero-point) integers; the smallest is 0."""
    return 2**fmt.bits - 1


def absmean_scales(xg: jax.Array, spec: QuantSpec) -> FloatScales:
    """BitNet b1.58 (ternary, gamma clamped to 1e-5) and XNOR-Net (binary) mean-|x| scales."""
    absx = B.from_bits(B.to_bits(xg) & U32(B.ABS_MASK))
    total = ieee.pairwise_sum(absx, axis=-1, keepdims=True)
    gamma = ieee.div(total, float(xg.shape[-1]))
    if spec.elem.name == "binary":
        return FloatScales(jnp.ones_like(gamma), gamma)
    enc = ieee.div(1.0, ieee.maximum(gamma, 1e-5))
    return FloatScales(enc, ieee.div(1.0, enc))


def mse_search(xg: jax.Array, amax: jax.Array, ratios: tuple[float, ...],
               qdq: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Picks, per group, the clip ratio r minimizing sum((x - qdq(amax * r))^2); returns amax * r.

    The squared errors are `ieee` float32 products summed in `ieee.pairwise_sum`'s fixed order,
    so the choice is the same on every backend; the first ratio wins ties.
    """
    def body(carry, r):
        best_err, best_amax = carry
        cand = ieee.mul(amax, r)
        d = ieee.sub(xg, qdq(cand))
        err = ieee.pairwise_sum(ieee.mul(d, d), axis=-1, keepdims=True)
        better = err < best_err
        return (jnp.where(better, err, best_err), jnp.where(better, cand, best_amax)), None

    init = (jnp.full(amax.shape, jnp.inf, jnp.float32), amax)
    (_, best), _ = jax.lax.scan(body, init, jnp.asarray(ratios, jnp.float32))
    return best
