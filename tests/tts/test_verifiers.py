"""Verifiers: perfect (the task checker), imperfect (completeness/soundness, explicit key) and
residue (weak: checks the answer modulo m)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bitscale.data import Arithmetic, Example
from bitscale.tts import (
    ImperfectVerifier,
    PerfectVerifier,
    ResidueVerifier,
    answer_codes,
    final_answers,
    task_correctness,
)

TASK = Arithmetic(digits=3)


def _with_answer(example, value) -> str:
    body = example.target.rsplit("####", 1)[0]
    return f"{body}#### {value}"


def _grid(examples, offsets):
    """Completions [P][len(offsets)]: the reference answer plus each offset (None: no answer)."""
    return [[ex.target.rsplit("####", 1)[0] + "no answer" if d is None
             else _with_answer(ex, int(ex.answer) + d) for d in offsets] for ex in examples]


def test_perfect_verifier_is_the_task_checker():
    examples = TASK.generate("test", 6, seed=0)
    completions = _grid(examples, [0, 1, None, 0, -10])
    expected = np.tile([True, False, False, True, False], (6, 1))
    np.testing.assert_array_equal(task_correctness(TASK, completions, examples), expected)
    v = PerfectVerifier(TASK)
    np.testing.assert_array_equal(v.verify(completions, examples), expected)
    np.testing.assert_array_equal(v.accept(expected), expected)


def test_imperfect_verifier_rates_and_determinism():
    rng = np.random.default_rng(0)
    correct = rng.random((400, 500)) < 0.3
    v = ImperfectVerifier(completeness=0.8, soundness=0.9)
    key = jax.random.key(1)
    acc = np.asarray(v.accept(correct, key))
    np.testing.assert_array_equal(acc, v.accept(correct, key))
    assert not np.array_equal(acc, v.accept(correct, jax.random.key(2)))
    # 60k correct and 140k wrong samples: rates within ~5 standard errors
    assert acc[correct].mean() == pytest.approx(0.8, abs=0.01)
    assert acc[~correct].mean() == pytest.approx(0.1, abs=0.005)
    assert v.false_positive_rate == pytest.approx(0.1)
    exact = ImperfectVerifier(1.0, 1.0).accept(correct, key)
    np.testing.assert_array_equal(exact, correct)
    jitted = jax.jit(v.accept)(correct, key)  # the dataclass is hashable: usable under jit
    np.testing.assert_array_equal(jitted, acc)


def test_imperfect_verifier_on_strings(key):
    examples = TASK.generate("test", 4, seed=1)
    completions = _grid(examples, [0, 7, 0])
    strict = ImperfectVerifier(1.0, 1.0, task=TASK).verify(completions, examples, key)
    np.testing.assert_array_equal(strict, np.tile([True, False, True], (4, 1)))
    lax_ = ImperfectVerifier(1.0, 0.0, task=TASK).verify(completions, examples, key)
    assert lax_.all()  # soundness 0: every wrong answer passes
    with pytest.raises(ValueError, match="needs a task"):
        ImperfectVerifier(0.5, 0.5).verify(completions, examples, key)


@pytest.mark.parametrize("kwargs", [dict(completeness=1.5), dict(soundness=-0.1),
                                    dict(completeness=float("nan")), dict(soundness="0.5")])
def test_imperfect_verifier_rejects_bad_rates(kwargs):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ImperfectVerifier(**kwargs)


def test_residue_verifier_false_positives():
    examples = TASK.generate("test", 10, seed=2)
    v = ResidueVerifier(modulus=10)
    # correct, high-digit slips (multiples of 10: undetected), low-digit slips, no answer
    completions = _grid(examples, [0, 10, -100, 1000, 1, -3, None])
    got = v.verify(completions, examples)
    np.testing.assert_array_equal(got, np.tile([True, True, True, True, False, False, False],
                                               (10, 1)))
    correct = task_correctness(TASK, completions, examples)
    assert np.all(got[correct])  # completeness 1
    # wrong answers spread uniformly over residues pass at rate 1/modulus
    rng = np.random.default_rng(3)
    offsets = rng.integers(1, 10**6, 4000)
    one = examples[0]
    rate = np.mean([v.check(_with_answer(one, int(one.answer) + int(d)), one) for d in offsets])
    assert rate == pytest.approx(0.1, abs=0.02)
    parity = ResidueVerifier(modulus=2)
    assert parity.check(_with_answer(one, int(one.answer) + 2), one)
    assert not parity.check(_with_answer(one, int(one.answer) + 3), one)


def test_residue_verifier_bad_input():
    with pytest.raises(ValueError, match="modulus must be an int >= 1"):
        ResidueVerifier(modulus=0)
    ex = Example(prompt="", target="#### 1 + 2", answer="1 + 2")
    with pytest.raises(ValueError, match="integer reference answer"):
        ResidueVerifier(10).check("#### 3", ex)


def test_final_answers_and_codes():
    completions = [["a #### 42", "b #### 042", "c", "#### 7", "#### x"],
                   ["#### 1", "#### 2", "#### 1", "#### 3", "#### 2"]]
    answers = final_answers(completions)
    assert answers[0] == ["42", "042", None, "7", "x"]
    codes = answer_codes(answers)
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, [[0, 0, -1, 1, 2], [0, 1, 0, 2, 1]])
    raw = answer_codes(answers, normalize=str)
    np.testing.assert_array_equal(raw[0], [0, 1, -1, 2, 3])
    with pytest.raises(ValueError, match="same number N >= 1"):
        answer_codes([["1", "2"], ["1"]])
    with pytest.raises(ValueError, match="non-empty"):
        final_answers([])
    with pytest.raises(ValueError, match="same number N >= 1"):
        task_correctness(TASK, [[]], [])
    with pytest.raises(ValueError, match="examples"):
        task_correctness(TASK, [["#### 1"]], [])
