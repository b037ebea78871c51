"""Pallas kernel: ``x @ dequantize(w)`` reading packed 4-/8-bit codes and their scales per tile.

The grid is (M / block_m, N / block_n) and every program computes one whole output tile: it loops
over K in steps of block_k (a ``fori_loop``, which Triton software-pipelines ``num_stages`` deep),
loading per step an x slice [block_m, block_k], the packed code slice
[block_k, block_n * bits / 8] (uint8; 4-bit codes are ``c0 | c1 << 4`` along N) and the scale rows
of its groups, unpacks and decodes the codes in-kernel, accumulates in float32 registers and writes
the tile once. There is deliberately no K grid axis: an output block revisited across grid steps
(accumulated in place, initialized at k == 0) is only correct where the grid runs sequentially
(the interpreter, TPU "arbitrary" axes); Triton runs every grid point as an independent parallel
program on uninitialized global output memory, which is what made the first GPU run wrong.

Two ways to apply the scales, both equal to ``x @ dequantize(w)`` up to float32 accumulation
order:

* ``per_group`` (float32 dequantized weights): per quantization group, the exact element values
  (integers, FP4/FP8 values; exact in the x dtype) are multiplied with x in x's dtype, and the
  float32 partial sum is scaled by the group's scale row. This keeps bf16 tensor-core dots and
  exact products.
* otherwise (bf16/fp16 dequantized weights, or an explicit ``compute_dtype``): the tile is
  dequantized element by element with the same operations as `bitscale.dequantize`, rounded to
  the weight dtype (then the compute dtype), and multiplied with x.

References:
  Frantar et al., "Marlin: Mixed-Precision Auto-Regressive Parallel Inference on LLMs",
  arXiv:2408.11743 (weight-only packed kernels, scale after the group product).
  OCP Microscaling Formats (MX) Specification v1.0 (E8M0 scales); NVIDIA, "Pretraining LLMs with
  NVFP4", arXiv:2509.25149 (E4M3 block scales under an FP32 tensor scale).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from bitscale.numerics import bits as B
from bitscale.numerics import elementwise as E
from bitscale.numerics import ieee
from bitscale.numerics import scaling as S
from bitscale.numerics.formats import FloatFormat, IntFormat
from bitscale.numerics.specs import QuantSpec, Spec

from pallas_kernels.common import compiler_params, portable_body
from pallas_kernels.packed_matmul.config import PackedMatmulConfig

U32, I32 = B.U32, B.I32


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of one packed matmul (a `jax.jit` static argument).

    Attributes:
      spec: the weight's spec (an element cast or a `QuantSpec`).
      bits: code width, 4 or 8.
      group: K rows sharing one scale row inside a tile (block size, or block_k).
      blocked: block granularity (several scale rows per tile).
      asym: integer zero points are present.
      two_level: an FP32 tensor scale multiplies the decoded block scales (NVFP4).
      per_group: apply scales to float32 partial sums (see the module docstring).
      x_dtype: dtype x is multiplied in.
      w_dtype: dtype of the weight tile operand (element values or dequantized weights).
      w_round: dtype `dequantize` returns (the weight tile is rounded through it).
    """

    spec: Spec
    bits: int
    group: int
    blocked: bool
    asym: bool
    two_level: bool
    per_group: bool
    x_dtype: Any
    w_dtype: Any
    w_round: Any

    @property
    def scaled(self) -> bool:
        return isinstance(self.spec, QuantSpec)


# ---------------------------------------------------------------------------------------------
# Decoding (pure jnp on tiles; the same operations as `bitscale.dequantize`)


def unpack_tile(packed: jax.Array, bits: int) -> jax.Array:
    """uint8 codes packed along the last axis -> uint32 codes (4-bit: byte = c0 | c1 << 4)."""
    if bits == 8:
        return packed.astype(U32)
    rows, cols = packed.shape
    lo = packed & jnp.uint8(0xF)
    hi = packed >> jnp.uint8(4)
    return jnp.stack([lo, hi], axis=-1).reshape(rows, 2 * cols).astype(U32)


def signed_codes(codes: jax.Array, nbits: int) -> jax.Array:
    """Two's complement ``nbits``-wide codes -> int32."""
    c = codes.astype(I32)
    return jnp.where(c >= 2 ** (nbits - 1), c - 2**nbits, c)


