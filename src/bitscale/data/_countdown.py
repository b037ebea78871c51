"""Countdown: combine the given numbers with + - * / (each exactly once) to reach a target.

References:
    Gandhi et al., "Stream of Search (SoS): Learning to Search in Language", arXiv:2404.03683;
    Pan et al., "TinyZero" (https://github.com/Jiayi-Pan/TinyZero).
"""

from __future__ import annotations

import collections
import dataclasses
from fractions import Fraction
from typing import ClassVar

import numpy as np

from bitscale.data._example import (
    Example,
    TaskBase,
    check_test_fraction,
    extract_answer,
)
from bitscale.data._expr import parse_expression

COUNTDOWN_OPS = ("+", "-", "*", "/")
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}

# An expression tree: an int leaf or (op, left, right).
Node = int | tuple


def render(node: Node) -> str:
    """`node` as text with the minimal parentheses that keep its value."""
    if isinstance(node, int):
        return str(node)
    op, left, right = node
    ls, rs = render(left), render(right)
    if not isinstance(left, int) and _PREC[left[0]] < _PREC[op]:
        ls = f"({ls})"
    if not isinstance(right, int) and (_PREC[right[0]] < _PREC[op]
                                       or (_PREC[right[0]] == _PREC[op] and op in "-/")):
        rs = f"({rs})"
    return f"{ls} {op} {rs}"


def _combine(x: Fraction, op: str, y: Fraction) -> Fraction | None:
    """x op y if it stays a positive integer, else None."""
    if op == "+":
        return x + y
    if op == "-":
        return x - y if x > y else None
    if op == "*":
        return x * y
    return x / y if y != 0 and x % y == 0 else None


@dataclasses.dataclass(frozen=True)
class Countdown(TaskBase):
    """Reach a target from `n_numbers` numbers in [1, max_number] (duplicates allowed).

    The target is built from a random expression tree over all numbers whose intermediate values are
    positive integers, so every problem is solvable. The reference completion lists each combination
    (``a op b = c``) and ends with ``#### <expression>``.
    """

    n_numbers: int = 4
    max_number: int = 50
    min_target: int = 10
    max_target: int = 500
    ops: tuple[str, ...] = COUNTDOWN_OPS
    test_fraction: float = 0.2
    name: ClassVar[str] = "countdown"

    def __post_init__(self) -> None:
        if self.n_numbers < 2 or self.max_number < 1:
            raise ValueError(f"Countdown: need n_numbers >= 2 and max_number >= 1, got "
                             f"{self.n_numbers}, {self.max_number}")
        if not 0 <= self.min_target <= self.max_target:
            raise ValueError(f"Countdown: need 0 <= min_target <= max_target, got "
                             f"{self.min_target}, {self.max_target}")
        if not self.ops or any(op not in COUNTDOWN_OPS for op in self.ops):
            raise ValueError(f"Countdown: ops must be a non-empty subset of {COUNTDOWN_OPS}, "
                             f"got {self.ops}")
        check_test_fraction("Countdown", self.test_fraction)

    def _tree(self, rng: np.random.Generator, numbers: list[int]
              ) -> tuple[Node, Fraction, list[str]] | None:
        items: list[tuple[Node, Fraction]] = [(n, Fraction(n)) for n in numbers]
        steps = []
        while len(items) > 1:
            i, j = (int(k) for k in rng.choice(len(items), size=2, replace=False))
            (ln, lv), (rn, rv) = items[i], items[j]
            valid = [(op, v) for op in self.ops if (v := _combine(lv, op, rv)) is not None]
            if not valid:
                return None
            op, v = valid[int(rng.integers(0, len(valid)))]
            steps.append(f"{lv} {op} {rv} = {v}")
            items = [it for k, it in enumerate(items) if k not in (i, j)] + [((op, ln, rn), v)]
        return items[0][0], items[0][1], steps

    def _sample(self, rng: np.random.Generator) -> tuple[str, Example]:
        while True:
            numbers = [int(v) for v in rng.integers(1, self.max_number + 1, size=self.n_numbers)]
            built = self._tree(rng, numbers)
            if built is None:
                continue
            tree, value, steps = built
            if value.denominator == 1 and self.min_target <= value <= self.max_target:
                break
        goal = int(value)
        listed = ", ".join(map(str, numbers))
        prompt = (f"Use the numbers {listed} to make {goal}. Use each number exactly once with "
                  f"+ - * / and parentheses.\n")
        target = "\n".join(steps + [f"#### {render(tree)}"])
        canonical = f"{sorted(numbers)}->{goal}"
        return canonical, Example(prompt=prompt, target=target, answer=str(goal),
                                  numbers=tuple(numbers))

    def check(self, completion: str, example: Example) -> bool:
        """True iff the expression after the last ``####`` uses exactly ``example.numbers`` (as a
        multiset) and equals ``example.answer`` exactly. Never evaluates code."""
        return check_countdown(completion, example.numbers, int(example.answer))


def check_countdown(completion: str, numbers: tuple[int, ...], goal: int) -> bool:
    """Countdown checker on raw values; see `Countdown.check`."""
    expr = extract_answer(completion)
    if not expr:
        return False
    try:
        value, literals = parse_expression(expr)
    except ValueError:
        return False
    return (collections.Counter(literals) == collections.Counter(numbers)
            and value == Fraction(goal))
