"""Advantages (GRPO, Dr. GRPO, RLOO, MC-GRPO) against hand-worked matrices.

Expected values are worked by hand from the definitions (comments show the arithmetic), never from
the code under test.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale import rl

SQRT3 = math.sqrt(3.0)


def test_grpo_hand_values_sample_and_population_std():
    r = jnp.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    # row 0: mean 0.5, sample std sqrt(4 * 0.25 / 3) = 1/sqrt(3) -> +-0.5 * sqrt(3)
    # row 1: mean 1.5, sample std sqrt(5/3); population std sqrt(5/4)
    want = np.array([[0.5, -0.5, -0.5, 0.5], [-1.5, -0.5, 0.5, 1.5]])
    want_sample = want / np.array([[1 / SQRT3], [math.sqrt(5 / 3)]])
    want_pop = want / np.array([[0.5], [math.sqrt(5 / 4)]])
    got = rl.grpo_advantages(r)
    assert got.dtype == jnp.float32 and got.shape == (2, 4)
    np.testing.assert_allclose(got, want_sample, rtol=1e-5)
    np.testing.assert_allclose(rl.grpo_advantages(r, ddof=0), want_pop, rtol=1e-5)
    # eps sits in the denominator: std + eps
    np.testing.assert_allclose(rl.grpo_advantages(r[:1], eps=0.5)[0],
                               want[0] / (1 / SQRT3 + 0.5), rtol=1e-5)


@pytest.mark.parametrize("fn", [rl.grpo_advantages, rl.drgrpo_advantages, rl.rloo_advantages])
def test_all_equal_rewards_give_exact_zero(fn):
    # 0.1 * 7 / 7 is not exactly 0.1 in float32: a naive r - mean would leave ~1e-8 residues.
    r = jnp.array([[0.1] * 7, [1.0] * 7, [0.0] * 7, [-3.3] * 7], jnp.float32)
    got = fn(r)
    assert np.all(np.asarray(got) == 0.0)
    if fn is rl.grpo_advantages:
        assert np.all(np.asarray(rl.grpo_advantages(r, eps=0.0)) == 0.0)


def test_grpo_ties_and_gradients_are_finite():
    # ties [2, 2, 5, 5]: mean 3.5, sample std sqrt(4 * 2.25 / 3) = sqrt(3) -> +-1.5 / sqrt(3)
    r = jnp.array([[2.0, 2.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    got = rl.grpo_advantages(r)
    np.testing.assert_allclose(got[0], np.array([-1, -1, 1, 1]) * 1.5 / SQRT3, rtol=1e-5)
    g = jax.grad(lambda x: jnp.sum(rl.grpo_advantages(x) ** 2))(r)
    assert np.all(np.isfinite(np.asarray(g)))


def test_drgrpo_hand_values():
    r = jnp.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    want = [[0.5, -0.5, -0.5, 0.5], [-1.5, -0.5, 0.5, 1.5]]
    np.testing.assert_allclose(rl.drgrpo_advantages(r), want, rtol=1e-6)


def test_rloo_hand_values():
    r = jnp.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 2.0, 3.0], [3.0, 1.0, 1.0, 1.0]])
    want = [
        [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3],  # r_i - mean of the other three
        [0 - 6 / 3, 1 - 5 / 3, 2 - 4 / 3, 3 - 3 / 3],
        [3 - 1, 1 - 5 / 3, 1 - 5 / 3, 1 - 5 / 3],
    ]
    np.testing.assert_allclose(rl.rloo_advantages(r), want, rtol=1e-6, atol=1e-6)
    # G = 2: each baseline is the other sample
    np.testing.assert_allclose(rl.rloo_advantages(jnp.array([[1.0, 0.25]])), [[0.75, -0.75]])


def test_mc_grpo_continuous_rewards_use_the_robust_scale():
    r = jnp.array([[0.2, 0.5, 0.9, 0.1, 0.3]])
    # median 0.3 (the pivot, index 4); |r - 0.3| = .1 .2 .6 .2 0 -> MAD 0.2, 1.4826 * 0.2 = 0.29652
    # population std: mean 0.4, squares .04 .01 .25 .09 .01 -> sqrt(0.08) = 0.28284 < 0.29652
    adv, mask = rl.mc_grpo_advantages(r)
    np.testing.assert_allclose(adv[0], np.array([-0.1, 0.2, 0.6, -0.2, 0.0]) / 0.29652, rtol=1e-4)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0]])
    assert adv[0, 4] == 0.0
    raw, _ = rl.mc_grpo_advantages(r, normalize=False)
    np.testing.assert_allclose(raw[0], [-0.1, 0.2, 0.6, -0.2, 0.0], atol=1e-6)


def test_mc_grpo_heavy_tail_falls_back_to_std():
    r = jnp.array([[0.0, 0.0, 0.0, 1.0, 10.0]])
    # median 0 -> MAD 0; mean 2.2, population variance (3 * 4.84 + 1.44 + 60.84) / 5 = 15.36
    s = math.sqrt(15.36)
    adv, mask = rl.mc_grpo_advantages(r)
    np.testing.assert_allclose(adv[0], [0, 0, 0, 1 / s, 10 / s], rtol=1e-5)
    np.testing.assert_array_equal(mask, [[1, 1, 0, 1, 1]])  # stable sort: middle 0 is index 2
    clipped, _ = rl.mc_grpo_advantages(r, clip=1.0)
    np.testing.assert_allclose(clipped[0], [0, 0, 0, 1 / s, 1.0], rtol=1e-5)


def test_mc_grpo_pivot_ties_and_constant_groups():
    # stable sort of [3, 1, 3, 2, 3]: 1(i1) 2(i3) 3(i0) 3(i2) 3(i4) -> position 2 is index 0
    adv, mask = rl.mc_grpo_advantages(jnp.array([[3.0, 1.0, 3.0, 2.0, 3.0],
                                                 [0.7, 0.7, 0.7, 0.7, 0.7]]))
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1, 1], [1, 1, 0, 1, 1]])
    assert adv[0, 0] == 0 and adv[0, 2] == 0 and adv[0, 4] == 0  # tied with the median
    assert adv[0, 1] < 0 and adv[0, 3] < 0
    assert np.all(np.asarray(adv[1]) == 0.0)
    assert np.all(np.asarray(rl.mc_grpo_advantages(jnp.full((2, 3), 0.1), eps=0.0)[0]) == 0.0)


@pytest.mark.parametrize("n", [3, 5, 7])
def test_mc_grpo_binary_rewards_bounded_finite_signed(n):
    rows = np.array(list(itertools.product([0.0, 1.0], repeat=n)), np.float32)  # every pattern
    adv, mask = rl.mc_grpo_advantages(jnp.asarray(rows))
    adv, mask = np.asarray(adv), np.asarray(mask)
    g = n - 1
    assert np.all(np.isfinite(adv))
    assert np.max(np.abs(adv)) <= 1.0 + math.sqrt(g) + 1e-5
    median = np.sort(rows, axis=1)[:, n // 2:n // 2 + 1]
    np.testing.assert_array_equal(np.sign(adv), np.sign(rows - median))
    np.testing.assert_array_equal(mask.sum(axis=1), np.full(len(rows), g))
    pivot = np.argmin(mask, axis=1)
    np.testing.assert_array_equal(rows[np.arange(len(rows)), pivot], median[:, 0])
    # The reference's MAD + 1e-3 scale would give -1000 here; ours is -1 / std_pop,
    # std_pop = sqrt(0.6 * 0.4) for three ones and two zeros.
    if n == 5:
        a, m = rl.mc_grpo_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0, 1.0]]))
        np.testing.assert_allclose(a, [[0, -1 / math.sqrt(0.24), -1 / math.sqrt(0.24), 0, 0]],
                                   rtol=1e-5)
        np.testing.assert_array_equal(m, [[0, 1, 1, 1, 1]])


def test_jit_and_vmap_match_eager():
    r = jnp.asarray(np.random.default_rng(0).random((3, 2, 5)), jnp.float32)
    for fn in (rl.grpo_advantages, rl.drgrpo_advantages, rl.rloo_advantages):
        np.testing.assert_allclose(jax.jit(fn)(r[0]), fn(r[0]), rtol=1e-6)
        np.testing.assert_allclose(jax.vmap(fn)(r), np.stack([fn(x) for x in r]), rtol=1e-6)
    adv, mask = jax.vmap(rl.mc_grpo_advantages)(r)
    for k in range(3):
        a, m = rl.mc_grpo_advantages(r[k])
        np.testing.assert_allclose(adv[k], a, rtol=1e-6)
        np.testing.assert_array_equal(mask[k], m)


@pytest.mark.parametrize("fn", [rl.grpo_advantages, rl.drgrpo_advantages, rl.rloo_advantages])
def test_validation_errors(fn):
    with pytest.raises(ValueError, match="group size 1"):
        fn(jnp.ones((3, 1)))
    with pytest.raises(ValueError, match="2-D"):
        fn(jnp.ones((4,)))
    with pytest.raises(ValueError, match="float"):
        fn(jnp.ones((2, 4), jnp.int32))


def test_validation_errors_eps_ddof_and_mc_group_size():
    with pytest.raises(ValueError, match="eps must be >= 0, got -1e-06"):
        rl.grpo_advantages(jnp.ones((2, 4)), eps=-1e-6)
    with pytest.raises(ValueError, match="ddof"):
        rl.grpo_advantages(jnp.ones((2, 4)), ddof=2)
    with pytest.raises(ValueError, match="odd group size G\\+1.*got 4"):
        rl.mc_grpo_advantages(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="at least 3"):
        rl.mc_grpo_advantages(jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="eps"):
        rl.mc_grpo_advantages(jnp.ones((2, 5)), eps=-0.5)
    with pytest.raises(ValueError, match="clip"):
        rl.mc_grpo_advantages(jnp.ones((2, 5)), clip=0.0)
    with pytest.raises(ValueError, match="float"):
        rl.mc_grpo_advantages(jnp.ones((2, 5), bool))
