"""Fused one-pass quantize / fake-quantize Pallas kernel.

The array is viewed without copying as ``[pre, A, post]`` (A = the quantization axis). When the
axis is the last one the view is ``[rows, A]`` and a tile is ``[block_other, block_axis]``;
otherwise a tile is ``[block_axis, block_other]`` of one ``pre`` slice. Each tile is read once;
the kernel computes the scales of the groups it holds, rounds (stochastic bits come from the keyed
counter hash of each element's flat index in the full array, exactly as `bitscale.fake_quant`
draws them) and writes the result, or the packed codes and the scales.

The tile body calls the same `bitscale.numerics` functions as the XLA reference, so the two agree
bit for bit by construction; the tests check it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from bitscale.numerics import bits as B
from bitscale.numerics import elementwise as E
from bitscale.numerics import ieee
from bitscale.numerics import packing
from bitscale.numerics import quantizer as QZ
from bitscale.numerics.qarray import elem_bits
from bitscale.numerics.specs import QuantSpec

from pallas_kernels.common import portable_body

U32 = B.U32


def quantize_tile(xf, valid, rand, spec, want_codes, tensor_amax):
    """Quantizes a float32 tile whose quantization axis is the last one.

    Returns (y, codes, scales, zero_point) with per-group arrays shaped [rows, groups].
    """
    xf = jnp.where(valid, xf, jnp.float32(0))
    if not isinstance(spec, QuantSpec):
        out = QZ.quantize_elements(xf, spec, rand, want_codes, None)
        return out.y, out.codes, None, None
    rows, n = xf.shape
    size = n if spec.granularity == "channel" else spec.block_size
    xg = xf.reshape(rows, n // size, size)
    rg = None if rand is None else rand.reshape(xg.shape)
    out, sc = QZ.quantize_groups(xg, spec, rg, want_codes, None, tensor_amax)
    codes = None if out.codes is None else out.codes.reshape(rows, n)
    zp = None if sc.zero_point is None else sc.zero_point.reshape(rows, n // size)
    return out.y.reshape(rows, n), codes, sc.scales.reshape(rows, n // size), zp


def _kernel(*refs, spec, axis_last, dims, tile, rounding, want_codes, nbits, has_amax):
    it = iter(refs)
    x_ref = next(it)
    key_ref = next(it) if rounding == "stochastic" else None
    amax_ref = next(it) if has_amax else None
    outs = list(it)
    pre_len, a_len, post_len = dims
    if axis_last:
        i, j = pl.program_id(0), pl.program_id(1)
        x = x_ref[...]
        offs = (i.astype(U32) * U32(tile[0]), j.astype(U32) * U32(tile[1]))
        r = offs[0] + jax.lax.broadcasted_iota(U32, x.shape, 0)
        c = offs[1] + jax.lax.broadcasted_iota(U32, x.shape, 1)
        valid = c < U32(a_len)
        in_bounds = valid
        idx = r * U32(a_len) + c
    else:
        p, j, k = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        x = x_ref[0]  # [block_axis, block_other]
        a = j.astype(U32) * U32(tile[0]) + jax.lax.broadcasted_iota(U32, x.shape, 0)
        q = k.astype(U32) * U32(tile[1]) + jax.lax.broadcasted_iota(U32, x.shape, 1)
        valid = a < U32(a_len)
        in_bounds = valid & (q < U32(post_len))
        idx = p.astype(U32) * U32(a_len * post_len) + a * U32(post_len) + q
        x, valid, idx = x.T, valid.T, idx.T  # quantization axis last for the numerics
    rand = None
    if key_ref is not None:
        rand = B.hash_counter(idx, key_ref[0, 0], key_ref[0, 1])
    tensor_amax = None if amax_ref is None else amax_ref[0, 0]
    y, codes, scales, zp = quantize_tile(E.to_f32(x), valid, rand, spec, want_codes,
                                          tensor_amax)
    if not axis_last:
        y = y.T
        codes = None if codes is None else codes.T
        scales = None if scales is None else scales.T
        zp = None if zp is None else zp.T
    if not want_codes:
        y_ref = outs[0]
        y = E.from_f32(ieee.canonical_nan(y), y_ref.dtype)
        if axis_last:
            y_ref[...] = y
        else:
            y_ref[0] = y
        return
    container = jnp.uint16 if nbits > 8 else jnp.uint8
    # Out-of-bounds codes are zero, as the reference pads the packed stream.
    packed = packing.pack_codes(jnp.where(in_bounds, codes, 0).astype(container), nbits)
    vals = [packed] + ([] if scales is None else [scales]) + ([] if zp is None else [zp])
    for ref, v in zip(outs, vals):
        if axis_last:
            ref[...] = v.astype(ref.dtype)
        else:
            ref[0] = v.astype(ref.dtype)


def quantize_pallas(x: jax.Array, spec, axis: int, rounding: str, key, want_codes: bool,
                    block_axis: int, block_other: int, interpret: bool):
    """Runs the kernel. Returns y (fake-quant) or (packed codes, scales, zero_point)."""
    shape = x.shape
    a_len = shape[axis] if shape else 1
    pre = 1
    for d in shape[:axis]:
        pre *= d
    post = 1
    for d in shape[axis + 1:]:
        post *= d
    axis_last = post == 1
    nbits = elem_bits(spec)
    per_group = isinstance(spec, QuantSpec)
    channel = per_group and spec.granularity == "channel"
    gsize = (block_axis if channel else spec.block_size) if per_group else 1
    inputs, in_specs = [], []

    if axis_last:
        rows = pre
        view = x.reshape(rows, a_len)
        tile = (block_other, block_axis)
        grid = (pl.cdiv(rows, tile[0]), pl.cdiv(a_len, tile[1]))
        in_specs.append(pl.BlockSpec(tile, lambda i, j: (i, j)))
        small = lambda shp: pl.BlockSpec(shp, lambda i, j: (0, 0))
        out_block = lambda cols: pl.BlockSpec((tile[0], cols), lambda i, j: (i, j))
    else:
        view = x.reshape(pre, a_len, post)
        tile = (block_axis, block_other)
        grid = (pre, pl.cdiv(a_len, tile[0]), pl.cdiv(post, tile[1]))
        in_specs.append(pl.BlockSpec((1,) + tile, lambda p, j, k: (p, j, k)))
        small = lambda shp: pl.BlockSpec(shp, lambda p, j, k: (0, 0))
    inputs.append(view)
    if rounding == "stochastic":
        k0, k1 = B.key_words(key)
        inputs.append(jnp.stack([k0, k1]).reshape(1, 2))
        in_specs.append(small((1, 2)))
    has_amax = per_group and spec.tensor_scale
    if has_amax:
        amax = B.from_bits(jnp.max(B.to_bits(E.to_f32(x)) & U32(B.ABS_MASK)))
        inputs.append(amax.reshape(1, 1))
        in_specs.append(small((1, 1)))

    kernel = functools.partial(
        _kernel, spec=spec, axis_last=axis_last, dims=(pre, a_len, post), tile=tile,
        rounding=rounding, want_codes=want_codes, nbits=nbits, has_amax=has_amax)

    if not want_codes:
        out_shape = jax.ShapeDtypeStruct(view.shape, x.dtype)
        out_specs = in_specs[0]
    else:
        container = jnp.uint16 if nbits > 8 else jnp.uint8
        if axis_last:
            packed_cols = packing.packed_length(tile[1], nbits)
            n_tiles = grid[1]
            out_shape = [jax.ShapeDtypeStruct((rows, packed_cols * n_tiles), container)]
            out_specs = [out_block(packed_cols)]
            if per_group:
                groups_per_tile = tile[1] // gsize
                sdt = _scale_dtype(spec)
                out_shape.append(jax.ShapeDtypeStruct((rows, groups_per_tile * n_tiles), sdt))
                out_specs.append(out_block(groups_per_tile))
                if spec.int_range == "asymmetric":
                    out_shape.append(jax.ShapeDtypeStruct((rows, groups_per_tile * n_tiles),
                                                          jnp.int32))
                    out_specs.append(out_block(groups_per_tile))
        else:
            packed_cols = packing.packed_length(tile[1], nbits)
            n_tiles = grid[2]
            out_shape = [jax.ShapeDtypeStruct((pre, a_len, packed_cols * n_tiles), container)]
            out_specs = [pl.BlockSpec((1, tile[0], packed_cols), lambda p, j, k: (p, j, k))]
            if per_group:
                gpt = tile[0] // gsize
                n_groups = pl.cdiv(a_len, tile[0]) * gpt
                sdt = _scale_dtype(spec)
                spec_g = pl.BlockSpec((1, gpt, tile[1]), lambda p, j, k: (p, j, k))
                out_shape.append(jax.ShapeDtypeStruct((pre, n_groups, post), sdt))
                out_specs.append(spec_g)
                if spec.int_range == "asymmetric":
                    out_shape.append(jax.ShapeDtypeStruct((pre, n_groups, post), jnp.int32))
                    out_specs.append(spec_g)

    result = pl.pallas_call(portable_body(kernel), out_shape=out_shape, grid=grid, in_specs=in_specs,
                            out_specs=out_specs, interpret=interpret)(*inputs)
    if not want_codes:
        return result.reshape(shape)
    return result


def _scale_dtype(spec: QuantSpec):
    if spec.scale_format is None:
        return jnp.float32
    return jnp.uint16 if spec.scale_format.storage_bits > 8 else jnp.uint8
