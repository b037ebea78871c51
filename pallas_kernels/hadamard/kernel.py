"""Block Hadamard rotation kernel, alone or fused with fake quantization (one pass).

A tile ``[block_other, block_axis]`` of the ``[rows, A]`` view (rotation axis last) is split into
Hadamard blocks and multiplied by M = H diag(s) (or its transpose) exactly as the jnp reference
`bitscale.hadamard_transform` does, then optionally fake-quantized in the same pass with the
numerics core (stochastic bits from the flat index, as `bitscale.fake_quant` draws them).

The product is one 2-D ``dot`` of the tile's Hadamard blocks as rows, ``[rows * A / h, h]``,
with M contracted on its second axis (Triton lowers only 2-D dots, with every extent >= 16: the
launch gives ``block_other * block_axis / h >= 16``). `hadamard_pallas` is jitted with the
launch (`pallas_kernels.quantize.config.Launch`: tiles, ``num_warps``, ``num_stages``,
platform) static, and passes `pallas_kernels.common.compiler_params`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from bitscale.numerics import bits as B
from pallas_kernels.common import compiler_params, portable_body
from pallas_kernels.quantize.config import Launch
from pallas_kernels.quantize.kernel import quantize_tile

U32 = B.U32


def _kernel(*refs, hblock, a_len, post_len, tile, spec, stochastic):
    it = iter(refs)
    x_ref, m_ref = next(it), next(it)
    key_ref = next(it) if stochastic else None
    (o_ref,) = tuple(it)
    x = x_ref[...].astype(jnp.float32)
    rows, n = x.shape
    blocks = x.reshape(rows * (n // hblock), hblock)
    y = jax.lax.dot_general(blocks, m_ref[...], (((1,), (1,)), ((), ())),
                            precision=jax.lax.Precision.HIGHEST,
                            preferred_element_type=jnp.float32)
    y = y.reshape(rows, n)
    if spec is not None:
        i, j = pl.program_id(0), pl.program_id(1)
        r = i.astype(U32) * U32(tile[0]) + jax.lax.broadcasted_iota(U32, y.shape, 0)
        c = j.astype(U32) * U32(tile[1]) + jax.lax.broadcasted_iota(U32, y.shape, 1)
        rand = None
        if key_ref is not None:
            # The flat index of the element in the caller's layout (the rotated axis is moved
            # last for the kernel: row r holds (p, q) = divmod(r, post_len)), so the random bits
            # are `bitscale.fake_quant`'s whatever the axis.
            if post_len == 1:
                idx = r * U32(a_len) + c
            else:
                p, q = r // U32(post_len), r % U32(post_len)
                idx = p * U32(a_len * post_len) + c * U32(post_len) + q
            rand = B.hash_counter(idx, key_ref[0, 0], key_ref[0, 1])
        y = quantize_tile(y, c < U32(a_len), rand, spec, False, None)[0]
    o_ref[...] = y.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("hblock", "spec", "launch", "out_dtype",
                                             "interpret", "post_len"))
def hadamard_pallas(x2d: jax.Array, m: jax.Array, rounding_key, *, hblock: int, spec,
                    launch: Launch, out_dtype, interpret: bool, post_len: int = 1) -> jax.Array:
    """Rotates (and optionally fake-quantizes) a [rows, A] array along its last axis.

    ``post_len``: the product of the caller's axes after the rotated one (its rows are the
    caller's other axes flattened with the rotated axis moved last); stochastic rounding indexes
    its random bits by the caller's flat element index."""
    rows, a_len = x2d.shape
    tile = (launch.block_other, launch.block_axis)
    platform = launch.platform
    grid = (pl.cdiv(rows, tile[0]), pl.cdiv(a_len, tile[1]))
    inputs = [x2d, m]
    in_specs = [pl.BlockSpec(tile, lambda i, j: (i, j)),
                pl.BlockSpec(m.shape, lambda i, j: (0, 0))]
    if rounding_key is not None:
        k0, k1 = B.key_words(rounding_key)
        inputs.append(jnp.stack([k0, k1]).reshape(1, 2))
        in_specs.append(pl.BlockSpec((1, 2), lambda i, j: (0, 0)))
    kernel = functools.partial(_kernel, hblock=hblock, a_len=a_len, post_len=post_len,
                               tile=tile, spec=spec, stochastic=rounding_key is not None)
    params = compiler_params(platform, num_warps=launch.num_warps, num_stages=launch.num_stages,
                             dimension_semantics=("parallel", "parallel"))
    return pl.pallas_call(portable_body(kernel),
                          out_shape=jax.ShapeDtypeStruct(x2d.shape, out_dtype),
                          grid=grid, in_specs=in_specs, out_specs=in_specs[0],
                          interpret=interpret, compiler_params=params)(*inputs)
