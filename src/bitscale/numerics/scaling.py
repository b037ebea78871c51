"""Scale groups and scale rules: absmax, MSE clip search inputs, OCP MX E8M0 rules, NVFP4.

Elements that share a scale are laid out as ``[rows, groups, group_size]``; every rule reduces over
the last axis and returns per-group values of shape ``[rows, groups, 1]``.

References:
  OCP Microscaling Formats (MX) Specification v1.0, 2023, section 6.3.
  Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv:2310.10537.
  NVIDIA, "Pretraining Large Language Models with NVFP4", arXiv:2509.25149, appendix B.
  torchao 0.18 `quant_primitives.choose_qparams_affine` (integer scales and zero points).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from bitscale.numerics import bits as B
from bitscale.numerics import elementwise as E
from bitscale.numerics import ieee
from bitscale.numerics.formats import FloatFormat, IntFormat
from bitscale.numerics.specs import QuantSpec

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
        n = self.shape[self.axis]
        rows = size // n if n else 0
        bs = n if self.granularity == "channel" else self.block_size
        return (rows, n // bs if bs else 0, bs)

    @property
    def scale_shape(self) -> tuple[int, ...]:
        """Shape of per-group arrays in the caller's layout (axis kept, holding the groups)."""
        if self.granularity == "tensor":
            return ()
        s = list(self.shape)
        s[self.axis] = self.group_shape[1]
        return tuple(s)

    def to_groups(self, x: jax.Array) -> jax.Array:
        if self.granularity == "tensor":
            return x.reshape(self.group_shape)
        return jnp.moveaxis(x, self.axis, -1).reshape(self.group_shape)

    def from_groups(self, xg: jax.Array) -> jax.Array:
        if self.granularity == "tensor":
            return xg.reshape(self.shape)
        return jnp.moveaxis(xg.reshape(self.moved_shape), -1, self.axis)

    def scales_out(self, s: jax.Array) -> jax.Array:
        """[rows, groups, 1] per-group values -> `scale_shape`."""
        if self.granularity == "tensor":
            return s.reshape(())
        moved = self.moved_shape[:-1] + (self.group_shape[1],)
        return jnp.moveaxis(s.reshape(moved), -1, self.axis)

    def scales_in(self, s: jax.Array) -> jax.Array:
        """Inverse of `scales_out`."""
        rows, groups, _ = self.group_shape
        if self.granularity == "tensor":
            return s.reshape(1, 1, 1)
        return jnp.moveaxis(s, self.axis, -1).reshape(rows, groups, 1)


def grouping(shape: tuple[int, ...], spec: QuantSpec, axis: int) -> Grouping:
    """Validates ``axis`` and the block size against ``shape``."""
    g = Grouping(tuple(shape), axis, spec.granularity, spec.block_size)
    if spec.granularity == "block":
        n = shape[axis]
        if n % spec.block_size:
            raise ValueError(
                f"block size {spec.block_size} of spec {spec.name!r} does not divide axis {axis} "
                f"of length {n} (shape {tuple(shape)}); use an axis whose length is a multiple of "
                f"{spec.block_size}, or a spec with a block size that divides {n}")
    return g


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
    """Two-level per-tensor scale s_t = amax / (max_scale_format * max_elem) (NVFP4: /(448*6))."""
    st = ieee.div(amax_t, spec.scale_format.max_value * elem_range(spec))
    return jnp.where(B.to_bits(amax_t) == 0, jnp.float32(1.0), st)


def float_scales(xg: jax.Array, amax: jax.Array, spec: QuantSpec,
                 s_t: jax.Array | None, lo_hi: tuple[jax.Array, jax.Array] | None) -> FloatScales:
    """Scales for float32 / float-format scale groups (amax is a float32 array [rows, groups, 1]).

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
    ratio = ieee.div(amax, elem_range(spec))
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
