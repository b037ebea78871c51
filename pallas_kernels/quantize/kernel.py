"""Fused one-pass quantize / fake-quantize Pallas kernel.

The array is viewed without copying as ``[pre, A, post]`` (A = the quantization axis). When the
axis is the last one the view is ``[rows, A]`` and a tile is ``[block_other, block_axis]``;
otherwise a tile is ``[block_axis, block_other]`` of one ``pre`` slice. Each tile is read once;
the kernel computes the scales of the groups it holds, rounds (stochastic bits come from the keyed
counter hash of each element's flat index in the full array, exactly as `bitscale.fake_quant`
draws them) and writes the result, or the packed codes and the scales.

The tile body calls the same `bitscale.numerics` functions as the XLA reference, so the two agree
bit for bit by construction; the tests check it. Where a numerics function does not lower on
every backend, the body uses an equivalent here (same bits, checked by the same tests):

* group amax: the max of the magnitude bits as int32 (Mosaic TPU has no unsigned reductions;
  magnitudes are below 2^31, so the order is the same);
* the asymmetric zero point rounds with `bitscale.numerics.bits` (Triton has no ``round``);
* code packing ORs disjoint bit fields as an int32 sum over a reshaped axis (no nested ``jit``,
  which Triton cannot lower with constants); 3/5/6/7-bit codes (8 codes in ``bits`` bytes) are
  written as ``bits`` byte planes that XLA interleaves after the call, since Triton tiles are
  powers of two.

Lowering: `quantize_call` is jitted with the launch (tiles, ``num_warps``, ``num_stages`` and
the platform from `pallas_kernels.common.kernel_platform`) as static arguments; every
``pallas_call`` passes `pallas_kernels.common.compiler_params` (Triton on GPU, Mosaic TPU with
"parallel" grid axes on TPU). On TPU the code / scale outputs are written tile-major
(``[tiles, rows, cols]``, whose blocks always satisfy Mosaic's (8, 128) rule) and reordered by
XLA after the call when there is more than one tile along the quantization axis.
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
from bitscale.numerics import scaling as S
from bitscale.numerics.qarray import elem_bits
from bitscale.numerics.specs import QuantSpec

from pallas_kernels.common import compiler_params, kernel_platform, portable_body
from pallas_kernels.quantize.config import Launch

U32, I32 = B.U32, B.I32


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


def n_planes(nbits: int) -> int:
    """Outputs the packed codes take: 1, or ``nbits`` byte planes for 3/5/6/7-bit codes."""
    return nbits if nbits < 8 and 8 % nbits else 1


def pack_tile(codes: jax.Array, nbits: int) -> list[jax.Array]:
    """`bitscale.numerics.packing.pack_codes` of a [rows, n] tile of uint32 codes (n a multiple
    of 8 / nbits, or of 8 for 3/5/6/7 bits), without nested jit or unsigned reductions.

    Returns [packed] (1/2/4/8/16 bits), or the ``nbits`` byte planes [rows, n / 8] of the
    8-codes-in-``nbits``-bytes groups (byte j of group g is plane j at g; see `join_planes`).
    """
    if nbits == 16:
        return [codes.astype(jnp.uint16)]
    if nbits == 8:
        return [codes.astype(jnp.uint8)]
    rows, n = codes.shape
    c = (codes & U32((1 << nbits) - 1)).astype(I32)
    if 8 % nbits == 0:
        k = 8 // nbits
        cg = c.reshape(rows, n // k, k)
        shift = jax.lax.broadcasted_iota(I32, cg.shape, 2) * nbits
        # Disjoint bit fields: the sum is the OR.
        return [jnp.sum(cg << shift, axis=-1).astype(jnp.uint8)]
    cg = c.reshape(rows, n // 8, 8)
    i = jax.lax.broadcasted_iota(I32, cg.shape, 2)
    planes = []
    for j in range(nbits):
        s = i * nbits - 8 * j  # left shift of code i into byte j (negative: right shift)
        overlap = (i * nbits < 8 * j + 8) & ((i + 1) * nbits > 8 * j)
        piece = ((cg << jnp.maximum(s, 0)) >> jnp.maximum(-s, 0)) & 0xFF
        planes.append(jnp.sum(jnp.where(overlap, piece, 0), axis=-1).astype(jnp.uint8))
    return planes


def join_planes(planes: list[jax.Array]) -> jax.Array:
    """Interleaves `pack_tile`'s byte planes [..., G] into the packed stream [..., G * nbits]."""
    st = jnp.stack(planes, axis=-1)
    return st.reshape(st.shape[:-2] + (st.shape[-2] * st.shape[-1],))