def element_values(codes: jax.Array, fmt, zero_point: jax.Array | None = None) -> jax.Array:
    """Exact float32 value of each element code, before any scale (asym: code - zero point)."""
    if isinstance(fmt, FloatFormat):
        return E.rounded_to_f32(E.decode_float(codes, fmt))
    if zero_point is not None:
        return (codes.astype(I32) - zero_point).astype(jnp.float32)
    if fmt.signed:
        return signed_codes(codes, fmt.bits).astype(jnp.float32)
    return codes.astype(jnp.float32)


def decode_scales(sc: jax.Array, spec: QuantSpec, tensor_scale: jax.Array | None) -> jax.Array:
    """Stored scales -> float32 multipliers of `element_values` (NaN for E8M0 code 255)."""
    if spec.pow2_scales:
        k = sc.astype(I32) - 127
        if isinstance(spec.elem, IntFormat):  # MXINT: k / 2^(b-2) elements
            k = k + S.mxint_qexp(spec.elem)
        dec = B.from_bits(B.pow2_bits(k))
        return jnp.where(sc.astype(I32) == 255, jnp.float32(jnp.nan), dec)
    if spec.scale_format is None:
        return sc.astype(jnp.float32)
    dec = E.rounded_to_f32(E.decode_float(sc, spec.scale_format))
    if tensor_scale is not None:
        dec = ieee.mul(tensor_scale, dec)
    return dec


def dequantize_tile(codes: jax.Array, spec: Spec, sc: jax.Array | None, zp: jax.Array | None,
                    tensor_scale: jax.Array | None) -> jax.Array:
    """float32 dequantized tile, bit-identical to `bitscale.dequantize` before its dtype cast.

    ``codes`` [rows, cols] uint32 share the scale row ``sc`` [1, cols] (and ``zp`` [1, cols]).
    """
    if not isinstance(spec, QuantSpec):
        return element_values(codes, spec)
    fmt = spec.elem
    if spec.pow2_scales:
        k = sc.astype(I32) - 127
        if isinstance(fmt, FloatFormat):
            y = E.rounded_to_f32(E.decode_float(codes, fmt), k)
        else:
            q = signed_codes(codes, fmt.bits)
            sign = jnp.where(q < 0, U32(B.SIGN_MASK), U32(0))
            y = B.from_bits(B.compose(jnp.abs(q).astype(U32), S.mxint_qexp(fmt) + k) | sign)
        return jnp.where(sc.astype(I32) == 255, jnp.float32(jnp.nan), y)
    return ieee.mul(element_values(codes, fmt, zp), decode_scales(sc, spec, tensor_scale))


# ---------------------------------------------------------------------------------------------
# Kernel


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jnp.dot(a, b, preferred_element_type=jnp.float32, precision=precision)


