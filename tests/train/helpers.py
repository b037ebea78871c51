"""Helpers shared by the training-loop tests (tests/train) and the RL-loop tests (tests/rl)."""

from __future__ import annotations

import jax
import numpy as np


def assert_trees_equal(a, b):
    """``a`` and ``b`` have the same structure and bit-identical leaves (dtype and shape too)."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x.reshape(-1).view(np.uint8),  # bit-exact
                                      y.reshape(-1).view(np.uint8))