# ---------------------------------------------------------------------------------------------
# Kernel


def _kernel(*refs, spec, axis_last, dims, tile, rounding, want_codes, nbits, has_amax,
            tile_major):
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
    # A [1, 1] array, not a scalar: Mosaic TPU cannot broadcast a float scalar read from VMEM.
    tensor_amax = None if amax_ref is None else amax_ref[...]
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
    # Out-of-bounds codes are zero, as the reference pads the packed stream.
    vals = pack_tile(jnp.where(in_bounds, codes, U32(0)), nbits)
    vals += ([] if scales is None else [scales]) + ([] if zp is None else [zp])
    for ref, v in zip(outs, vals):
        if axis_last and not tile_major:
            ref[...] = v.astype(ref.dtype)
        else:
            ref[0] = v.astype(ref.dtype)


def _tpu_ok(block: int, full: int, align: int) -> bool:
    return block % align == 0 or block == full


def quantize_pallas(x: jax.Array, spec, axis: int, rounding: str, key, want_codes: bool,
                    block_axis: int, block_other: int, interpret: bool, *,
                    num_warps: int = 4, num_stages: int = 2):
    """Positional form of `quantize_call` (the platform is `kernel_platform(interpret)`)."""
    launch = Launch(block_axis, block_other, num_warps, num_stages, kernel_platform(interpret))
    return quantize_call(x, key if rounding == "stochastic" else None, spec=spec, axis=axis,
                         rounding=rounding, want_codes=want_codes, launch=launch,
                         interpret=interpret)


@functools.partial(jax.jit, static_argnames=("spec", "axis", "rounding", "want_codes", "launch",
                                             "interpret"))
