"""The `Example` record, answer extraction and the hash-based train/test split shared by all tasks.

References:
    Cobbe et al., "Training Verifiers to Solve Math Word Problems" (GSM8K, the ``#### <answer>``
    convention), arXiv:2110.14168.
"""

from __future__ import annotations

import abc

import dataclasses
import hashlib
import re
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

SPLITS = ("train", "test")
ANSWER_MARK = "####"
_INT_RE = re.compile(r"^-?\d+$")
_MAX_TRIES = 100_000


@dataclasses.dataclass(frozen=True)
class Example:
    """One verifiable problem.

    Attributes:
        prompt: the text the model is conditioned on (ends with a newline for built-in tasks).
        target: the full reference completion (worked steps, then ``#### <answer>``).
        answer: the reference final answer, as text.
        numbers: the operands a task needs for checking (Countdown's given numbers); else empty.
    """

    prompt: str
    target: str
    answer: str
    numbers: tuple[int, ...] = ()


@runtime_checkable
class Task(Protocol):
    """A built-in verifiable task: deterministic generation and an exact checker."""

    name: str

    def example(self, split: str, seed: int, index: int) -> Example: ...

    def generate(self, split: str, n: int, seed: int) -> list[Example]: ...

    def check(self, completion: str, example: Example) -> bool: ...


def extract_answer(completion: str) -> str | None:
    """The stripped text after the last ``####`` of `completion`, or None if there is none."""
    pos = completion.rfind(ANSWER_MARK)
    if pos < 0:
        return None
    return completion[pos + len(ANSWER_MARK):].strip()


def parse_int(text: str | None) -> int | None:
    """`text` as an integer if it is exactly an optionally signed run of digits, else None."""
    if text is None or not _INT_RE.match(text) or len(text) > 4000:
        return None
    return int(text)


def check_int_answer(completion: str, example: Example) -> bool:
    """True iff the integer after the last ``####`` equals ``example.answer`` exactly."""
    got = parse_int(extract_answer(completion))
    return got is not None and got == int(example.answer)


def split_of(task_name: str, canonical: str, test_fraction: float) -> str:
    """The split ("train" or "test") a canonical problem belongs to, from a SHA-256 hash.

    Train and test are disjoint by construction: a problem is only ever generated for its own split.
    """
    digest = hashlib.sha256(f"{task_name}|{canonical}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2.0**64
    return "test" if u < test_fraction else "train"


def _check_split_args(split: str, seed: int, index: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")


class TaskBase(abc.ABC):
    """Mixin: `example`/`generate` from a task's ``_sample(rng) -> (canonical, Example)``.

    Example ``index`` of (split, seed) is drawn from its own generator seeded by (seed, split, index),
    rejecting problems whose hash puts them in the other split. Generation is therefore O(1) per
    index, so a stream can resume at any position, and ``generate(split, n, seed)`` is a prefix of
    ``generate(split, n + 1, seed)``.
    """

    name: ClassVar[str] = "task"
    test_fraction: float

    @abc.abstractmethod
    def _sample(self, rng: np.random.Generator) -> tuple[str, Example]:
        """One random problem: (canonical string that decides the split, the example)."""

    def example(self, split: str, seed: int, index: int) -> Example:
        """The `index`-th example of `split` for `seed` (deterministic)."""
        _check_split_args(split, seed, index)
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        for _ in range(_MAX_TRIES):
            canonical, ex = self._sample(rng)
            if split_of(self.name, canonical, self.test_fraction) == split:
                return ex
        raise RuntimeError(f"{self.name}: no {split} problem found in {_MAX_TRIES} tries; "
                           f"check test_fraction={self.test_fraction}")

    def generate(self, split: str, n: int, seed: int) -> list[Example]:
        """`n` examples of `split`, deterministic in (split, n, seed)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return [self.example(split, seed, i) for i in range(n)]


def check_test_fraction(name: str, test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
