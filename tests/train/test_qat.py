"""Optax QAT transforms: SR master weights (unbiased, on-grid, exact landing), LSQ, LR scaling,
and the optax habit that state structure, shape, dtype and sharding stay stable under jit.

References (independent of the library): bf16 neighbours are built in numpy from float32 bit
patterns (truncate the low 16 bits, step one bf16 ulp); the SR mean is compared with the float32 sum
within 5 standard errors of a Bernoulli on the two neighbours.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bitscale as bs
from bitscale.train import qat


def _bf16_grid(x: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32))


def _bf16_neighbours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): the bf16 values with lo <= x <= hi (equal when x is on the grid), in float32."""
    x = np.asarray(x, np.float32)
    bits = x.view(np.uint32)
    trunc = (bits & np.uint32(0xFFFF0000)).view(np.float32)  # toward zero
    on_grid = trunc == x
    away = ((bits & np.uint32(0xFFFF0000)) + np.uint32(0x10000)).view(np.float32)
    lo = np.where(on_grid | (x > 0), trunc, away)
    hi = np.where(on_grid | (x < 0), trunc, away)
    return lo, hi


def _params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        "layers": [{"mlp": {"kernel": jnp.asarray(_bf16_grid(rng.normal(size=(8, 16))), dtype)},
                    "attn": {"kernel": jnp.asarray(_bf16_grid(rng.normal(size=(16, 8))), dtype)}}],
        "bias": jnp.asarray(_bf16_grid(rng.normal(size=(8,)) * 1e-2), dtype),
        "scale": jnp.asarray(_bf16_grid(np.float32(1.5)), dtype),
    }


def _updates(params, seed=1, scale=1e-3):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    return treedef.unflatten([jnp.asarray(rng.normal(size=np.shape(p)) * scale, jnp.float32)
                              for p in leaves])


def _assert_state_stable(tx, params, updates):
    """The optax habit: state structure, shapes, dtypes and shardings unchanged by jit(update)."""
    state0 = tx.init(params)
    update = jax.jit(tx.update)
    _, state1 = update(updates, state0, params)
    _, state2 = update(updates, state1, params)
    for s in (state1, state2):
        assert jax.tree_util.tree_structure(s) == jax.tree_util.tree_structure(state0)
        for a, b in zip(jax.tree_util.tree_leaves(state0), jax.tree_util.tree_leaves(s)):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert b.sharding.is_equivalent_to(jnp.asarray(a).sharding, b.ndim)
    return state0, state1, state2


# --------------------------------------------------------------------------------------------
# Stochastic-rounded master weights


def test_sr_apply_updates_is_unbiased_and_on_neighbours():
    rng = np.random.default_rng(0)
    p = _bf16_grid(rng.normal(size=(256,)))
    u = (rng.normal(size=(256,)) * 1e-2).astype(np.float32)
    x = p + u  # the float32 target (float32 sum, as the library computes it)
    keys = jax.random.split(jax.random.key(42), 2000)
    pw, uw = {"w": jnp.asarray(p)}, {"w": jnp.asarray(u)}
    out = jax.jit(jax.vmap(lambda k: qat.sr_apply_updates(pw, uw, "bf16", k)["w"]))(keys)
    out = np.asarray(out, np.float64)
    lo, hi = _bf16_neighbours(x)
    assert np.all((out == lo) | (out == hi))
    x64, lo64, hi64 = (np.asarray(v, np.float64) for v in (x, lo, hi))
    se = np.sqrt((hi64 - x64) * (x64 - lo64) / out.shape[0])
    assert np.all(np.abs(out.mean(0) - x64) <= 5 * se + 1e-12)
    # Not degenerate: most elements take both neighbours.
    assert np.mean((out == lo).any(0) & (out == hi).any(0)) > 0.5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_low_precision_master_lands_exactly_on_sr_result(dtype):
    params = _params(dtype=dtype)
    updates = _updates(params)
    tx = qat.low_precision_master("bf16", seed=3)
    state = tx.init(params)
    update = jax.jit(tx.update)
    sr_apply = jax.jit(qat.sr_apply_updates, static_argnums=2)
    for step in range(3):
        new_u, state = update(updates, state, params)
        applied = jax.jit(optax.apply_updates)(params, new_u)
        expected = sr_apply(params, updates, "bf16", jax.random.fold_in(jax.random.key(3), step))
        for a, e, p in zip(jax.tree_util.tree_leaves(applied), jax.tree_util.tree_leaves(expected),
                           jax.tree_util.tree_leaves(params)):
            assert a.dtype == p.dtype and e.dtype == p.dtype
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(e, np.float32))
            a32 = np.asarray(a, np.float32)
            np.testing.assert_array_equal(a32, _bf16_grid(a32))  # on the bf16 grid
        params = applied
        assert int(state.count) == step + 1


def test_low_precision_master_state_stable_and_count_increments():
    params = _params()
    _, s1, s2 = _assert_state_stable(qat.low_precision_master("bf16"), params, _updates(params))
    assert s1.count.dtype == jnp.int32 and int(s1.count) == 1 and int(s2.count) == 2


def test_low_precision_master_needs_params_and_differs_per_step():
    params = _params()
    updates = _updates(params, scale=3e-3)
    tx = qat.low_precision_master("bf16", seed=0)
    with pytest.raises(ValueError):
        tx.update(updates, tx.init(params), None)
    update = jax.jit(tx.update)
    u0, s = update(updates, tx.init(params), params)
    u1, _ = update(updates, s, params)
    k0 = jax.tree_util.tree_leaves(u0)[0]
    k1 = jax.tree_util.tree_leaves(u1)[0]
    assert np.any(np.asarray(k0) != np.asarray(k1))  # a fresh key each step


