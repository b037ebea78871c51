"""Pallas kernel: ``A @ B`` with both operands fake-quantized per tile, accumulated in float32.

One kernel serves the forward product and both backward products of `qmatmul`. Each operand is
given in its stored layout (optionally transposed relative to its role in the product) with an
`OperandQuant`: a spec, the stored axis along which its quantization blocks run, and whether it is
rounded stochastically. Inside the kernel a tile is viewed as ``[rows, groups, block]`` float32
groups (transposed first when the blocks run along the stored rows) and passed to the same
numerics functions `bitscale.fake_quant` uses, so the result is bit-identical to fake-quantizing
the whole operand:

* block specs need the tile's extent along the quantization axis to hold whole blocks;
* stochastic rounding draws ``hash_counter(flat index, k0, k1)`` with the element's row-major
  index in the full, unpadded operand (`bitscale.numerics.bits.random_bits`);
* two-level specs (NVFP4) receive the whole operand's amax, computed outside the kernel.

Grid (i, j, k) over (M / block_m, N / block_n, K / block_k); the float32 output tile stays
resident across k and is zeroed at k == 0.

References:
  Castro et al., "Quartet: Native FP4 Training Can Be Optimal for Large Language Models",
  arXiv:2505.14669.
  Chmiel et al., "Elucidating the Design Space of FP4 Training", arXiv:2509.17791.
  JAX Pallas documentation (matmul with a resident accumulator).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from bitscale.numerics import bits as B
from bitscale.numerics import elementwise as E
from bitscale.numerics import ieee
from bitscale.numerics import quantizer as QZ
from bitscale.numerics import scaling as S
from bitscale.numerics.specs import QuantSpec, Spec

from pallas_kernels.common import portable_body
from pallas_kernels.qmatmul.config import QMatmulConfig


U32 = B.U32


@dataclasses.dataclass(frozen=True)
class OperandQuant:
    """How one stored operand is fake-quantized in-kernel.

    Attributes:
      spec: element cast or block `QuantSpec`; None leaves the operand unchanged.
      group_axis: axis of the stored 2-D array along which quantization blocks run (0 or 1).
      stochastic: stochastic rounding with the key words passed to the kernel.
    """

    spec: Spec | None
    group_axis: int = 1
    stochastic: bool = False

    @property
    def block(self) -> int:
        """Elements per quantization block along ``group_axis`` (1 for element casts)."""
        return self.spec.block_size if isinstance(self.spec, QuantSpec) else 1

    @property
    def two_level(self) -> bool:
        return isinstance(self.spec, QuantSpec) and self.spec.tensor_scale


@dataclasses.dataclass(frozen=True)
class Product:
    """Static description of ``A @ B`` (a `jax.jit` static argument).

    ``a`` is stored [M, K] ([K, M] when ``a_transposed``), ``b`` [K, N] ([N, K] when
    ``b_transposed``); ``a_cols`` / ``b_cols`` are the unpadded stored column counts (the row
    strides of the flat indices).
    """

    a: OperandQuant
    b: OperandQuant
    a_transposed: bool
    b_transposed: bool
    a_cols: int
    b_cols: int


def fake_quant_tile(t: jax.Array, spec: Spec, group_axis: int, rand: jax.Array | None,
                    tensor_amax: jax.Array | None = None) -> jax.Array:
    """Fake-quantizes a 2-D tile with blocks along ``group_axis``, as `bitscale.fake_quant` does.

    ``rand`` (uint32, the tile's shape) selects stochastic rounding; ``tensor_amax`` is the whole
    operand's amax for two-level specs. Returns the tile's dtype.
    """
    tf = E.to_f32(t)
    if group_axis == 0:
        tf = tf.T
        rand = None if rand is None else rand.T
    if isinstance(spec, QuantSpec):
        rows, cols = tf.shape
        bs = spec.block_size
        xg = tf.reshape(rows, cols // bs, bs)
        rg = None if rand is None else rand.reshape(rows, cols // bs, bs)
        out, _ = QZ.quantize_groups(xg, spec, rg, False, None,
                                   tensor_amax if spec.tensor_scale else None)
        y = out.y.reshape(rows, cols)
    else:
        y = QZ.quantize_elements(tf, spec, rand, False, None).y
    if group_axis == 0:
        y = y.T
    return E.from_f32(ieee.canonical_nan(y), t.dtype)


def tensor_amax(x: jax.Array, spec: QuantSpec, axis: int) -> jax.Array:
    """The amax a two-level spec's tensor scale uses, computed exactly as `fake_quant` does."""
    g = S.grouping(x.shape, spec, axis)
    return B.from_bits(jnp.max(S.amax_bits(g.to_groups(E.to_f32(x)))))


def _random_tile(shape, row0, col0, ncols: int, k0, k1) -> jax.Array:
    """Counter-hash bits of a tile at (row0, col0) of a row-major array with ``ncols`` columns."""
    r = (lax.broadcasted_iota(jnp.int32, shape, 0) + row0).astype(U32)
    c = (lax.broadcasted_iota(jnp.int32, shape, 1) + col0).astype(U32)
    return B.hash_counter(r * U32(ncols) + c, k0, k1)


def _operand(ref, q: OperandQuant, row0, col0, ncols: int, k0, k1, amax) -> jax.Array:
    t = ref[...]
    if q.spec is None:
        return t
    rand = _random_tile(t.shape, row0, col0, ncols, k0, k1) if q.stochastic else None
    return fake_quant_tile(t, q.spec, q.group_axis, rand, amax if q.two_level else None)


def _kernel(a_ref, b_ref, kw_ref, amax_ref, o_ref, *, prod: Product, bm: int, bn: int, bk: int):
    i, j, kk = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(kk == 0)
    def _init():
        o_ref[...] = jnp.zeros(o_ref.shape, jnp.float32)

    a_off = (kk * bk, i * bm) if prod.a_transposed else (i * bm, kk * bk)
    b_off = (j * bn, kk * bk) if prod.b_transposed else (kk * bk, j * bn)
    a = _operand(a_ref, prod.a, *a_off, prod.a_cols, kw_ref[0], kw_ref[1], amax_ref[0])
    b = _operand(b_ref, prod.b, *b_off, prod.b_cols, kw_ref[2], kw_ref[3], amax_ref[1])
    cd = jnp.promote_types(a.dtype, b.dtype)
    dims = (((0 if prod.a_transposed else 1,), (1 if prod.b_transposed else 0,)), ((), ()))
    precision = lax.Precision.HIGHEST if cd == jnp.float32 else None
    o_ref[...] += lax.dot_general(a.astype(cd), b.astype(cd), dims, precision=precision,
                                  preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("prod", "config", "interpret"))
def qmatmul_kernel(a: jax.Array, b: jax.Array, key_words: jax.Array, amax: jax.Array, *,
                   prod: Product, config: QMatmulConfig, interpret: bool) -> jax.Array:
    """float32 ``A @ B`` of block-padded stored operands.

    ``key_words``: uint32 [4] (k0, k1 of a's key, then b's); ``amax``: float32 [2] (a's and b's
    tensor amax, used by two-level specs only).
    """
    bm, bn, bk = config.block_m, config.block_n, config.block_k
    m = a.shape[1] if prod.a_transposed else a.shape[0]
    k = a.shape[0] if prod.a_transposed else a.shape[1]
    n = b.shape[0] if prod.b_transposed else b.shape[1]
    if prod.a_transposed:
        a_spec = pl.BlockSpec((bk, bm), lambda i, j, kk: (kk, i))
    else:
        a_spec = pl.BlockSpec((bm, bk), lambda i, j, kk: (i, kk))
    if prod.b_transposed:
        b_spec = pl.BlockSpec((bn, bk), lambda i, j, kk: (j, kk))
    else:
        b_spec = pl.BlockSpec((bk, bn), lambda i, j, kk: (kk, j))
    return pl.pallas_call(
        portable_body(functools.partial(_kernel, prod=prod, bm=bm, bn=bn, bk=bk)),
        out_shape=jax.ShapeDtypeStruct((m, n), jnp.float32),
        grid=(m // bm, n // bn, k // bk),
        in_specs=[a_spec, b_spec, pl.BlockSpec((4,), lambda i, j, kk: (0,)),
                  pl.BlockSpec((2,), lambda i, j, kk: (0,))],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j, kk: (i, j)),
        interpret=interpret,
        name="qmatmul",
    )(a, b, key_words, amax)