def _kernel(*refs, plan: Plan, block_k: int, k_steps: int):
    """One program: the output tile [block_m, block_n] (or its partial) from its K slice.

    The K loop runs inside the program (a ``fori_loop`` over ``k_steps`` slices of ``block_k``
    rows, each split statically into its quantization groups) and the tile is written once: no
    grid axis revisits an output block, so the programs are independent, as Triton (every grid
    point a parallel program reading and writing global memory) and Mosaic TPU ("parallel"
    grid axes) need.
    """
    x_ref, c_ref, o_ref = refs[0], refs[1], refs[-1]
    extra = iter(refs[2:-1])
    s_ref = next(extra) if plan.scaled else None
    zp_ref = next(extra) if plan.asym else None
    ts_ref = next(extra) if plan.two_level else None

    ts = ts_ref[...] if ts_ref is not None else None  # [1, 1]
    gs = plan.group
    groups = block_k // gs  # scale rows per K step (blocked specs; 1 otherwise)

    def k_step(t, acc):
        base = t * block_k
        for g in range(groups):  # static: every slice below is a fixed offset from `base`
            row0 = pl.multiple_of(base + g * gs, gs)
            xs = x_ref[:, pl.ds(row0, gs)].astype(plan.x_dtype)
            codes = unpack_tile(c_ref[pl.ds(row0, gs), :], plan.bits)
            # One scale row per group: block specs index it by group, channel/tensor have one.
            srow = pl.ds(t * groups + g, 1) if plan.blocked else pl.ds(0, 1)
            sc = s_ref[srow, :] if s_ref is not None else None
            zp = zp_ref[srow, :] if zp_ref is not None else None
            if plan.per_group:
                fmt = plan.spec.elem if plan.scaled else plan.spec
                elem = element_values(codes, fmt, zp).astype(plan.w_dtype)
                part = _dot(xs, elem)
                if plan.scaled:
                    part = part * decode_scales(sc, plan.spec, ts)
            else:
                w = dequantize_tile(codes, plan.spec, sc, zp, ts)
                w = w.astype(plan.w_round).astype(plan.w_dtype)
                part = _dot(xs, w)
            acc = acc + part
        return acc

    acc = lax.fori_loop(0, k_steps, k_step, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = acc


def _interpret_and_params(interpret: Any, platform: str | None, config: PackedMatmulConfig):
    """``pallas_call``'s (interpret, compiler_params). ``interpret`` may be a
    ``pltpu.InterpretParams``: the TPU interpret mode then runs the grid with every axis
    declared "parallel" (randomized order with ``random_seed``, NaN-filled fresh buffers), which
    checks that the programs are independent, as on a GPU."""
    dims = ("parallel", "parallel", "parallel")
    if interpret is not None and not isinstance(interpret, bool):
        from jax.experimental.pallas import tpu as pltpu

        return interpret, pltpu.CompilerParams(dimension_semantics=dims)
    params = compiler_params(platform, num_warps=config.num_warps, num_stages=config.num_stages,
                             dimension_semantics=dims)
    return bool(interpret), params


@functools.partial(jax.jit, static_argnames=("plan", "config", "interpret", "platform"))
def packed_matmul_kernel(x: jax.Array, codes: jax.Array, scales: jax.Array | None,
                         zero_point: jax.Array | None, tensor_scale: jax.Array | None, *,
                         plan: Plan, config: PackedMatmulConfig, interpret: Any = False,
                         platform: str | None = None) -> jax.Array:
    """Runs the kernel on x [M, K] (M a multiple of block_m) and the prepared weight arrays.

    ``scales`` / ``zero_point`` are [groups, N] (one row for channel and tensor granularity),
    ``tensor_scale`` is [1, 1]; each is None when the spec has none. ``platform`` (static) is
    `pallas_kernels.common.kernel_platform`'s: None in the interpreter, else the lowering
    target. Returns float32 [M, N].

    The grid is (M / block_m, N / block_n, split_k); program (i, j, s) reads the x rows
    [block_m, K / split_k], the code columns [K / split_k, block_n * bits / 8] and the scale
    rows of its K slice, loops over the slice itself and writes output block (i, j) (split_k = 1)
    or partial block (s, i, j) of a [split_k, M, N] float32 array that is then summed: every
    output block has exactly one writer.
    """
    m, k = x.shape
    n = codes.shape[1] * (8 // plan.bits)
    bm, bn, bk, split = config.block_m, config.block_n, config.block_k, config.split_k
    kslice = k // split
    per_byte = 8 // plan.bits
    inputs = [x, codes]
    in_specs = [pl.BlockSpec((bm, kslice), lambda i, j, s: (i, s)),
                pl.BlockSpec((kslice, bn // per_byte), lambda i, j, s: (s, j))]
    for arr in (scales, zero_point):
        if arr is None:
            continue
        inputs.append(arr)
        if plan.blocked:
            in_specs.append(pl.BlockSpec((arr.shape[0] // split, bn), lambda i, j, s: (s, j)))
        else:
            in_specs.append(pl.BlockSpec((arr.shape[0], bn), lambda i, j, s: (0, j)))
    if tensor_scale is not None:
        inputs.append(tensor_scale)
        in_specs.append(pl.BlockSpec((1, 1), lambda i, j, s: (0, 0)))
    if split == 1:
        out_shape = jax.ShapeDtypeStruct((m, n), jnp.float32)
        out_spec = pl.BlockSpec((bm, bn), lambda i, j, s: (i, j))
    else:
        out_shape = jax.ShapeDtypeStruct((split, m, n), jnp.float32)
        out_spec = pl.BlockSpec((None, bm, bn), lambda i, j, s: (s, i, j))
    interpret, params = _interpret_and_params(interpret, platform, config)
    y = pl.pallas_call(
        portable_body(functools.partial(_kernel, plan=plan, block_k=bk, k_steps=kslice // bk)),
        out_shape=out_shape,
        grid=(m // bm, n // bn, split),
        in_specs=in_specs,
        out_specs=out_spec,
        interpret=interpret,
        compiler_params=params,
        name="packed_matmul",
    )(*inputs)
    return y if split == 1 else jnp.sum(y, axis=0)
