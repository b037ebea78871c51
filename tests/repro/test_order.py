"""Reduction-order emulation: bit-exact against an independent numpy implementation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from bitscale import repro

NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


# --- numpy reference: plain loops, one rounding to the accumulation dtype after every add ------

def np_add(u, v, dt):
    return (u.astype(np.float32) + v.astype(np.float32)).astype(dt)


def np_sum0(x, order: str, dt):
    """Sum over axis 0 of x (already in dt), in `order`."""
    terms = [x[i] for i in range(x.shape[0])]
    if order == "sequential":
        acc = terms[0]
        for t in terms[1:]:
            acc = np_add(acc, t, dt)
        return acc
    if order == "pairwise":
        while len(terms) > 1:
            nxt = [np_add(terms[2 * i], terms[2 * i + 1], dt) for i in range(len(terms) // 2)]
            if len(terms) % 2:
                nxt.append(terms[-1])
            terms = nxt
        return terms[0]
    s = int(order.split(":")[1])
    chunks = np.array_split(np.arange(len(terms)), s)
    partials = []
    for c in chunks:
        acc = terms[c[0]]
        for i in c[1:]:
            acc = np_add(acc, terms[i], dt)
        partials.append(acc)
    acc = partials[0]
    for p in partials[1:]:
        acc = np_add(acc, p, dt)
    return acc


def np_reduce_sum(x, axis, order, acc):
    dt = NP_DTYPES[acc]
    return np_sum0(np.moveaxis(np.asarray(x), axis, 0).astype(dt), order, dt)


def np_matmul(a, b, order, acc):
    dt = NP_DTYPES[acc]
    prods = (a.astype(np.float32)[..., :, None] * b.astype(np.float32)[None, :, :]).astype(dt)
    return np_sum0(np.moveaxis(prods, -2, 0), order, dt)


def data(shape, seed, dtype=np.float32):
    """N(0, 1) data: no subnormal terms, products or partial sums (XLA CPU flushes them)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(dtype)


def assert_bits_equal(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


# --- tests --------------------------------------------------------------------------------------

# (order, accumulation dtype, shape): every order in every dtype, over K that are powers of
# two, odd, prime, smaller and larger than the split count.
SUM_CASES = [(o, a, shape, axis) for o, shapes in [
    ("sequential", [((13, 37), -1), ((64, 5), 0), ((3, 100, 2), 1)]),
    ("pairwise", [((3, 100, 2), 1), ((13, 37), -1), ((64, 5), 0)]),
    ("split_k:3", [((64, 5), 0), ((3, 100, 2), 1), ((13, 37), -1)]),
    ("split_k:7", [((13, 37), -1), ((3, 100, 2), 1), ((7, 2), 0)]),
] for a, (shape, axis) in zip(["float32", "bfloat16", "float16"], shapes)]
MATMUL_CASES = [(o, a, mkn) for o, shapes in [
    ("sequential", [(5, 7, 3), (9, 64, 17), (4, 97, 33)]),
    ("pairwise", [(4, 97, 33), (5, 7, 3), (9, 64, 17)]),
    ("split_k:1", [(9, 64, 17)]),
    ("split_k:4", [(9, 64, 17), (4, 97, 33), (5, 7, 3)]),
    ("split_k:7", [(5, 7, 3)]),
] for a, mkn in zip(["float32", "bfloat16", "float16"], shapes)]


@pytest.mark.parametrize("order,acc,shape,axis", SUM_CASES)
def test_reduce_sum_matches_numpy(order, acc, shape, axis):
    x = data(shape, seed=len(shape) + shape[axis])
    got = jax.jit(lambda v: repro.reduce_sum(v, axis, order=order, acc_dtype=acc))(x)
    assert_bits_equal(got, np_reduce_sum(x, axis, order, acc))


@pytest.mark.parametrize("order,acc,mkn", MATMUL_CASES)
def test_matmul_matches_numpy(order, acc, mkn):
    m, k, n = mkn
    a, b = data((m, k), seed=k), data((k, n), seed=k + 1)
    got = jax.jit(lambda u, v: repro.matmul(u, v, order=order, acc_dtype=acc))(a, b)
    assert_bits_equal(got, np_matmul(a, b, order, acc))


def test_matmul_bf16_operands_and_batch_dims():
    a = data((2, 3, 6, 40), seed=3, dtype=ml_dtypes.bfloat16)
    b = data((2, 3, 40, 5), seed=4, dtype=ml_dtypes.bfloat16)
    dims = (((3,), (2,)), ((0, 1), (0, 1)))
    got = jax.jit(lambda u, v: repro.dot_general(u, v, dims, order="split_k:3",
                                                 acc_dtype="bfloat16"))(a, b)
    want = np.stack([np.stack([np_matmul(a[i, j], b[i, j], "split_k:3", "bfloat16")
                               for j in range(3)]) for i in range(2)])
    assert_bits_equal(got, want)


def test_blocked_rows_equal_unblocked():
    a, b = data((37, 50), seed=5), data((50, 11), seed=6)
    dims = (((1,), (0,)), ((), ()))
    full = repro.dot_general(a, b, dims, order="sequential")
    blocked = repro.dot_general(a, b, dims, order="sequential", block_elements=600)
    assert_bits_equal(blocked, full)
    assert_bits_equal(full, np_matmul(a, b, "sequential", "float32"))


def test_orders_really_differ_and_native_is_close():
    a, b = data((16, 256), seed=7), data((256, 16), seed=8)

    @jax.jit
    def run(a, b):
        return {o: repro.matmul(a, b, order=o) for o in ("sequential", "pairwise", "split_k:8")
                } | {"bf16": repro.matmul(a, b, order="pairwise", acc_dtype="bfloat16")}

    outs = {k: np.asarray(v).astype(np.float32) for k, v in run(a, b).items()}
    assert not np.array_equal(outs["sequential"], outs["pairwise"])
    assert not np.array_equal(outs["sequential"], outs["split_k:8"])
    native = a @ b
    for k in ("sequential", "pairwise", "split_k:8"):
        np.testing.assert_allclose(outs[k], native, rtol=1e-4, atol=1e-4)
    assert np.abs(outs["bf16"] - native).max() > 1e-2  # bf16 partial sums lose bits


def test_parse_order_and_errors():
    assert repro.parse_order("split_k:4") == repro.ReductionOrder("split_k", 4)
    assert str(repro.parse_order(" pairwise ")) == "pairwise"
    for bad in ("tree", "split_k", "split_k:0", "split_k:x", "sequential:2", 3):
        with pytest.raises(ValueError, match="valid orders"):
            repro.parse_order(bad)
    with pytest.raises(ValueError, match="1 <= splits"):
        repro.reduce_sum(jnp.ones((3,)), order="split_k:4")
    with pytest.raises(ValueError, match="accumulation dtype"):
        repro.reduce_sum(jnp.ones((3,)), acc_dtype="float64")
    assert float(repro.reduce_sum(jnp.ones((0, 2)), 0)[0]) == 0.0
