"""Selecting one of N samples per problem (verifier, majority vote, log-prob-weighted vote, oracle),
and accuracy-vs-k curves for any selector. All jnp; every selector works under `jit` and `vmap`.

Arrays are [..., N] (usually [P, N]): answers are int codes (see `answer_codes`; a negative code
means "no answer"), correct and accepted are bool, scores and log-probs float. A selector returns a
`Selection`: the chosen sample's index (-1 when it abstains: nothing valid or nothing accepted) and
whether that sample is correct (False on abstention).

References:
    Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in Language Models"
    (majority vote), arXiv:2203.11171.
    Brown et al., arXiv:2407.21787 (coverage vs majority vote and reward-model selection).
    Stroebl et al., arXiv:2411.17501 (resample until a verifier accepts).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bitscale.tts._checks import check_ks

__all__ = ["Selection", "accuracy_curve", "logprob_vote", "majority_vote", "oracle_select",
           "select_best_score", "select_first_accepted", "weighted_vote"]


class Selection(NamedTuple):
    """The chosen sample per problem: ``index`` int32 [...] (-1: abstain); ``correct`` bool."""

    index: jax.Array
    correct: jax.Array


def _check_same_shape(fn: str, **arrays: Any) -> tuple[int, ...]:
    shapes = {name: tuple(jnp.shape(a)) for name, a in arrays.items()}
    first = next(iter(shapes.values()))
    if any(s != first for s in shapes.values()):
        raise ValueError(f"{fn}: arrays must have the same shape [..., N], got {shapes}")
    if len(first) < 1 or first[-1] < 1 or any(d < 1 for d in first):
        raise ValueError(f"{fn}: arrays must be non-empty with a sample axis N >= 1, got shape "
                         f"{first}")
    return first


def _gather(correct: jax.Array, index: jax.Array) -> Selection:
    picked = jnp.take_along_axis(correct, jnp.maximum(index, 0)[..., None], axis=-1)[..., 0]
    return Selection(index.astype(jnp.int32), (index >= 0) & picked)


def oracle_select(correct: Any) -> Selection:
    """The first correct sample (coverage: correct iff any sample is)."""
    correct = jnp.asarray(correct, bool)
    _check_same_shape("oracle_select", correct=correct)
    return select_first_accepted(correct, correct)


def select_first_accepted(accepted: Any, correct: Any) -> Selection:
    """The first accepted sample, -1 if none: "resample until the verifier accepts"."""
    accepted, correct = jnp.asarray(accepted, bool), jnp.asarray(correct, bool)
    _check_same_shape("select_first_accepted", accepted=accepted, correct=correct)
    return _first_accepted(accepted, correct)


@jax.jit
def _first_accepted(accepted: jax.Array, correct: jax.Array) -> Selection:
    first = jnp.argmax(accepted, axis=-1)
    return _gather(correct, jnp.where(jnp.any(accepted, axis=-1), first, -1))


def select_best_score(scores: Any, correct: Any, valid: Any = None) -> Selection:
    """The highest-scoring valid sample (ties: the earliest); -1 if none is valid (e.g. a reward
    model's or verifier's scores; `valid` defaults to all)."""
    scores, correct = jnp.asarray(scores), jnp.asarray(correct, bool)
    valid = jnp.ones(correct.shape, bool) if valid is None else jnp.asarray(valid, bool)
    _check_same_shape("select_best_score", scores=scores, correct=correct, valid=valid)
    return _best_score(scores, correct, valid)


@jax.jit
def _best_score(scores: jax.Array, correct: jax.Array, valid: jax.Array) -> Selection:
    best = jnp.argmax(jnp.where(valid, scores, -jnp.inf), axis=-1)
    return _gather(correct, jnp.where(jnp.any(valid, axis=-1), best, -1))


def _vote_row(answers: jax.Array, weights: jax.Array, valid: jax.Array) -> jax.Array:
    """Index of the first sample of the heaviest answer in one row [N]; -1 if none is valid."""
    n = answers.shape[0]
    order = jnp.argsort(answers, stable=True)
    a, v = answers[order], valid[order]
    w = jnp.where(v, weights[order], 0)
    starts = jnp.concatenate([jnp.ones((1,), bool), a[1:] != a[:-1]])
    run = jnp.cumsum(starts) - 1  # run id of each sorted entry, in [0, n)
    run_weight = jax.ops.segment_sum(w, run, num_segments=n)
    run_valid = jax.ops.segment_max(v.astype(jnp.int32), run, num_segments=n) > 0
    run_first = jax.ops.segment_min(jnp.where(v, order, n), run, num_segments=n)
    score = jnp.where(run_valid, run_weight, -jnp.inf)
    tied = run_valid & (score == jnp.max(score))
    first = jnp.min(jnp.where(tied, run_first, n))
    return jnp.where(first < n, first, -1)


def weighted_vote(answers: Any, correct: Any, weights: Any, valid: Any = None) -> Selection:
    """The answer with the largest total weight over valid samples; returns its first sample.

    Ties (equal totals) go to the answer that appears earliest. Samples with a negative answer code
    or ``valid=False`` (e.g. rejected by a verifier) do not vote; -1 if no sample votes.
    """
    answers = jnp.asarray(answers)
    if not jnp.issubdtype(answers.dtype, jnp.integer):
        raise ValueError(f"weighted_vote: answers must be integer codes (see answer_codes), got "
                         f"dtype {answers.dtype}")
    correct, weights = jnp.asarray(correct, bool), jnp.asarray(weights)
    valid = answers >= 0 if valid is None else (answers >= 0) & jnp.asarray(valid, bool)
    _check_same_shape("weighted_vote", answers=answers, correct=correct, weights=weights,
                      valid=valid)
    return _vote(answers, correct, weights.astype(jnp.result_type(float)), valid)


@jax.jit
def _vote(answers: jax.Array, correct: jax.Array, weights: jax.Array,
          valid: jax.Array) -> Selection:
    shape, n = answers.shape, answers.shape[-1]
    rows = jax.vmap(_vote_row)(answers.reshape(-1, n), weights.reshape(-1, n),
                               valid.reshape(-1, n))
    return _gather(correct, rows.reshape(shape[:-1]))


def majority_vote(answers: Any, correct: Any, valid: Any = None) -> Selection:
    """The most frequent answer (self-consistency); ties go to the earliest-appearing answer.

    References:
        Wang et al., arXiv:2203.11171.
    """
    answers = jnp.asarray(answers)
    return weighted_vote(answers, correct, jnp.ones(answers.shape, jnp.int32), valid)


def logprob_vote(answers: Any, correct: Any, log_probs: Any, valid: Any = None) -> Selection:
    """Vote weighted by sequence probability: answer score ``sum exp(log_prob)`` over its samples.

    Computed as ``exp(log_prob - max)`` over the valid samples of a problem (a softmax up to a
    constant, so the choice is the same and nothing overflows). Pass length-normalised log-probs
    for a per-token geometric-mean weighting.
    """
    lp = jnp.asarray(log_probs)
    answers = jnp.asarray(answers)
    ok = answers >= 0 if valid is None else (answers >= 0) & jnp.asarray(valid, bool)
    if lp.shape != ok.shape:
        raise ValueError(f"logprob_vote: log_probs must have the shape of answers, got "
                         f"{lp.shape} and {ok.shape}")
    return weighted_vote(answers, correct, _relative_probs(lp, ok), ok)


@jax.jit
def _relative_probs(lp: jax.Array, ok: jax.Array) -> jax.Array:
    """exp(lp - max over valid samples of the row), 0 where not valid."""
    top = jnp.max(jnp.where(ok, lp, -jnp.inf), axis=-1, keepdims=True)
    return jnp.where(ok, jnp.exp(lp - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)


def accuracy_curve(select: Callable[..., Selection], arrays: Sequence[Any], ks: Any,
                   key: jax.Array | None = None, *, num_permutations: int = 16) -> jax.Array:
    """Accuracy of `select` using k of the N samples, for each k in `ks`: float [K].

    `arrays` are the selector's positional arguments, all [P, N] (e.g. ``(answers, correct)`` for
    `majority_vote`); `select` sees them cut to [P*R, k] and must return a `Selection`. With a key,
    each of ``R = num_permutations`` rounds shuffles every problem's samples independently and takes
    the first k, so the curve averages over random k-subsets (smooth, and for `oracle_select` an
    unbiased estimate of pass@k). With ``key=None`` it uses the first k samples as given (R = 1).
    """
    fn = "accuracy_curve"
    arrays = [jnp.asarray(a) for a in arrays]
    if not arrays:
        raise ValueError(f"{fn}: arrays must hold at least one [P, N] array")
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) != 1 or len(arrays[0].shape) != 2 or min(arrays[0].shape) < 1:
        raise ValueError(f"{fn}: arrays must all have one non-empty [P, N] shape, got "
                         f"{[tuple(a.shape) for a in arrays]}")
    ks = check_ks(ks, arrays[0].shape[1], fn=fn)
    if key is not None and (not isinstance(num_permutations, int) or num_permutations < 1):
        raise ValueError(f"{fn}: num_permutations must be an int >= 1, got {num_permutations!r}")
    return _curve(select, tuple(arrays), ks, key, num_permutations if key is not None else 1)


@functools.partial(jax.jit, static_argnums=(0, 2, 4))
def _curve(select: Callable[..., Selection], arrays: tuple[jax.Array, ...], ks: tuple[int, ...],
           key: jax.Array | None, num_permutations: int) -> jax.Array:
    p, n = arrays[0].shape
    if key is not None:
        # a uniform random permutation per row: argsort of i.i.d. 32-bit keys (ties, probability
        # ~N^2 / 2^33 per row, keep the original order)
        perm = jnp.argsort(jax.random.bits(key, (num_permutations * p, n)), axis=-1)  # [R*P, N]
        arrays = [jnp.take_along_axis(jnp.tile(a, (num_permutations, 1)), perm, axis=-1)
                  for a in arrays]
    out = []
    for k in ks:
        sel = select(*(a[:, :k] for a in arrays))
        out.append(jnp.mean(sel.correct.astype(jnp.result_type(float))))
    return jnp.stack(out)
