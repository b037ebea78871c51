"""Reduction hooks for precision policies: the objects `bitscale.nn.Rule.reduction` and
`bitscale.nn.Policy.reduction` hold.

* `Reduction(order, acc_dtype)`: an emulated accumulation order and precision
  (`bitscale.repro.dot_general` / `reduce_sum`). Every output element of the product is
  computed by the same elementwise adds whatever the batch (the rest of the model is not made
  invariant by it); it is slow (a scan or a tree of adds over K instead of one GEMM) and meant
  for reproducing hardware.
* `RowTiledDot(tile)`: batch-invariant native matmuls for model code that cannot be tiled as a
  whole. A product without batch dimensions (a projection) is cut into fixed ``[tile, K]`` row
  tiles (rows padded to a multiple of the tile) computed one after another by `lax.map`; a
  product with batch dimensions (attention) is mapped over its flattened batch dimensions.
  Every GEMM the backend sees has the same shape whatever the batch size. (Matmuls are not the
  only batch-dependent ops on XLA CPU: some elementwise fusions, e.g. softmax's
  ``exp(x - max)``, are offloaded to another library above a size threshold and differ by an
  ulp; batch-invariant models therefore tile the whole model, `BatchInvariance`.)
* `BatchInvariance(tile, order)`: the ``Policy.reduction`` of batch-invariant policies: a fixed
  order float32 ``sum`` for softmax and RMSNorm, and the row tile in which
  `bitscale.repro.make_model` runs the whole model (`bitscale.nn.Llama`'s ``row_tile``).
* `BatchDependentSplitK`: the opposite, on purpose: a split-K factor that grows as the number
  of rows shrinks, as GPU GEMM heuristics choose it (few rows -> few output tiles -> split K to
  fill the streaming multiprocessors). Reproduces batch-size-dependent logits on any backend.

References:
  He et al., "Defeating Nondeterminism in LLM Inference", Thinking Machines Lab, 2025
    (batch-invariant kernels: fixed split sizes and reduction orders per row).
  Yuan et al., "Give Me FP32 or Give Me Death? Challenges and Solutions for Reproducible
    Reasoning", arXiv:2506.09501.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from bitscale.repro._order import OrderLike, ReductionOrder, check_acc_dtype, parse_order
from bitscale.repro._reduce import canonicalize, dot_general, reduce_sum


@dataclasses.dataclass(frozen=True)
class Reduction:
    """An emulated accumulation: ``order`` (``sequential``, ``pairwise``, ``split_k:<s>``) with
    every partial sum rounded to ``acc_dtype``. Usable as a rule's and as a policy's hook."""

    order: OrderLike = "sequential"
    acc_dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "order", parse_order(self.order))
        object.__setattr__(self, "acc_dtype", check_acc_dtype(self.acc_dtype))

    def __str__(self) -> str:
        acc = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[self.acc_dtype]
        return f"{self.order}@{acc}"

    def dot_general(self, lhs: jax.Array, rhs: jax.Array, dimension_numbers) -> jax.Array:
        return dot_general(lhs, rhs, dimension_numbers, order=self.order,
                           acc_dtype=self.acc_dtype)

    def sum(self, x: jax.Array, axis: int = -1) -> jax.Array:
        return reduce_sum(x, axis, order=self.order, acc_dtype=self.acc_dtype)


_ROWS = (((1,), (1,)), ((), ()))  # [M, K] x [N, K] -> [M, N]


def _gemm(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.dot_general(x, w, _ROWS, preferred_element_type=jnp.float32)


@dataclasses.dataclass(frozen=True)
class RowTiledDot:
    """Batch-invariant native products: fixed ``[tile, K]`` row tiles (see the module doc)."""

    tile: int = 8

    def __post_init__(self):
        if not isinstance(self.tile, int) or self.tile < 1:
            raise ValueError(f"RowTiledDot: tile must be a positive integer, got {self.tile!r}")

    def __str__(self) -> str:
        return f"row_tiles:{self.tile}"

    def dot_general(self, lhs: jax.Array, rhs: jax.Array, dimension_numbers) -> jax.Array:
        (_, _), (lb, _) = dimension_numbers
        l, r, shape = canonicalize(lhs, rhs, dimension_numbers)
        if len(lb):  # one product per batch element, each of the same shape
            return lax.map(lambda xs: _gemm(xs[0], xs[1]), (l, r)).reshape(shape)
        _, m, k = l.shape
        t = -(-m // self.tile)
        tiles = jnp.pad(l[0], ((0, t * self.tile - m), (0, 0))).reshape(t, self.tile, k)
        out = lax.map(lambda x: _gemm(x, r[0]), tiles)
        return out.reshape(t * self.tile, -1)[:m].reshape(shape)


@dataclasses.dataclass(frozen=True)
class BatchDependentSplitK:
    """Split-K whose split count depends on the number of rows (batch x length) of a product:
    ``splits = clamp(ceil(target_rows / rows), 1, min(max_splits, K))``, each chunk and then the
    partials accumulated sequentially in ``acc_dtype`` (so 1 row -> 8 splits, 3 rows -> 6,
    8 rows -> 2, >= 16 rows -> 1 with the defaults)."""

    target_rows: int = 16
    max_splits: int = 8
    acc_dtype: str = "float32"

    def __post_init__(self):
        if self.target_rows < 1 or self.max_splits < 1:
            raise ValueError("BatchDependentSplitK: target_rows and max_splits must be >= 1")
        object.__setattr__(self, "acc_dtype", check_acc_dtype(self.acc_dtype))

    def __str__(self) -> str:
        return f"batch_split_k:{self.target_rows}/{self.max_splits}"

    def splits(self, rows: int, k: int) -> int:
        return max(1, min(self.max_splits, k, -(-self.target_rows // max(rows, 1))))

    def dot_general(self, lhs: jax.Array, rhs: jax.Array, dimension_numbers) -> jax.Array:
        l, _, _ = canonicalize(lhs, rhs, dimension_numbers)
        s = self.splits(l.shape[0] * l.shape[1], l.shape[2])
        return dot_general(lhs, rhs, dimension_numbers, order=ReductionOrder("split_k", s),
                           acc_dtype=self.acc_dtype)


@dataclasses.dataclass(frozen=True)
class BatchInvariance:
    """Marks a batch-invariant policy (its ``Policy.reduction``).

    Attributes:
      tile: rows (samples) per model tile: `bitscale.repro.make_model` builds a
        `bitscale.nn.Llama` with ``row_tile=tile``, which pads the batch to a multiple of
        ``tile`` and runs the model one ``[tile, length]`` slice at a time. ``tile=1``
        (default) computes every sample with the identical batch-1 program: invariant in
        every op by construction, and on the tiny CPU model within 1.15x of the batched
        model at batch 1 to 32
        (benchmarks/repro_bench.py). Larger tiles suit models whose batched GEMMs pay off
        (weights read once per tile instead of once per sample); they are batch-size invariant
        by construction and position invariant as far as the backend treats the rows of one
        shape alike (XLA CPU does; tested), and a batch below the tile pays for ``tile`` rows.
      order: the fixed order of the float32 sums of softmax and RMSNorm (``sum``).
    """

    tile: int = 1
    order: OrderLike = "pairwise"

    def __post_init__(self):
        if not isinstance(self.tile, int) or self.tile < 1:
            raise ValueError(f"BatchInvariance: tile must be a positive integer, got "
                             f"{self.tile!r}")
        object.__setattr__(self, "order", parse_order(self.order))

    def __str__(self) -> str:
        return f"batch_invariant:{self.tile}/{self.order}"

    def sum(self, x: jax.Array, axis: int = -1) -> jax.Array:
        return reduce_sum(x, axis, order=self.order, acc_dtype="float32")
