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

One program per (block_m, block_n) output tile. The contraction runs two ways, chosen by the
platform the call lowers for (`qmatmul_kernel`'s static ``platform``):

* GPU (Triton, ``platform`` "cuda" / "rocm"): grid (M / block_m, N / block_n); each program
  holds the [block_m, K] and [K, block_n] operand strips and loops over the K / block_k tiles
  with a float32 register accumulator (a Triton grid runs its programs in parallel, so the
  contraction cannot be a grid axis), which Triton software-pipelines ``num_stages`` deep;
* TPU (Mosaic) and the interpreter: grid (M / block_m, N / block_n, K / block_k) with the K axis
  "arbitrary" (sequential) and the float32 output tile resident across it, zeroed at k == 0.

Both sum the same per-tile float32 products in the same order. The key words and tensor amaxes
are whole-array blocks (TPU: scalar memory).

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

from pallas_kernels.common import compiler_params, portable_body
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


def _operand(t, q: OperandQuant, row0, col0, ncols: int, k0, k1, amax) -> jax.Array:
    if q.spec is None:
        return t
    rand = _random_tile(t.shape, row0, col0, ncols, k0, k1) if q.stochastic else None
    return fake_quant_tile(t, q.spec, q.group_axis, rand, amax if q.two_level else None)


def _tile_product(a, b, i, j, kk, kw, amax, *, prod: Product, bm: int, bn: int,
                  bk: int) -> jax.Array:
    """float32 product of the (i, kk) tile of A and the (kk, j) tile of B, both fake-quantized."""
    a_off = (kk * bk, i * bm) if prod.a_transposed else (i * bm, kk * bk)
    b_off = (j * bn, kk * bk) if prod.b_transposed else (kk * bk, j * bn)
    a = _operand(a, prod.a, *a_off, prod.a_cols, kw[0], kw[1], amax[0])
    b = _operand(b, prod.b, *b_off, prod.b_cols, kw[2], kw[3], amax[1])
    cd = jnp.promote_types(a.dtype, b.dtype)
    dims = (((0 if prod.a_transposed else 1,), (1 if prod.b_transposed else 0,)), ((), ()))
    precision = lax.Precision.HIGHEST if cd == jnp.float32 else None
    return lax.dot_general(a.astype(cd), b.astype(cd), dims, precision=precision,
                           preferred_element_type=jnp.float32)


def _scalars(kw_ref, amax_ref):
    """The key words as scalars; the amaxes as [1, 1] arrays (Mosaic TPU cannot broadcast a
    scalar float into the scalar arithmetic of a two-level tensor scale)."""
    return ([kw_ref[t] for t in range(4)],
            [jnp.full((1, 1), amax_ref[t], jnp.float32) for t in range(2)])


def _kernel_k_grid(a_ref, b_ref, kw_ref, amax_ref, o_ref, *, prod: Product, bm: int, bn: int,
                   bk: int):
    """Grid (i, j, k): the output tile is resident across the sequential k axis."""
    i, j, kk = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(kk == 0)
    def _init():
        o_ref[...] = jnp.zeros(o_ref.shape, jnp.float32)

    kw, amax = _scalars(kw_ref, amax_ref)
    o_ref[...] += _tile_product(a_ref[...], b_ref[...], i, j, kk, kw, amax, prod=prod, bm=bm,
                                bn=bn, bk=bk)


def _kernel_k_loop(a_ref, b_ref, kw_ref, amax_ref, o_ref, *, prod: Product, bm: int, bn: int,
                   bk: int, nk: int):
    """Grid (i, j): the program loops over the nk contraction tiles of its operand strips."""
    i, j = pl.program_id(0), pl.program_id(1)
    kw, amax = _scalars(kw_ref, amax_ref)

    def body(kk, acc):
        ks = pl.ds(pl.multiple_of(kk * bk, bk), bk)
        a = a_ref[ks, :] if prod.a_transposed else a_ref[:, ks]
        b = b_ref[:, ks] if prod.b_transposed else b_ref[ks, :]
        return acc + _tile_product(a, b, i, j, kk, kw, amax, prod=prod, bm=bm, bn=bn, bk=bk)

    o_ref[...] = lax.fori_loop(0, nk, body, jnp.zeros(o_ref.shape, jnp.float32))


@functools.partial(jax.jit, static_argnames=("prod", "config", "platform", "interpret",
                                             "k_grid"))
def qmatmul_kernel(a: jax.Array, b: jax.Array, key_words: jax.Array, amax: jax.Array, *,
                   prod: Product, config: QMatmulConfig, platform: str | None, interpret: bool,
                   k_grid: bool | None = None) -> jax.Array:
    """float32 ``A @ B`` of block-padded stored operands.

    ``key_words``: uint32 [4] (k0, k1 of a's key, then b's); ``amax``: float32 [2] (a's and b's
    tensor amax, used by two-level specs only). ``platform``: what the call lowers for
    (`common.kernel_platform`: None in the interpreter); it picks the compiler parameters and
    the contraction scheme, ``k_grid`` (default: K on the grid except for GPUs) overrides the
    latter (the interpreter runs either).
    """
    bm, bn, bk = config.block_m, config.block_n, config.block_k
    m = a.shape[1] if prod.a_transposed else a.shape[0]
    k = a.shape[0] if prod.a_transposed else a.shape[1]
    n = b.shape[0] if prod.b_transposed else b.shape[1]
    if k_grid is None:
        k_grid = platform not in ("cuda", "rocm")
    if k_grid:
        grid = (m // bm, n // bn, k // bk)
        a_spec = (pl.BlockSpec((bk, bm), lambda i, j, kk: (kk, i)) if prod.a_transposed
                  else pl.BlockSpec((bm, bk), lambda i, j, kk: (i, kk)))
        b_spec = (pl.BlockSpec((bn, bk), lambda i, j, kk: (j, kk)) if prod.b_transposed
                  else pl.BlockSpec((bk, bn), lambda i, j, kk: (kk, j)))
        out_spec = pl.BlockSpec((bm, bn), lambda i, j, kk: (i, j))
        kernel = functools.partial(_kernel_k_grid, prod=prod, bm=bm, bn=bn, bk=bk)
        semantics = ("parallel", "parallel", "arbitrary")
    else:
        grid = (m // bm, n // bn)
        a_spec = (pl.BlockSpec((k, bm), lambda i, j: (0, i)) if prod.a_transposed
                  else pl.BlockSpec((bm, k), lambda i, j: (i, 0)))
        b_spec = (pl.BlockSpec((bn, k), lambda i, j: (j, 0)) if prod.b_transposed
                  else pl.BlockSpec((k, bn), lambda i, j: (0, j)))
        out_spec = pl.BlockSpec((bm, bn), lambda i, j: (i, j))
        kernel = functools.partial(_kernel_k_loop, prod=prod, bm=bm, bn=bn, bk=bk, nk=k // bk)
        semantics = ("parallel", "parallel")
    if platform == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        scalar_specs = [pl.BlockSpec(memory_space=pltpu.SMEM)] * 2
    else:
        zeros = (lambda i, j, kk: (0,)) if k_grid else (lambda i, j: (0,))
        scalar_specs = [pl.BlockSpec((4,), zeros), pl.BlockSpec((2,), zeros)]
    return pl.pallas_call(
        portable_body(kernel),
        out_shape=jax.ShapeDtypeStruct((m, n), jnp.float32),
        grid=grid,
        in_specs=[a_spec, b_spec, *scalar_specs],
        out_specs=out_spec,
        compiler_params=compiler_params(platform, num_warps=config.num_warps,
                                        num_stages=config.num_stages,
                                        dimension_semantics=semantics),
        interpret=interpret,
        name="qmatmul",
    )(a, b, key_words, amax)
