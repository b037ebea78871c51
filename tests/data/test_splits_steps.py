"""Splits are disjoint and deterministic; worked steps are arithmetically correct."""

from __future__ import annotations

import re

import pytest
from tests.data.helpers import TASKS, examples

from bitscale.data import (
    Arithmetic,
    Countdown,
    ModularArithmetic,
    parse_expression,
    split_of,
)

N_SPLIT = 2000


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_disjoint(name):
    train = {e.prompt for e in examples(name, "train", N_SPLIT)}
    test = {e.prompt for e in examples(name, "test", N_SPLIT)}
    assert len(train) > N_SPLIT // 2 and len(test) > N_SPLIT // 2  # not degenerate
    assert not train & test


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generation_deterministic(name):
    task = TASKS[name]
    a = task.generate("train", 50, 7)
    assert a == task.generate("train", 50, 7)
    assert a[:20] == task.generate("train", 20, 7)  # prefix-stable
    assert a != task.generate("train", 50, 8)
    assert a != task.generate("test", 50, 7)
    assert task.example("train", 7, 13) == a[13]


def test_split_of_is_a_fraction():
    counts = sum(split_of("t", str(i), 0.2) == "test" for i in range(5000))
    assert 800 < counts < 1200


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        Arithmetic().generate("valid", 3, 0)
    with pytest.raises(ValueError):
        Arithmetic().generate("train", 3, -1)
    with pytest.raises(ValueError, match="ops"):
        Arithmetic(ops=("/",))
    with pytest.raises(ValueError, match="test_fraction"):
        Countdown(test_fraction=0.0)
    with pytest.raises(ValueError, match="modulus"):
        ModularArithmetic(modulus=1)


_ADD = re.compile(r"^(\d) \+ (\d) \+ ([01]) = (\d+), write (\d) carry ([01])$")
_SUB = re.compile(r"^(\d) - (\d) - ([01]) = (-?\d+), write (\d) borrow ([01])$")
_MUL = re.compile(r"^(\d+) \* (\d+) = (\d+)$")
_PROMPT = re.compile(r"^Compute (\d+) ([-+*]) (\d+)\.\n$")