def quantize_call(x: jax.Array, key, *, spec, axis: int, rounding: str, want_codes: bool,
                  launch: Launch, interpret: bool):
    """Runs the kernel. Returns y (fake-quant) or [packed codes, scales, zero_point] in the
    kernel's layout (``[rows, cols]`` or ``[pre, A, cols]``; see `quantize` for the unpadding).

    ``launch.platform`` selects the compiler parameters (None: none, e.g. the interpreter).
    """
    block_axis, block_other, num_warps, num_stages, platform = launch
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
    planes = n_planes(nbits)
    inputs, in_specs = [], []

    if axis_last:
        rows = pre
        view = x.reshape(rows, a_len)
        tile = (block_other, block_axis)
        grid = (pl.cdiv(rows, tile[0]), pl.cdiv(a_len, tile[1]))
        in_specs.append(pl.BlockSpec(tile, lambda i, j: (i, j)))
        small = lambda shp: pl.BlockSpec(shp, lambda i, j: (0, 0))  # noqa: E731
    else:
        view = x.reshape(pre, a_len, post)
        tile = (block_axis, block_other)
        grid = (pre, pl.cdiv(a_len, tile[0]), pl.cdiv(post, tile[1]))
        in_specs.append(pl.BlockSpec((1,) + tile, lambda p, j, k: (p, j, k)))
        small = lambda shp: pl.BlockSpec(shp, lambda p, j, k: (0, 0))  # noqa: E731
    inputs.append(view)
    if rounding == "stochastic":
        k0, k1 = B.key_words(key)
        inputs.append(jnp.stack([k0, k1]).reshape(1, 2))
        in_specs.append(small((1, 2)))
    has_amax = per_group and spec.tensor_scale
    if has_amax:
        inputs.append(B.from_bits(S.amax_bits(E.to_f32(x).reshape(1, -1))).reshape(1, 1))
        in_specs.append(small((1, 1)))

    tile_major = False
    out_cols = []  # per output: columns per tile (axis-last) / rows per tile (other axis)
    if not want_codes:
        out_shape = jax.ShapeDtypeStruct(view.shape, x.dtype)
        out_specs = in_specs[0]
    else:
        container = jnp.uint16 if nbits > 8 else jnp.uint8
        sdt = _scale_dtype(spec) if per_group else None
        if axis_last:
            n_tiles = grid[1]
            code_cols = (tile[1] // 8 if planes > 1 else packing.packed_length(tile[1], nbits))
            out_cols = [(code_cols, container)] * planes
            if per_group:
                gpt = tile[1] // gsize
                out_cols.append((gpt, sdt))
                if spec.int_range == "asymmetric":
                    out_cols.append((gpt, jnp.int32))
            # Mosaic TPU: a [tile0, cols] block of a [rows, cols * tiles] array is legal only if
            # cols is a multiple of 128 or there is one tile; else write [tiles, rows, cols].
            tile_major = platform == "tpu" and n_tiles > 1 and not all(
                c % 128 == 0 for c, _ in out_cols)
            if tile_major:
                out_shape = [jax.ShapeDtypeStruct((n_tiles, rows, c), d) for c, d in out_cols]
                out_specs = [pl.BlockSpec((1, tile[0], c), lambda i, j: (j, i, 0))
                             for c, _ in out_cols]
            else:
                out_shape = [jax.ShapeDtypeStruct((rows, c * n_tiles), d) for c, d in out_cols]
                out_specs = [pl.BlockSpec((tile[0], c), lambda i, j: (i, j)) for c, _ in out_cols]
        else:
            n_tiles = grid[2]
            code_cols = (tile[1] // 8 if planes > 1 else packing.packed_length(tile[1], nbits))
            out_shape = [jax.ShapeDtypeStruct((pre, a_len, code_cols * n_tiles), container)
                         ] * planes
            out_specs = [pl.BlockSpec((1, tile[0], code_cols), lambda p, j, k: (p, j, k))
                         ] * planes
            if per_group:
                gpt = tile[0] // gsize
                n_groups = pl.cdiv(a_len, tile[0]) * gpt
                spec_g = pl.BlockSpec((1, gpt, tile[1]), lambda p, j, k: (p, j, k))
                out_shape.append(jax.ShapeDtypeStruct((pre, n_groups, post), sdt))
                out_specs.append(spec_g)
                if spec.int_range == "asymmetric":
                    out_shape.append(jax.ShapeDtypeStruct((pre, n_groups, post), jnp.int32))
                    out_specs.append(spec_g)

    kernel = functools.partial(
        _kernel, spec=spec, axis_last=axis_last, dims=(pre, a_len, post), tile=tile,
        rounding=rounding, want_codes=want_codes, nbits=nbits, has_amax=has_amax,
        tile_major=tile_major)
    params = compiler_params(platform, num_warps=num_warps, num_stages=num_stages,
                             dimension_semantics=("parallel",) * len(grid))
    result = pl.pallas_call(portable_body(kernel), out_shape=out_shape, grid=grid,
                            in_specs=in_specs, out_specs=out_specs, interpret=interpret,
                            compiler_params=params)(*inputs)
    if not want_codes:
        return result.reshape(shape)
    result = list(result)
    if tile_major:  # [tiles, rows, cols] -> [rows, tiles * cols]
        result = [r.transpose(1, 0, 2).reshape(rows, -1) for r in result]
    if planes > 1:
        result = [join_planes(result[:planes])] + result[planes:]
    return result


def _scale_dtype(spec: QuantSpec):
    if spec.scale_format is None:
        return jnp.float32
    return jnp.uint16 if spec.scale_format.storage_bits > 8 else jnp.uint8
