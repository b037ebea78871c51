"""Multi-digit integer arithmetic with worked steps (column addition/subtraction, partial products).

References:
    Nye et al., "Show Your Work: Scratchpads for Intermediate Computation with Language Models",
    arXiv:2112.00114.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from bitscale.data._example import (
    Example,
    TaskBase,
    check_int_answer,
    check_test_fraction,
)

ARITHMETIC_OPS = ("+", "-", "*")
ARITHMETIC_STYLES = ("verbose", "compact")


def _digits(x: int, width: int) -> list[int]:
    """Decimal digits of x >= 0, least significant first, zero-padded to `width`."""
    return [(x // 10**i) % 10 for i in range(width)]


def _add_steps(a: int, b: int, width: int = 0, compact: bool = False) -> list[str]:
    width = max(len(str(a)), len(str(b)), width)
    lines, carry = [], 0
    for da, db in zip(_digits(a, width), _digits(b, width)):
        s = da + db + carry
        lines.append(f"{da}+{db}+{carry}={s}" if compact else
                     f"{da} + {db} + {carry} = {s}, write {s % 10} carry {s // 10}")
        carry = s // 10
    return lines


def _sub_steps(a: int, b: int, width: int = 0, compact: bool = False) -> list[str]:
    """Column subtraction of a - b for a >= b >= 0, with borrows."""
    width = max(len(str(a)), width)
    lines, borrow = [], 0
    for da, db in zip(_digits(a, width), _digits(b, width)):
        s = da - db - borrow
        nb = 1 if s < 0 else 0
        lines.append(f"{da}-{db}-{borrow}={s}" if compact else
                     f"{da} - {db} - {borrow} = {s}, write {s % 10} borrow {nb}")
        borrow = nb
    return lines


def _mul_steps(a: int, b: int, compact: bool = False) -> list[str]:
    partials = [(a * d * 10**i, d * 10**i) for i, d in enumerate(_digits(b, len(str(b))))]
    sep = "" if compact else " "
    lines = [f"{a}{sep}*{sep}{m}{sep}={sep}{p}" for p, m in partials]
    if len(partials) > 1:
        lines.append(f"{sep}+{sep}".join(str(p) for p, _ in partials) + f"{sep}={sep}{a * b}")
    return lines


def worked_steps(a: int, op: str, b: int, width: int = 0,
                 compact: bool = False) -> tuple[list[str], int]:
    """The worked step lines and the exact result of ``a op b`` for a, b >= 0.

    ``width``: column steps of ``+`` / ``-`` cover at least this many digits (leading zeros).
    ``compact``: the same steps without spaces or words (``5+8+0=13``: digit of ``a``, digit of
    ``b``, carry in, column sum; the written digit and the carry out are implied).
    """
    if op == "+":
        return _add_steps(a, b, width, compact), a + b
    if op == "-":
        if a >= b:
            return _sub_steps(a, b, width, compact), a - b
        pa, pb = f"{a:0{width}d}", f"{b:0{width}d}"
        first = f"{pa}-{pb}=-({pb}-{pa})" if compact else f"{pa} - {pb} = -({pb} - {pa})"
        return [first] + _sub_steps(b, a, width, compact), a - b
    if op == "*":
        return _mul_steps(a, b, compact), a * b
    raise ValueError(f"unsupported op {op!r}; expected one of {ARITHMETIC_OPS}")


@dataclasses.dataclass(frozen=True)
class Arithmetic(TaskBase):
    """``a op b`` with operands uniform in [0, 10**digits) and a scratchpad ending ``#### <n>``.

    Addition and subtraction are written column by column (least significant first) with carries or
    borrows; multiplication as partial products of each digit of ``b`` and their sum.

    ``pad=True`` writes both operands zero-padded to ``digits`` (``Compute 07 + 42.``) and
    always works ``digits`` columns for ``+`` / ``-``, so every digit sits at a fixed position,
    which small models learn much faster (Lee et al., "Teaching Arithmetic to Small
    Transformers", arXiv:2307.03381). The answer after ``####`` is the plain integer either way.
    """

    digits: int = 3
    ops: tuple[str, ...] = ARITHMETIC_OPS
    test_fraction: float = 0.2
    pad: bool = False
    style: str = "verbose"
    name: ClassVar[str] = "arithmetic"

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 12:
            raise ValueError(f"Arithmetic: digits must be in [1, 12], got {self.digits}")
        if not self.ops or any(op not in ARITHMETIC_OPS for op in self.ops):
            raise ValueError(f"Arithmetic: ops must be a non-empty subset of {ARITHMETIC_OPS}, "
                             f"got {self.ops}")
        check_test_fraction("Arithmetic", self.test_fraction)
        if self.style not in ARITHMETIC_STYLES:
            raise ValueError(f"Arithmetic: style must be one of {ARITHMETIC_STYLES}, got "
                             f"{self.style!r}")

    def _sample(self, rng: np.random.Generator) -> tuple[str, Example]:
        hi = 10**self.digits
        a, b = int(rng.integers(0, hi)), int(rng.integers(0, hi))
        op = self.ops[int(rng.integers(0, len(self.ops)))]
        width = self.digits if self.pad else 0
        steps, result = worked_steps(a, op, b, width, self.style == "compact")
        problem = f"{a:0{width}d} {op} {b:0{width}d}"
        target = "\n".join(steps + [f"#### {result}"])
        return problem, Example(prompt=f"Compute {problem}.\n", target=target, answer=str(result))

    def check(self, completion: str, example: Example) -> bool:
        """Exact integer match of the text after the last ``####``."""
        return check_int_answer(completion, example)
