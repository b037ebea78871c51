"""Selection: majority / weighted / log-prob vote against a pure-Python reference, verifier and
oracle selection, accuracy-vs-k curves (oracle over random subsets = pass@k)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale.tts import (
    Selection,
    accuracy_curve,
    coverage_curve,
    logprob_vote,
    majority_vote,
    oracle_select,
    select_best_score,
    select_first_accepted,
    weighted_vote,
)


def _ref_vote(answers, weights, valid) -> int:
    """Pure Python: heaviest answer among valid samples, ties to the earliest; -1 if none."""
    total: dict[int, float] = {}
    first: dict[int, int] = {}
    for j, (a, w, v) in enumerate(zip(answers, weights, valid)):
        if v and a >= 0:
            total[a] = total.get(a, 0) + w
            first.setdefault(a, j)
    if not total:
        return -1
    best = max(total.values())
    return min(first[a] for a in total if total[a] == best)


def test_majority_vote_hand_cases():
    answers = jnp.array([[3, 1, 1, 3, 2],     # tie 3 vs 1: 3 appears first
                         [-1, -1, -1, -1, -1],  # no answers: abstain
                         [0, 1, 2, 2, 5],
                         [-1, 4, 4, -1, 4]])
    correct = jnp.array([[0, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0], [1, 0, 0, 1, 0]], bool)
    sel = majority_vote(answers, correct)
    assert isinstance(sel, Selection)
    np.testing.assert_array_equal(sel.index, [0, -1, 2, 1])
    np.testing.assert_array_equal(sel.correct, [False, False, True, False])
    # verifier-filtered vote: only accepted samples vote
    accepted = jnp.array([[0, 1, 0, 1, 1], [1] * 5, [1, 0, 0, 0, 0], [0] * 5], bool)
    sel = majority_vote(answers, correct, accepted)
    np.testing.assert_array_equal(sel.index, [1, -1, 0, -1])
    np.testing.assert_array_equal(sel.correct, [True, False, False, False])


def test_votes_match_python_reference():
    rng = np.random.default_rng(0)
    answers = rng.integers(-1, 4, (200, 9)).astype(np.int32)
    correct = rng.random((200, 9)) < 0.5
    valid = rng.random((200, 9)) < 0.8
    weights = rng.random((200, 9)).astype(np.float32)
    for sel, w, v in [(majority_vote(answers, correct), np.ones((200, 9)), np.ones((200, 9))),
                      (majority_vote(answers, correct, valid), np.ones((200, 9)), valid),
                      (weighted_vote(answers, correct, weights), weights, np.ones((200, 9)))]:
        ref = [_ref_vote(a, ww, vv) for a, ww, vv in zip(answers, w, v)]
        np.testing.assert_array_equal(sel.index, ref)
        idx = np.asarray(sel.index)
        exp_correct = np.where(idx >= 0, correct[np.arange(200), np.maximum(idx, 0)], False)
        np.testing.assert_array_equal(sel.correct, exp_correct)
    jitted = jax.jit(majority_vote)(answers, correct)
    np.testing.assert_array_equal(jitted.index, majority_vote(answers, correct).index)
    batched = jax.vmap(majority_vote)(answers.reshape(20, 10, 9), correct.reshape(20, 10, 9))
    np.testing.assert_array_equal(batched.index.reshape(-1), majority_vote(answers, correct).index)


def test_logprob_vote():
    answers = jnp.array([[0, 0, 0, 1], [0, 1, 1, 2]])
    correct = jnp.array([[0, 0, 0, 1], [1, 0, 0, 0]], bool)
    # one confident sample outweighs three unlikely ones; huge magnitudes must not overflow
    lp = jnp.array([[-3.0, -3.0, -3.0, -0.5], [-1e4, -1e4 - 0.5, -1e4 - 0.5, -1e4 - 5.0]])
    sel = logprob_vote(answers, correct, lp)
    np.testing.assert_array_equal(sel.index, [3, 1])
    np.testing.assert_array_equal(sel.correct, [True, False])
    # equal log-probs: the same as majority vote
    eq = logprob_vote(answers, correct, jnp.full(answers.shape, -7.0))
    np.testing.assert_array_equal(eq.index, majority_vote(answers, correct).index)
    only_valid = logprob_vote(answers, correct, lp, jnp.array([[1, 1, 1, 0], [0, 0, 0, 0]], bool))
    np.testing.assert_array_equal(only_valid.index, [0, -1])


def test_verifier_and_oracle_selection():
    accepted = jnp.array([[0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], bool)
    correct = jnp.array([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], bool)
    first = select_first_accepted(accepted, correct)
    np.testing.assert_array_equal(first.index, [2, -1, 0])
    np.testing.assert_array_equal(first.correct, [True, False, False])
    scores = jnp.array([[0.1, 0.9, 0.9, 0.2], [0.0, 0.0, 0.0, 0.0], [0.3, 0.1, 0.2, 0.8]])
    best = select_best_score(scores, correct)
    np.testing.assert_array_equal(best.index, [1, 0, 3])  # ties: earliest
    np.testing.assert_array_equal(best.correct, [True, True, True])
    gated = select_best_score(scores, correct, accepted)
    np.testing.assert_array_equal(gated.index, [2, -1, 0])
    orc = oracle_select(correct)
    np.testing.assert_array_equal(orc.index, [1, 0, 3])
    assert bool(jnp.all(orc.correct))


def test_accuracy_curves(key):
    rng = np.random.default_rng(1)
    p, n = 60, 16
    correct = rng.random((p, n)) < rng.random((p, 1)) * 0.4
    answers = np.where(correct, 0, rng.integers(1, 4, (p, n))).astype(np.int32)
    ks = [1, 4, 16]
    # oracle over random k-subsets is an unbiased estimate of pass@k (coverage)
    oracle = accuracy_curve(oracle_select, (correct,), ks, key, num_permutations=64)
    np.testing.assert_allclose(oracle, coverage_curve(correct, ks), atol=0.02)
    assert float(oracle[-1]) == pytest.approx(float(np.any(correct, 1).mean()))
    # same key and rounds: the same subsets, and nothing beats the oracle on them
    maj = accuracy_curve(majority_vote, (answers, correct), ks, key, num_permutations=64)
    assert np.all(np.asarray(maj) <= np.asarray(oracle) + 1e-6)
    assert float(maj[0]) == pytest.approx(float(oracle[0]), abs=1e-6)  # k = 1: no choice
    np.testing.assert_array_equal(
        maj, accuracy_curve(majority_vote, (answers, correct), ks, key, num_permutations=64))
    # prefixes (no key): the first k samples as given
    prefix = accuracy_curve(majority_vote, (answers, correct), ks)
    assert float(prefix[0]) == pytest.approx(correct[:, 0].mean())
    full = majority_vote(answers, correct)
    assert float(prefix[-1]) == pytest.approx(float(jnp.mean(full.correct)))


def test_selection_bad_input():
    a = jnp.zeros((3, 4), jnp.int32)
    c = jnp.zeros((3, 4), bool)
    with pytest.raises(ValueError, match="same shape"):
        majority_vote(a, c[:, :3])
    with pytest.raises(ValueError, match="integer codes"):
        majority_vote(a.astype(jnp.float32), c)
    with pytest.raises(ValueError, match="N >= 1"):
        select_first_accepted(jnp.zeros((3, 0), bool), jnp.zeros((3, 0), bool))
    with pytest.raises(ValueError, match="shape of answers"):
        logprob_vote(a, c, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="1 <= k <= n=4"):
        accuracy_curve(oracle_select, (c,), [5])
    with pytest.raises(ValueError, match=r"one non-empty \[P, N\] shape"):
        accuracy_curve(majority_vote, (a, c[:, :2]), [1])
    with pytest.raises(ValueError, match="num_permutations"):
        accuracy_curve(oracle_select, (c,), [1], jax.random.key(0), num_permutations=0)
