"""Verifiers: perfect (a task's exact checker), imperfect (completeness/soundness noise), and a
realistic weak verifier that checks only part of the answer (its residue modulo m).

A verifier is used two ways: on completion strings, ``verify(completions, examples[, key])`` gives
acceptance bool [P, N]; on a correctness matrix bool [P, N], ``accept(correct[, key])`` gives the
acceptance of a verifier whose errors depend only on correctness (a jnp function, works under jit).

References:
    Stroebl, Kapoor & Narayanan, "Inference Scaling fLaws: The Limits of LLM Resampling with
    Imperfect Verifiers", arXiv:2411.17501 (completeness/soundness; weak unit tests).
    Cobbe et al., arXiv:2110.14168 (the ``#### <answer>`` convention).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.data import Example, Task, extract_answer
from bitscale.data import parse_int

__all__ = ["ImperfectVerifier", "PerfectVerifier", "ResidueVerifier", "answer_codes",
           "final_answers", "task_correctness"]


def _check_grid(completions: Sequence[Sequence[str]], examples: Sequence[Example] | None,
                fn: str) -> tuple[int, int]:
    """(P, N) of a rectangular, non-empty [P][N] grid of completions (and P examples)."""
    if isinstance(completions, str) or len(completions) == 0:
        raise ValueError(f"{fn}: completions must be a non-empty [problems][samples] list of "
                         f"strings")
    rows = [len(row) if not isinstance(row, str) else -1 for row in completions]
    n = rows[0]
    if n < 1 or any(r != n for r in rows):
        raise ValueError(f"{fn}: every problem needs the same number N >= 1 of completions "
                         f"(a list of strings per problem), got row lengths {sorted(set(rows))}")
    if examples is not None and len(examples) != len(completions):
        raise ValueError(f"{fn}: got {len(completions)} rows of completions but {len(examples)} "
                         f"examples")
    return len(completions), n


def task_correctness(task: Task, completions: Sequence[Sequence[str]],
                     examples: Sequence[Example]) -> np.ndarray:
    """``task.check`` of every completion: bool [P, N] (host)."""
    p, n = _check_grid(completions, examples, "task_correctness")
    return np.array([[bool(task.check(s, ex)) for s in row]
                     for row, ex in zip(completions, examples)], dtype=bool).reshape(p, n)


def final_answers(completions: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """The text after the last ``####`` of every completion (None where there is none)."""
    _check_grid(completions, None, "final_answers")
    return [[extract_answer(s) for s in row] for row in completions]


def _default_normalize(answer: str) -> Hashable:
    value = parse_int(answer)
    return value if value is not None else answer


def answer_codes(answers: Sequence[Sequence[str | None]],
                 normalize: Callable[[str], Hashable] | None = None) -> np.ndarray:
    """Integer codes int32 [P, N] for voting: equal (normalized) answers share a code.

    Codes count up from 0 in order of first appearance within each problem; a missing answer
    (None) gets -1, which the vote functions treat as invalid. The default `normalize` maps an
    integer string to its int (so ``"042"`` and ``"42"`` agree) and leaves other text as is.
    """
    _check_grid(answers, None, "answer_codes")
    norm = normalize or _default_normalize
    out = np.full((len(answers), len(answers[0])), -1, np.int32)
    for i, row in enumerate(answers):
        seen: dict[Hashable, int] = {}
        for j, a in enumerate(row):
            if a is not None:
                out[i, j] = seen.setdefault(norm(a), len(seen))
    return out


@dataclasses.dataclass(frozen=True)
class PerfectVerifier:
    """Accepts exactly the correct completions (``task.check``); completeness = soundness = 1."""

    task: Task

    def verify(self, completions: Sequence[Sequence[str]], examples: Sequence[Example],
               key: jax.Array | None = None) -> np.ndarray:
        del key
        return task_correctness(self.task, completions, examples)

    def accept(self, correct: Any, key: jax.Array | None = None) -> jax.Array:
        del key
        return jnp.asarray(correct, bool)


@dataclasses.dataclass(frozen=True)
class ImperfectVerifier:
    """Accepts a correct answer with probability `completeness` and a wrong one with probability
    ``1 - soundness`` (the false-positive rate), independently per sample.

    Deterministic given the key: one uniform ``u`` per sample, accept iff ``u < completeness``
    (correct) or ``u < 1 - soundness`` (wrong). `task` is needed only for `verify` on strings.

    References:
        Stroebl et al., arXiv:2411.17501.
    """

    completeness: float = 1.0
    soundness: float = 1.0
    task: Task | None = None

    def __post_init__(self) -> None:
        for name in ("completeness", "soundness"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
                raise ValueError(f"ImperfectVerifier: {name} must be a float in [0, 1], got "
                                 f"{value!r}")
            object.__setattr__(self, name, float(value))  # a plain float: hashable, jit-static

    @property
    def false_positive_rate(self) -> float:
        return 1.0 - self.soundness

    def accept(self, correct: Any, key: jax.Array) -> jax.Array:
        """Acceptance bool, same shape as `correct` (jnp; works under jit)."""
        correct = jnp.asarray(correct, bool)
        u = jax.random.uniform(key, correct.shape)
        return jnp.where(correct, u < self.completeness, u < self.false_positive_rate)

    def verify(self, completions: Sequence[Sequence[str]], examples: Sequence[Example],
               key: jax.Array) -> np.ndarray:
        """Acceptance bool [P, N] of completion strings (correctness from ``task.check``)."""
        if self.task is None:
            raise ValueError("ImperfectVerifier.verify: needs a task to check completions; "
                             "construct with task=...")
        correct = task_correctness(self.task, completions, examples)
        return np.asarray(self.accept(correct, key))


@dataclasses.dataclass(frozen=True)
class ResidueVerifier:
    """A weak verifier for integer answers: accepts iff the final answer is congruent to the
    reference modulo `modulus` (``modulus=10**d``: the last d digits agree; ``2``: the parity).

    The analogue of unit tests that cover only part of the behaviour. Completeness is 1 (a correct
    answer always passes; an unparsable one never does). False positives: a wrong answer passes
    iff its error is a multiple of `modulus`. For errors spread uniformly over residues the
    false-positive rate is ``1/modulus``; for structured errors it is far higher: a dropped carry
    or a slip in a high digit of an arithmetic result changes the answer by a multiple of a power
    of ten, which a last-digit check (``modulus=10``) never catches.

    References:
        Stroebl et al., arXiv:2411.17501 (weak unit tests and false positives).
    """

    modulus: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.modulus, int) or self.modulus < 1:
            raise ValueError(f"ResidueVerifier: modulus must be an int >= 1, got "
                             f"{self.modulus!r}")

    def check(self, completion: str, example: Example) -> bool:
        """True iff the integer after the last ``####`` is congruent to ``example.answer``."""
        ref = parse_int(example.answer)
        if ref is None:
            raise ValueError(f"ResidueVerifier: needs an integer reference answer, got "
                             f"{example.answer!r}")
        got = parse_int(extract_answer(completion))
        return got is not None and (got - ref) % self.modulus == 0

    def verify(self, completions: Sequence[Sequence[str]], examples: Sequence[Example],
               key: jax.Array | None = None) -> np.ndarray:
        """Acceptance bool [P, N] (deterministic; `key` is ignored)."""
        del key
        return task_correctness(self, completions, examples)
