"""Exact checkers accept every reference completion and reject perturbed ones."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest
from tests.data.helpers import TASKS, examples

from bitscale.data import (
    Arithmetic,
    Countdown,
    Example,
    ModularArithmetic,
    check_countdown,
    parse_expression,
)
from bitscale.data._countdown import render

N = 1000


def _with_answer(target: str, answer: str) -> str:
    head = target[:target.rfind("####")]
    return f"{head}#### {answer}"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reference_completions_accepted(name):
    task = TASKS[name]
    exs = examples(name, "train", N)
    assert len(exs) == N
    bad = [e for e in exs if not task.check(e.target, e)]
    assert not bad, bad[:3]
    # The bare "#### answer" line alone suffices.
    assert all(task.check(e.target.splitlines()[-1], e) for e in exs)


@pytest.mark.parametrize("name", ["arithmetic", "modular"])
def test_integer_checkers_reject_off_by_one(name):
    task = TASKS[name]
    for e in examples(name, "train", N):
        a = int(e.answer)
        assert e.target.endswith(f"#### {a}")
        assert not task.check(_with_answer(e.target, str(a + 1)), e)
        assert not task.check(_with_answer(e.target, str(a - 1)), e)


@pytest.mark.parametrize("completion", [
    "", "no marker 123", "####", "#### ", "#### 12a", "#### 1e3", "#### 1.0", "#### 0x10",
    "#### 12 13", "#### (12)", "#### 12\n#### 13",
])
def test_integer_checker_malformed(completion):
    e = Example(prompt="Compute 6 * 2.\n", target="#### 12", answer="12")
    assert not Arithmetic().check(completion, e)
    assert not ModularArithmetic().check(completion, e)


def test_integer_checker_uses_last_marker_and_strips():
    e = Example(prompt="", target="#### 12", answer="12")
    assert Arithmetic().check("#### 13\nretry\n####   12 \n", e)
    assert Arithmetic().check("#### -0012", dataclasses.replace(e, answer="-12"))


def test_countdown_perturbations_rejected():
    task = Countdown()
    for e in examples("countdown", "train", N):
        expr = e.target.splitlines()[-1].removeprefix("#### ")
        nums, goal = e.numbers, int(e.answer)
        assert task.check(f"#### {expr}", e)
        # Wrong target.
        assert not task.check(e.target, dataclasses.replace(e, answer=str(goal + 1)))
        # Off by one using an extra literal (value and multiset both wrong).
        assert not task.check(f"#### {expr} + 1", e)
        assert not task.check(f"#### ({expr}) - 1", e)
        # A number used twice: replace the first literal by another given number.
        lits = re.findall(r"\d+", expr)
        others = [n for n in nums if str(n) != lits[0]]
        if others:
            twice = re.sub(r"\d+", str(others[0]), expr, count=1)
            assert not task.check(f"#### {twice}", e)
        # A missing number: a solution over all but the last number, reaching its own value.
        assert not check_countdown(f"#### {' + '.join(map(str, nums[:-1]))}", nums,
                                   sum(nums[:-1]))
        assert not task.check(f"#### {' + '.join(lits[:-1])}", e)


def test_countdown_multiset_and_exact_division():
    nums = (4, 4, 2, 10)
    assert check_countdown("#### (4 + 4) / 2 * 10", nums, 40)
    assert not check_countdown("#### (4 + 2) / 2 * 10", nums, 30)  # 4 once, 2 twice
    assert not check_countdown("#### 4 + 4 + 2 + 10 + 4", nums, 24)  # extra 4
    assert check_countdown("#### 10 / 4 * 4 * 2", nums, 20)  # exact Fractions: 10/4 = 5/2
    assert not check_countdown("#### 4 / (4 - 4) + 2 + 10", nums, 12)
    assert not check_countdown("#### 4 / (4 - 4) + 2 + 10", (4, 4, 4, 2, 10), 12)  # div by 0


@pytest.mark.parametrize("expr", [
    "__import__('os').system('touch PWNED')", "open('PWNED', 'w')", "2 ** 10", "(1 + 2",
    "1 + 2)", "", "lambda: 1", "[1, 2]", "3 // 2", "7 % 3", "1e3", "0x10", "1_000", "007",
    "-4 + 4 + 2 + 10", "+4 + 4 + 2 + 10", "4 4 2 10", "1.5 * 2", "True + 1", "x + 1",
    "(" * 100 + "1" + ")" * 100,
])
def test_countdown_malformed_expressions_rejected(expr, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not check_countdown(f"#### {expr}", (4, 4, 2, 10), 20)
    assert not os.path.exists(tmp_path / "PWNED")


def test_parse_expression_values():
    from fractions import Fraction
    assert parse_expression("(50 + 25) * 3 - 7") == (Fraction(218), [50, 25, 3, 7])
    assert parse_expression("10 / 4")[0] == Fraction(5, 2)
    assert parse_expression("-(3 - 5)", allow_unary=True)[0] == 2
    for bad in ("-(3 - 5)", "1 / 0", "2 ** 3", "a", "1" * 20):
        with pytest.raises(ValueError):
            parse_expression(bad)


def test_render_keeps_value():
    tree = ("-", 10, ("-", 4, ("/", 8, ("+", 1, 1))))  # 10 - (4 - 8 / (1 + 1)) = 10
    assert render(tree) == "10 - (4 - 8 / (1 + 1))"
    assert parse_expression(render(tree))[0] == 10
    assert render(("*", ("+", 1, 2), ("/", 6, 3))) == "(1 + 2) * 6 / 3"


def test_countdown_problems_solvable_and_in_range():
    task = Countdown()
    for e in examples("countdown", "train", N):
        assert len(e.numbers) == task.n_numbers
        assert all(1 <= n <= task.max_number for n in e.numbers)
        assert task.min_target <= int(e.answer) <= task.max_target
        assert f"make {e.answer}." in e.prompt
        assert ", ".join(map(str, e.numbers)) in e.prompt
