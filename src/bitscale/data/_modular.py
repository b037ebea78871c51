"""Modular arithmetic over Z_p with each intermediate result reduced as a worked step.

References:
    Power et al., "Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets",
    arXiv:2201.02177.
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

MODULAR_OPS = ("+", "-", "*")
_PREC = {"+": 1, "-": 1, "*": 2}


def _apply(x: int, op: str, y: int) -> int:
    return x + y if op == "+" else x - y if op == "-" else x * y


@dataclasses.dataclass(frozen=True)
class ModularArithmetic(TaskBase):
    """``(x0 op1 x1 op2 x2 ...) mod p``, evaluated left to right, operands uniform in [0, p).

    Parentheses are written where left-to-right order differs from the usual precedence. Each step
    line reads ``x op y = v = q * p + r, so r``.
    """

    modulus: int = 97
    ops: tuple[str, ...] = MODULAR_OPS
    n_operands: int = 3
    test_fraction: float = 0.2
    name: ClassVar[str] = "modular"

    def __post_init__(self) -> None:
        if self.modulus < 2:
            raise ValueError(f"ModularArithmetic: modulus must be >= 2, got {self.modulus}")
        if not self.ops or any(op not in MODULAR_OPS for op in self.ops):
            raise ValueError(f"ModularArithmetic: ops must be a non-empty subset of {MODULAR_OPS}, "
                             f"got {self.ops}")
        if self.n_operands < 2:
            raise ValueError(f"ModularArithmetic: n_operands must be >= 2, got {self.n_operands}")
        check_test_fraction("ModularArithmetic", self.test_fraction)

    def _sample(self, rng: np.random.Generator) -> tuple[str, Example]:
        p = self.modulus
        xs = [int(v) for v in rng.integers(0, p, size=self.n_operands)]
        ops = [self.ops[int(i)] for i in rng.integers(0, len(self.ops), size=self.n_operands - 1)]
        text, prev_prec = str(xs[0]), 3
        acc, steps = xs[0] % p, []
        for op, x in zip(ops, xs[1:]):
            if prev_prec < _PREC[op]:
                text = f"({text})"
            text, prev_prec = f"{text} {op} {x}", _PREC[op]
            v = _apply(acc, op, x)
            q, r = divmod(v, p)
            steps.append(f"{acc} {op} {x} = {v} = {q} * {p} + {r}, so {r}")
            acc = r
        problem = f"({text}) mod {p}"
        target = "\n".join(steps + [f"#### {acc}"])
        return problem, Example(prompt=f"Compute {problem}.\n", target=target, answer=str(acc))

    def check(self, completion: str, example: Example) -> bool:
        """Exact integer match of the text after the last ``####``."""
        return check_int_answer(completion, example)