def test_chain_with_adamw_under_jit():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    w_true = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    y = x @ w_true
    params = {"w": jnp.zeros((8, 4), jnp.bfloat16), "b": jnp.zeros((4,), jnp.bfloat16)}
    tx = optax.chain(optax.adamw(3e-2, weight_decay=1e-4),
                     qat.scale_by_precision({"b": 0.5}),
                     qat.low_precision_master("bf16", seed=1))

    def loss_fn(p):
        pred = x @ p["w"].astype(jnp.float32) + p["b"].astype(jnp.float32)[None, :]
        return jnp.mean((pred - y) ** 2)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    state = tx.init(params)
    struct0 = jax.tree_util.tree_structure(state)
    first = None
    for _ in range(200):
        params, state, loss = step(params, state)
        first = float(loss) if first is None else first
    assert float(loss_fn(params)) < 0.05 * first
    assert params["w"].dtype == jnp.bfloat16
    assert jax.tree_util.tree_structure(state) == struct0
    assert int(state[-1].count) == 200
    _assert_state_stable(tx, params, jax.grad(loss_fn)(params))


# --------------------------------------------------------------------------------------------
# LSQ


def test_init_step_sizes_follows_lsq():
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 32)), jnp.float32),
              "b": jnp.ones((4,), jnp.float32)}
    steps = qat.init_step_sizes(params, "int4", axis=-1)
    assert steps["b"] is None
    assert steps["w"].shape == (4, 1) and steps["w"].dtype == jnp.float32
    ref = 2 * np.abs(np.asarray(params["w"])).mean(-1, keepdims=True) / np.sqrt(7)
    np.testing.assert_allclose(steps["w"], ref, rtol=1e-6)
    scalar = qat.init_step_sizes(params, "int8", axis=None)["w"]
    assert scalar.shape == ()
    np.testing.assert_allclose(scalar, 2 * np.abs(np.asarray(params["w"])).mean() / np.sqrt(127),
                               rtol=1e-6)
    q = qat.lsq_quantize_params(params, steps, "int4")
    np.testing.assert_array_equal(q["b"], params["b"])
    np.testing.assert_array_equal(q["w"], bs.lsq_fake_quant(params["w"], steps["w"], "int4"))
    with pytest.raises(ValueError):
        qat.init_step_sizes(params, "fp8_e4m3")


def test_lsq_regression_trains_weights_and_steps():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 16)), jnp.float32)
    w_true = jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)  # W [out, in]
    y = x @ w_true.T
    params = {"w": jnp.asarray(rng.normal(size=(4, 16)) * 0.5, jnp.float32),
              "b": jnp.zeros((4,), jnp.float32)}
    train = {"params": params, "steps": qat.init_step_sizes(params, "int4", axis=-1)}
    steps0 = np.asarray(train["steps"]["w"])

    def loss_fn(t):
        q = qat.lsq_quantize_params(t["params"], t["steps"], "int4")
        return jnp.mean((x @ q["w"].T + q["b"][None, :] - y) ** 2)

    g = jax.grad(loss_fn)(train)
    assert np.any(np.asarray(g["params"]["w"]) != 0) and np.any(np.asarray(g["steps"]["w"]) != 0)
    tx = optax.adam(1e-2)
    state = tx.init(train)

    @jax.jit
    def step(t, s):
        loss, g = jax.value_and_grad(loss_fn)(t)
        u, s = tx.update(g, s, t)
        return optax.apply_updates(t, u), s, loss

    first = float(loss_fn(train))
    for _ in range(300):
        train, state, _ = step(train, state)
    final = float(loss_fn(train))
    assert final < 0.2 * first
    assert np.all(np.abs(np.asarray(train["steps"]["w"]) - steps0) > 1e-5)
    assert np.all(np.asarray(train["steps"]["w"]) > 0)


# --------------------------------------------------------------------------------------------
# Per-precision LR scaling


def test_scale_by_precision_regex_and_callable():
    params = _params(dtype=jnp.bfloat16)
    updates = jax.tree_util.tree_map(lambda p: jnp.ones_like(p), params)
    tx = qat.scale_by_precision({".*mlp.*": 0.5, "bias": 0.25})
    state = tx.init(params)
    assert isinstance(state, optax.EmptyState)
    out, _ = jax.jit(tx.update)(updates, state)
    assert float(out["layers"][0]["mlp"]["kernel"][0, 0]) == 0.5
    assert float(out["layers"][0]["attn"]["kernel"][0, 0]) == 1.0
    assert float(out["bias"][0]) == 0.25 and float(out["scale"]) == 1.0
    assert all(o.dtype == jnp.bfloat16 for o in jax.tree_util.tree_leaves(out))
    seen = []

    def fn(path: str) -> float:
        seen.append(path)
        return 2.0 if path.endswith("kernel") else 1.0

    out, _ = qat.scale_by_precision(fn).update(updates, optax.EmptyState())
    assert "layers.0.mlp.kernel" in seen
    assert float(out["layers"][0]["attn"]["kernel"][0, 0]) == 2.0 and float(out["bias"][0]) == 1.0
    _assert_state_stable(tx, params, updates)
