"""Verifiable rewards for groups of completions: binary (a task's exact checker) and graded.

Rewards are computed on the host from text (completions are decoded strings) and returned as a
float32 numpy array [P, G]: row p holds the rewards of the G completions of prompt p. Pass it
through ``jnp.asarray`` to the advantage functions.

Truncation: a completion cut off by the generation budget (it never emitted EOS) gets
``truncation_reward`` (default 0.0; e.g. -1.0 for a penalty) *whatever its text*: a truncated text
may happen to contain a correct ``#### <answer>`` line mid-generation, and crediting it would reward
rambling past the answer. Set ``truncation_reward=None`` to score truncated completions like any
other.

References:
  Cobbe et al., "Training Verifiers to Solve Math Word Problems" (``#### <answer>``),
  arXiv:2110.14168.
  Shao et al., "DeepSeekMath" (rule-based outcome rewards), arXiv:2402.03300.
  Pan et al., "TinyZero" (Countdown format reward), https://github.com/Jiayi-Pan/TinyZero.
  Yu et al., "DAPO" (overlong/truncated samples), arXiv:2503.14476.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np

from bitscale.data import Example, Task, extract_answer, parse_expression, parse_int

__all__ = [
    "RewardFn",
    "binary_reward",
    "countdown_graded_reward",
    "group_rewards",
    "int_graded_reward",
]

RewardFn = Callable[[str, Example], float]


def binary_reward(task: Task) -> RewardFn:
    """A reward function: 1.0 if ``task.check(completion, example)`` else 0.0.

    References:
      DeepSeekMath arXiv:2402.03300 (rule-based accuracy reward).
    """
    if not callable(getattr(task, "check", None)):
        raise TypeError(f"binary_reward: task must have a check(completion, example) method, "
                        f"got {type(task).__name__}")

    def reward(completion: str, example: Example) -> float:
        return 1.0 if task.check(completion, example) else 0.0

    return reward


def _check_credit(name: str, value: float, hi: float = 1.0) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < hi):
        raise ValueError(f"{name} must be in [0, {hi}), got {value!r}")


def int_graded_reward(completion: str, example: Example, *, format_credit: float = 0.1) -> float:
    """Graded reward for integer-answer tasks (Arithmetic, ModularArithmetic, integer GSM8K).

    1.0 if the text after the last ``####`` is exactly the integer ``example.answer``;
    ``format_credit`` if it is a well-formed integer (optional sign, digits only) but wrong;
    0.0 if there is no ``####`` or the text after it is not an integer.

    References:
      Cobbe et al., arXiv:2110.14168 (answer format); TinyZero (format credit).
    """
    _check_credit("format_credit", format_credit)
    got = parse_int(extract_answer(completion))
    if got is None:
        return 0.0
    return 1.0 if got == int(example.answer) else float(format_credit)


def countdown_graded_reward(completion: str, example: Example, *, format_credit: float = 0.1,
                            closeness_credit: float = 0.5) -> float:
    """Graded Countdown reward; ``example.numbers`` are the given numbers, ``example.answer`` the
    target t.

    Let e be the text after the last ``####``:
      - 0.0 if there is none or e is not a valid + - * / expression (no evaluation of code);
      - ``format_credit`` if e parses but its literals are not exactly the given numbers (as a
        multiset): no credit for closeness then, since any target is reachable with other numbers;
      - ``format_credit + (closeness_credit - format_credit) * c`` with
        ``c = max(0, 1 - |v - t| / max(|t|, 1))`` if it uses exactly the given numbers and its
        exact value v != t (so ``format_credit`` once v is off by ``max(|t|, 1)`` or more);
      - 1.0 if it uses exactly the given numbers and v == t (what `Countdown.check` accepts).
    ``closeness_credit < 1`` keeps every wrong answer strictly below a correct one.

    References:
      Gandhi et al., arXiv:2404.03683 (Countdown); TinyZero (format and answer rewards).
    """
    _check_credit("format_credit", format_credit)
    _check_credit("closeness_credit", closeness_credit)
    if closeness_credit < format_credit:
        raise ValueError(f"closeness_credit ({closeness_credit}) must be >= format_credit "
                         f"({format_credit})")
    expr = extract_answer(completion)
    if not expr:
        return 0.0
    try:
        value, literals = parse_expression(expr)
    except ValueError:
        return 0.0
    if collections.Counter(literals) != collections.Counter(example.numbers):
        return float(format_credit)
    target = Fraction(int(example.answer))
    if value == target:
        return 1.0
    closeness = max(0.0, 1.0 - float(abs(value - target)) / max(float(abs(target)), 1.0))
    return float(format_credit + (closeness_credit - format_credit) * closeness)


def group_rewards(reward_fn: RewardFn, completions: Sequence[Sequence[str]],
                  examples: Sequence[Example], *, truncated: np.ndarray | None = None,
                  truncation_reward: float | None = 0.0) -> np.ndarray:
    """Rewards of G completions for each of P prompts, float32 numpy [P, G].

    Args:
      reward_fn: ``(completion, example) -> float``, e.g. ``binary_reward(task)``,
        `int_graded_reward`, `countdown_graded_reward` (use ``functools.partial`` for options).
      completions: P sequences of G decoded completion strings (completion text only).
      examples: the P examples, ``examples[p]`` for ``completions[p]``.
      truncated: optional bool [P, G], True where generation hit the length budget without EOS.
      truncation_reward: the reward of a truncated completion (default 0.0); None scores it with
        ``reward_fn`` like the others.

    Raises:
      ValueError: P mismatch, ragged groups, a ``truncated`` of the wrong shape, a non-finite
        ``truncation_reward`` or a non-finite reward from ``reward_fn``.
    """
    if isinstance(completions, str) or len(completions) != len(examples):
        got = "a string" if isinstance(completions, str) else len(completions)
        raise ValueError(f"group_rewards: completions must be P={len(examples)} groups (one per "
                         f"example), got {got}")
    sizes = [len(group) for group in completions]
    if any(isinstance(group, str) for group in completions) or len(set(sizes)) > 1:
        raise ValueError(f"group_rewards: every group must be a sequence of the same number of "
                         f"completion strings, got group sizes {sizes}")
    shape = (len(examples), sizes[0] if sizes else 0)
    if truncated is not None:
        truncated = np.asarray(truncated, dtype=bool)
        if truncated.shape != shape:
            raise ValueError(f"group_rewards: truncated shape {truncated.shape} must match the "
                             f"completions' [P, G] = {shape}")
    if truncation_reward is not None and not math.isfinite(truncation_reward):
        raise ValueError(f"group_rewards: truncation_reward must be finite, "
                         f"got {truncation_reward}")
    out = np.zeros(shape, np.float32)
    for p, (group, example) in enumerate(zip(completions, examples)):
        for g, text in enumerate(group):
            if truncated is not None and truncation_reward is not None and truncated[p, g]:
                out[p, g] = truncation_reward
                continue
            r = float(reward_fn(text, example))
            if not math.isfinite(r):
                raise ValueError(f"group_rewards: reward_fn returned {r} for prompt {p}, "
                                 f"completion {g}")
            out[p, g] = r
    return out
