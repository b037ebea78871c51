"""Sums and matmuls whose accumulation order and precision are parameters.

``reduce_sum(x, axis, order=..., acc_dtype=...)`` and ``matmul`` / ``dot_general`` add their
terms with explicit elementwise adds in the order a `ReductionOrder` prescribes (a `lax.scan`
over the terms for ``sequential``, reshape-and-add levels for ``pairwise``, a scan over chunk
positions for ``split_k``), so XLA cannot reorder them. Precision: every term is first rounded
to ``acc_dtype``; every add is then done in float32 and its result rounded to ``acc_dtype``
(round to nearest even), so a bfloat16 / float16 accumulator loses bits at each step as the
hardware it emulates would. Results are returned in ``acc_dtype``.

Products of a matmul are formed in float32 from the operands as given (cast to float32;
exact for bfloat16 / float16 operands) and then rounded to ``acc_dtype``. XLA CPU contracts
``a * b + c`` into a fused multiply-add when both sit in one fusion, even through
``optimization_barrier`` or ``reduce_precision``; the products are therefore computed in a
two-iteration `lax.map` over halves of K, whose output is materialized in memory before any add
reads it. (`reduce_sum` does not do this: called under `jit` on ``a * b`` it may see its first
adds contracted with the producer multiply; pass materialized inputs for bit-exact emulation.)

Subnormals: XLA CPU flushes float32 subnormals to zero (FTZ/DAZ) and numpy does not; data whose
terms or partial sums fall below 2**-126 in magnitude (or below float16's 2**-14 where float16
accumulation is emulated) can differ from a numpy reference. The tests use data without them.

References:
  Yuan et al., "Give Me FP32 or Give Me Death? Challenges and Solutions for Reproducible
    Reasoning", arXiv:2506.09501.
  He et al., "Defeating Nondeterminism in LLM Inference", Thinking Machines Lab, 2025
    (split-K / reduction strategies that depend on the batch shape).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bitscale.numerics import elementwise as E
from bitscale.repro._order import OrderLike, ReductionOrder, check_acc_dtype, parse_order

DimensionNumbers = tuple[tuple[tuple[int, ...], tuple[int, ...]],
                         tuple[tuple[int, ...], tuple[int, ...]]]

BLOCK_ELEMENTS = 1 << 22
"""Matmuls whose product tensor (K x rows x N) exceeds this many elements are emulated in
blocks of rows (`lax.map`); every output element is computed the same way either way."""


def _round_to(x: jax.Array, acc) -> jax.Array:
    """``x`` rounded to nearest even into ``acc`` as a hardware conversion does (overflow to Inf),
    on the bits: a float convert to a narrower type and back is what XLA:GPU deletes under its
    default ``--xla_allow_excess_precision``, which would accumulate in float32 there."""
    x = jnp.asarray(x)
    if x.dtype == acc:
        return x
    if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        x = x.astype(jnp.float32)
    return E.from_f32(E.to_f32(x), acc, saturate=False)


def _add(u: jax.Array, v: jax.Array, acc) -> jax.Array:
    """One add: in float32, rounded to ``acc``."""
    if acc == jnp.float32:
        return u + v
    return _round_to(E.to_f32(u) + E.to_f32(v), acc)


def _sequential(x: jax.Array, acc) -> jax.Array:
    """Left-to-right sum over axis 0 of ``x`` (already in ``acc``)."""
    n = x.shape[0]
    if n == 1:
        return x[0]
    out, _ = lax.scan(lambda c, v: (_add(c, v, acc), None), x[0], x[1:])
    return out


def _pairwise(x: jax.Array, acc) -> jax.Array:
    """Level-by-level adjacent-pair tree over axis 0; an odd last term moves up unchanged."""
    while x.shape[0] > 1:
        n = x.shape[0]
        h = n // 2
        y = _add(x[0:2 * h:2], x[1:2 * h:2], acc)
        x = jnp.concatenate([y, x[n - 1:]], axis=0) if n % 2 else y
    return x[0]


def split_sizes(n: int, splits: int) -> list[int]:
    """Chunk sizes of ``split_k:<splits>`` over ``n`` terms (as `numpy.array_split`)."""
    if not 1 <= splits <= n:
        raise ValueError(f"split_k:{splits} needs 1 <= splits <= the reduced length {n}")
    q, r = divmod(n, splits)
    return [q + 1] * r + [q] * (splits - r)


def _split_k(x: jax.Array, splits: int, acc) -> jax.Array:
    """Each contiguous chunk summed sequentially (chunks side by side), then the partials."""
    n = x.shape[0]
    sizes = split_sizes(n, splits)
    width = sizes[0]
    if all(s == width for s in sizes):
        chunks = x.reshape((splits, width) + x.shape[1:])
    else:
        starts = np.cumsum([0] + sizes[:-1])
        idx = np.minimum(starts[:, None] + np.arange(width)[None, :], n - 1)
        chunks = jnp.take(x, jnp.asarray(idx.reshape(-1), jnp.int32), axis=0).reshape(
            (splits, width) + x.shape[1:])
    valid = jnp.asarray(np.arange(width)[:, None] < np.asarray(sizes)[None, :])  # [width, s]
    chunks = jnp.moveaxis(chunks, 1, 0)  # [width, s, ...]
    if width > 1:
        def body(c, xs):
            v, ok = xs
            ok = ok.reshape(ok.shape + (1,) * (c.ndim - 1))
            return jnp.where(ok, _add(c, v, acc), c), None

        partial, _ = lax.scan(body, chunks[0], (chunks[1:], valid[1:]))
    else:
        partial = chunks[0]
    return _sequential(partial, acc)


def _reduce0(x: jax.Array, order: ReductionOrder, acc) -> jax.Array:
    if order.kind == "sequential":
        return _sequential(x, acc)
    if order.kind == "pairwise":
        return _pairwise(x, acc)
    return _split_k(x, order.splits, acc)


def reduce_sum(x: jax.Array, axis: int = -1, *, order: OrderLike = "sequential",
               acc_dtype="float32", keepdims: bool = False) -> jax.Array:
    """``sum(x, axis)`` accumulated in ``order`` with every partial sum rounded to ``acc_dtype``.

    Args:
      x: any float array.
      axis: the (single) axis to reduce.
      order: ``"sequential"``, ``"pairwise"``, ``"split_k:<s>"`` or a `ReductionOrder`.
      acc_dtype: ``float32``, ``bfloat16`` or ``float16``; terms are rounded to it first.
    Returns:
      the sum in ``acc_dtype`` (zeros when the axis is empty).
    """
    order, acc = parse_order(order), jnp.dtype(check_acc_dtype(acc_dtype))
    x = jnp.asarray(x)
    axis = int(axis) % x.ndim
    if x.shape[axis] == 0:
        out = jnp.zeros(x.shape[:axis] + x.shape[axis + 1:], acc)
    else:
        out = _reduce0(_round_to(jnp.moveaxis(x, axis, 0), acc), order, acc)
    return jnp.expand_dims(out, axis) if keepdims else out


# ---------------------------------------------------------------------------------------------
# Matmuls


def canonicalize(lhs: jax.Array, rhs: jax.Array, dimension_numbers: DimensionNumbers):
    """``(l [B, M, K], r [B, N, K], out_shape)`` for any `lax.dot_general` dimension numbers.

    Batch, free and contracting axes are each flattened (contracting axes in the order the
    dimension numbers pair them); ``out_shape`` is dot_general's: batch, lhs free, rhs free.
    """
    (lc, rc), (lb, rb) = dimension_numbers
    lc, rc, lb, rb = (tuple(int(a) % n for a in axes) for axes, n in
                      ((lc, lhs.ndim), (rc, rhs.ndim), (lb, lhs.ndim), (rb, rhs.ndim)))
    lf = tuple(i for i in range(lhs.ndim) if i not in lc and i not in lb)
    rf = tuple(i for i in range(rhs.ndim) if i not in rc and i not in rb)
    bshape = tuple(lhs.shape[i] for i in lb)
    mshape = tuple(lhs.shape[i] for i in lf)
    nshape = tuple(rhs.shape[i] for i in rf)
    k = math.prod(lhs.shape[i] for i in lc)
    if k != math.prod(rhs.shape[i] for i in rc):
        raise ValueError(f"contracting dimensions differ: {lhs.shape} {lc} vs {rhs.shape} {rc}")
    b, m, n = math.prod(bshape), math.prod(mshape), math.prod(nshape)
    l = jnp.transpose(lhs, lb + lf + lc).reshape(b, m, k)
    r = jnp.transpose(rhs, rb + rf + rc).reshape(b, n, k)
    return l, r, bshape + mshape + nshape


def _products(l: jax.Array, r: jax.Array, acc) -> jax.Array:
    """P [K, B, M, N] = l[b, m, k] * r[b, n, k] in float32, rounded to ``acc``, materialized.

    Computed in a two-iteration `lax.map` over halves of K (padded to even) so that no later
    add can be contracted with its multiply into an FMA (see the module docstring).
    """
    b, m, k = l.shape
    n = r.shape[1]
    k2 = (k + 1) // 2
    pad = 2 * k2 - k
    lt = jnp.pad(_round_to(jnp.moveaxis(l, 2, 0), jnp.float32), ((0, pad), (0, 0), (0, 0)))
    rt = jnp.pad(_round_to(jnp.moveaxis(r, 2, 0), jnp.float32), ((0, pad), (0, 0), (0, 0)))

    def half(xs):
        a, c = xs  # [k2, B, M], [k2, B, N]
        return _round_to(a[:, :, :, None] * c[:, :, None, :], acc)

    p = lax.map(half, (lt.reshape(2, k2, b, m), rt.reshape(2, k2, b, n)))
    return p.reshape(2 * k2, b, m, n)[:k]


def _emulate(l: jax.Array, r: jax.Array, order: ReductionOrder, acc, block: int) -> jax.Array:
    """out [B, M, N] of canonical operands, in row blocks when the products exceed ``block``."""
    b, m, k = l.shape
    n = r.shape[1]
    if b * m * n * k <= block or m * b == 1:
        return _reduce0(_products(l, r, acc), order, acc)
    if b > 1:
        return lax.map(lambda xs: _emulate(xs[0][None], xs[1][None], order, acc, block)[0],
                       (l, r))
    rows = max(1, block // (n * k))
    blocks = -(-m // rows)
    lp = jnp.pad(l[0], ((0, blocks * rows - m), (0, 0))).reshape(blocks, 1, rows, k)
    out = lax.map(lambda x: _reduce0(_products(x, r, acc), order, acc)[0], lp)
    return out.reshape(blocks * rows, n)[:m][None]


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: DimensionNumbers, *,
                order: OrderLike = "sequential", acc_dtype="float32",
                block_elements: int = BLOCK_ELEMENTS) -> jax.Array:
    """`jax.lax.dot_general` with its contraction accumulated in ``order`` / ``acc_dtype``.

    Returns:
      the product in ``acc_dtype``, shaped as `lax.dot_general`'s output (batch, lhs free,
      rhs free dimensions). Any number of batch and contracting dimensions.
    """
    order, acc = parse_order(order), jnp.dtype(check_acc_dtype(acc_dtype))
    l, r, shape = canonicalize(jnp.asarray(lhs), jnp.asarray(rhs), dimension_numbers)
    if l.shape[2] == 0:
        return jnp.zeros(shape, acc)
    return _emulate(l, r, order, acc, int(block_elements)).reshape(shape)


def matmul(a: jax.Array, b: jax.Array, *, order: OrderLike = "sequential",
           acc_dtype="float32") -> jax.Array:
    """``a @ b`` (a [..., K], b [K, N]) accumulated in ``order`` / ``acc_dtype``.

    Example: ``matmul(x, w, order="split_k:4", acc_dtype="bfloat16")`` reproduces a split-K
    GEMM on four thread blocks with bfloat16 partial sums.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if b.ndim != 2 or a.ndim < 1 or a.shape[-1] != b.shape[0]:
        raise ValueError(f"matmul: need a [..., K] and b [K, N], got {a.shape} and {b.shape}")
    return dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), order=order,
                       acc_dtype=acc_dtype)
