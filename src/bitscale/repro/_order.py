"""Reduction-order specs: ``sequential``, ``pairwise`` and ``split_k:<s>``.

An order says in which order the ``n`` terms ``x_0 .. x_{n-1}`` of a sum are added:

* ``sequential``: left to right, ``(((x_0 + x_1) + x_2) + ...)``.
* ``pairwise``: a balanced binary tree built level by level. Each level adds adjacent pairs,
  ``y_i = x_{2i} + x_{2i+1}`` for ``i < n // 2``; when the level has an odd count its last term
  is carried unchanged to the end of the next level. Levels repeat until one term is left (so
  ``n = 5`` gives ``((x_0 + x_1) + (x_2 + x_3)) + x_4``).
* ``split_k:<s>``: the terms are cut into ``s`` contiguous chunks as `numpy.array_split` cuts
  them (the first ``n % s`` chunks hold ``n // s + 1`` terms, the others ``n // s``); each chunk
  is summed sequentially, then the ``s`` partial sums are added sequentially, as a split-K GEMM
  on ``s`` thread blocks, or a tensor-parallel reduction over ``s`` devices, accumulates them.
  Needs ``1 <= s <= n``.

References:
  Yuan et al., "Give Me FP32 or Give Me Death? Challenges and Solutions for Reproducible
    Reasoning", arXiv:2506.09501 (reduction order as the source of divergence).
  Higham, "The Accuracy of Floating Point Summation", SIAM J. Sci. Comput. 14(4), 1993
    (recursive / pairwise summation).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Union

KINDS = ("sequential", "pairwise", "split_k")
ORDER_SYNTAX = ("sequential", "pairwise", "split_k:<s>")
ACC_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ReductionOrder:
    """The order in which the terms of a sum are accumulated (see the module docstring).

    Attributes:
      kind: ``sequential``, ``pairwise`` or ``split_k``.
      splits: the number of chunks of ``split_k`` (>= 1); must be 1 for the other kinds.
    """

    kind: Literal["sequential", "pairwise", "split_k"]
    splits: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown reduction order {self.kind!r}; valid orders: "
                             f"{list(ORDER_SYNTAX)}")
        if not isinstance(self.splits, int) or self.splits < 1:
            raise ValueError(f"split_k needs a positive integer split count, got {self.splits!r}")
        if self.kind != "split_k" and self.splits != 1:
            raise ValueError(f"order {self.kind!r} takes no split count (got {self.splits})")

    def __str__(self) -> str:
        return f"split_k:{self.splits}" if self.kind == "split_k" else self.kind


OrderLike = Union[str, ReductionOrder]


def parse_order(order: OrderLike) -> ReductionOrder:
    """A `ReductionOrder` from ``"sequential"``, ``"pairwise"``, ``"split_k:4"`` (or an order).

    Raises:
      ValueError: an unknown name or a malformed split count, listing the valid orders.
    """
    if isinstance(order, ReductionOrder):
        return order
    if not isinstance(order, str):
        raise ValueError(f"reduction order must be a string or ReductionOrder, got {order!r}; "
                         f"valid orders: {list(ORDER_SYNTAX)}")
    name, sep, arg = order.strip().partition(":")
    if name == "split_k":
        if not sep or not arg.strip().isdigit() or int(arg) < 1:
            raise ValueError(f"reduction order {order!r}: split_k needs a positive integer "
                             f"split count, e.g. 'split_k:4'; valid orders: {list(ORDER_SYNTAX)}")
        return ReductionOrder("split_k", int(arg))
    if sep or name not in KINDS:
        raise ValueError(f"unknown reduction order {order!r}; valid orders: "
                         f"{list(ORDER_SYNTAX)}")
    return ReductionOrder(name)


def check_acc_dtype(acc_dtype) -> str:
    """The accumulation dtype's canonical name; raises for anything but f32 / bf16 / f16."""
    import jax.numpy as jnp

    try:
        name = jnp.dtype(acc_dtype).name
    except TypeError:
        name = str(acc_dtype)
    if name not in ACC_DTYPES:
        raise ValueError(f"accumulation dtype must be one of {ACC_DTYPES}, got {acc_dtype!r}")
    return name