def _digit(x: int, i: int) -> int:
    return (x // 10**i) % 10


def _verify_columns(lines, x, y, pattern, sign):
    """Column lines of x (+|-) y, digits least significant first; returns the composed result."""
    result, carry = 0, 0
    assert len(lines) == max(len(str(x)), len(str(y)))
    for i, line in enumerate(lines):
        m = pattern.match(line)
        assert m, line
        dx, dy, cin, s, w, cout = map(int, m.groups())
        assert (dx, dy, cin) == (_digit(x, i), _digit(y, i), carry), line
        assert s == dx + sign * dy + sign * cin, line
        assert w == s % 10 and cout == (s // 10 if sign > 0 else int(s < 0)), line
        result += w * 10**i
        carry = cout
    if sign > 0:
        result += carry * 10**len(lines)
    else:
        assert carry == 0
    return result


def test_arithmetic_worked_steps_correct():
    seen_ops = set()
    exs = examples("arithmetic", "train", 1000) + examples("arithmetic", "test", 1000)
    for e in exs:
        a, op, b = _PROMPT.match(e.prompt).groups()
        a, b = int(a), int(b)
        seen_ops.add(op)
        truth = a + b if op == "+" else a - b if op == "-" else a * b
        *lines, last = e.target.split("\n")
        assert last == f"#### {truth}" and e.answer == str(truth)
        if op == "+":
            assert _verify_columns(lines, a, b, _ADD, +1) == truth
        elif op == "-":
            if a < b:
                assert lines[0] == f"{a} - {b} = -({b} - {a})"
                lhs, rhs = lines[0].split(" = ")
                assert parse_expression(lhs, allow_unary=True)[0] == \
                    parse_expression(rhs, allow_unary=True)[0]
                assert -_verify_columns(lines[1:], b, a, _SUB, -1) == truth
            else:
                assert _verify_columns(lines, a, b, _SUB, -1) == truth
        else:
            partials = []
            n_b = len(str(b))
            for i, line in enumerate(lines[:n_b]):
                x, m, p = map(int, _MUL.match(line).groups())
                assert x == a and m == _digit(b, i) * 10**i and p == x * m, line
                partials.append(p)
            if n_b > 1:
                assert len(lines) == n_b + 1
                lhs, rhs = lines[-1].split(" = ")
                assert [int(t) for t in lhs.split(" + ")] == partials
                assert int(rhs) == sum(partials) == truth
            else:
                assert len(lines) == 1 and partials == [truth]
    assert seen_ops == {"+", "-", "*"}


_MOD = re.compile(r"^(\d+) ([-+*]) (\d+) = (-?\d+) = (-?\d+) \* (\d+) \+ (\d+), so (\d+)$")


def test_modular_worked_steps_correct():
    task = ModularArithmetic()
    p = task.modulus
    for e in examples("modular", "train", 1000):
        expr = re.match(r"^Compute \((.*)\) mod (\d+)\.\n$", e.prompt)
        assert int(expr.group(2)) == p
        truth = int(parse_expression(expr.group(1))[0]) % p  # precedence-aware evaluation
        *lines, last = e.target.split("\n")
        assert last == f"#### {truth}"
        acc = None
        for line in lines:
            x, op, y, v, q, m, r, r2 = _MOD.match(line).groups()
            x, y, v, q, m, r, r2 = map(int, (x, y, v, q, m, r, r2))
            assert acc is None or x == acc
            assert v == (x + y if op == "+" else x - y if op == "-" else x * y)
            assert m == p and v == q * p + r and 0 <= r < p and r == r2
            acc = r
        assert acc == truth


def test_countdown_worked_steps_correct():
    for e in examples("countdown", "train", 1000):
        *lines, _ = e.target.split("\n")
        pool = list(e.numbers)
        for line in lines:
            lhs, rhs = line.split(" = ")
            value, lits = parse_expression(lhs)
            assert value == int(rhs) > 0, line
            for lit in lits:
                pool.remove(lit)  # operands are available numbers or earlier results
            pool.append(int(rhs))
        assert pool == [int(e.answer)]


def test_padded_arithmetic_fixed_width():
    """pad=True: operands zero-padded to `digits`, `digits` columns worked, same answers."""
    task = Arithmetic(digits=3, ops=("+", "-"), pad=True)
    exs = task.generate("train", 500, 1)
    assert len({len(e.prompt) for e in exs}) == 1  # "Compute ddd op ddd.\n"
    for e in exs:
        a, op, b = re.match(r"^Compute (\d{3}) ([-+]) (\d{3})\.\n$", e.prompt).groups()
        a, b = int(a), int(b)
        truth = a + b if op == "+" else a - b
        *lines, last = e.target.split("\n")
        assert last == f"#### {truth}" and task.check(e.target, e)
        cols = [ln for ln in lines if "write" in ln]
        assert len(cols) == 3
        if op == "+":
            assert _verify_columns(lines, a, b, _ADD, +1) == truth
        elif a < b:
            assert lines[0] == f"{a:03d} - {b:03d} = -({b:03d} - {a:03d})"
    test = {e.prompt for e in task.generate("test", 500, 1)}
    assert not test & {e.prompt for e in exs}


def test_compact_arithmetic_steps_correct():
    """style="compact": column lines ``da+db+c=s`` / ``da-db-b=s`` and partial products, exact."""
    task = Arithmetic(digits=3, style="compact")
    exs = task.generate("train", 600, 2)
    verbose = {e.prompt: e for e in Arithmetic(digits=3).generate("train", 600, 2)}
    assert set(verbose) == {e.prompt for e in exs}  # same problems, only the steps differ
    for e in exs:
        a, op, b = _PROMPT.match(e.prompt).groups()
        a, b = int(a), int(b)
        truth = a + b if op == "+" else a - b if op == "-" else a * b
        *lines, last = e.target.split("\n")
        assert last == f"#### {truth}" and task.check(e.target, e)
        assert " " not in "".join(lines) and len(e.target) < len(verbose[e.prompt].target)
        if op == "*":
            for line in lines:
                lhs, rhs = line.split("=")
                assert parse_expression(lhs)[0] == int(rhs)
            continue
        if op == "-" and a < b:
            assert lines[0] == f"{a}-{b}=-({b}-{a})"
            lines, (a, b), sign = lines[1:], (b, a), -1
        else:
            sign = 1
        total, carry = 0, 0
        for i, line in enumerate(lines):
            m = re.fullmatch(r"(\d)([-+])(\d)\2(\d)=(-?\d+)", line)
            da, o, db, c, s = m.groups()
            assert (int(da), int(db), int(c)) == (_digit(a, i), _digit(b, i), carry)
            s = int(s)
            assert s == (int(da) + int(db) + carry if o == "+" else int(da) - int(db) - carry)
            carry = s // 10 if o == "+" else int(s < 0)
            total += (s % 10) * 10**i
        total += carry * 10**len(lines) if op == "+" else 0
        assert sign * total == truth
    with pytest.raises(ValueError, match=r"style must be one of .*'terse'"):
        Arithmetic(style="terse")
