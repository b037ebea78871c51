"""Rewards: binary from a task checker, graded integer and Countdown rewards, truncation, shapes.

Expected rewards are worked by hand from the documented definitions.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from bitscale import rl
from bitscale.data import Arithmetic, Countdown, Example

ADD = Example(prompt="Compute 12 + 30.\n", target="2 + 0 + 0 = 2\n#### 42", answer="42")
CD = Example(prompt="Use the numbers 3, 5, 7 to make 22.\n", target="#### 3 * 5 + 7",
             answer="22", numbers=(3, 5, 7))


def test_binary_rewards_from_task_check_with_truncation():
    fn = rl.binary_reward(Arithmetic())
    completions = [["steps\n#### 42", "#### 41", "no answer", "#### 42"],
                   ["#### 42 ", "#### +42", "#### 42\n", "#### 4 2"]]
    got = rl.group_rewards(fn, completions, [ADD, ADD])
    assert got.dtype == np.float32 and got.shape == (2, 4)
    np.testing.assert_array_equal(got, [[1, 0, 0, 1], [1, 0, 1, 0]])
    truncated = np.array([[False, False, False, True], [True, False, False, False]])
    np.testing.assert_array_equal(rl.group_rewards(fn, completions, [ADD, ADD],
                                                   truncated=truncated),
                                  [[1, 0, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(
        rl.group_rewards(fn, completions, [ADD, ADD], truncated=truncated, truncation_reward=-1.0),
        [[1, 0, 0, -1], [-1, 0, 1, 0]])
    np.testing.assert_array_equal(
        rl.group_rewards(fn, completions, [ADD, ADD], truncated=truncated, truncation_reward=None),
        got)


def test_binary_reward_matches_generated_references():
    task = Countdown()
    examples = task.generate("train", 3, seed=0)
    completions = [[ex.target, ex.target + " + 1", "#### 0"] for ex in examples]
    got = rl.group_rewards(rl.binary_reward(task), completions, examples)
    np.testing.assert_array_equal(got, [[1, 0, 0]] * 3)


@pytest.mark.parametrize("text,want", [
    ("work\n#### 42", 1.0),
    ("#### 41", 0.1),     # well-formed integer, wrong
    ("#### -42", 0.1),
    ("#### 4 2", 0.0),    # not an integer
    ("#### forty-two", 0.0),
    ("42", 0.0),          # no answer mark
    ("", 0.0),
])
def test_int_graded_reward(text, want):
    assert rl.int_graded_reward(text, ADD) == pytest.approx(want)


def test_int_graded_reward_credit_option():
    assert rl.int_graded_reward("#### 7", ADD, format_credit=0.3) == pytest.approx(0.3)
    assert rl.int_graded_reward("#### 42", ADD, format_credit=0.3) == 1.0
    with pytest.raises(ValueError, match="format_credit"):
        rl.int_graded_reward("#### 7", ADD, format_credit=1.0)


@pytest.mark.parametrize("text,want", [
    ("#### 3 * 5 + 7", 1.0),                       # 22, exact numbers
    ("#### 7 + 5 * 3", 1.0),
    ("#### 3 + 5 + 7", 0.1 + 0.4 * (1 - 7 / 22)),  # 15: |15 - 22| / 22
    ("#### 7 * 3 + 5", 0.1 + 0.4 * (1 - 4 / 22)),  # 26
    ("#### 7 / 5 + 3", 0.1 + 0.4 * (1 - 17.6 / 22)),  # 4.4, exact fraction
    ("#### 3 * 5 * 7", 0.1),                       # 105: off by more than the target
    ("#### (3 + 5) * 7", 0.1),                     # 56
    ("#### 22", 0.1),                              # right value, wrong numbers
    ("#### 3 * 5 + 7 + 0", 0.1),                   # extra literal
    ("#### 3 * 5 + 7 + 7", 0.1),
    ("#### __import__('os')", 0.0),                # never evaluated
    ("#### 3 * ", 0.0),
    ("3 * 5 + 7", 0.0),                            # no answer mark
])
def test_countdown_graded_reward(text, want):
    assert rl.countdown_graded_reward(text, CD) == pytest.approx(want, abs=1e-12)


def test_countdown_graded_reward_is_one_exactly_when_check_passes():
    task = Countdown()
    for ex in task.generate("test", 5, seed=1):
        for text in (ex.target, ex.target + " - 1", "#### " + ex.answer):
            assert (rl.countdown_graded_reward(text, ex) == 1.0) == task.check(text, ex)
    got = rl.countdown_graded_reward("#### 3 + 5 + 7", CD, format_credit=0.0,
                                     closeness_credit=0.9)
    assert got == pytest.approx(0.9 * 15 / 22)
    with pytest.raises(ValueError, match="closeness_credit"):
        rl.countdown_graded_reward("#### 3", CD, format_credit=0.5, closeness_credit=0.2)


def test_graded_rewards_through_group_rewards_feed_advantages():
    fn = functools.partial(rl.countdown_graded_reward, format_credit=0.0, closeness_credit=0.5)
    rewards = rl.group_rewards(fn, [["#### 3 * 5 + 7", "#### 3 + 5 + 7", "nothing"]], [CD])
    np.testing.assert_allclose(rewards, [[1.0, 0.5 * 15 / 22, 0.0]], rtol=1e-6)
    adv = rl.drgrpo_advantages(jnp.asarray(rewards))
    mean = (1.0 + 0.5 * 15 / 22) / 3
    np.testing.assert_allclose(adv, [[1 - mean, 0.5 * 15 / 22 - mean, -mean]], rtol=1e-5)


def test_group_rewards_errors():
    fn = rl.binary_reward(Arithmetic())
    with pytest.raises(ValueError, match="P=2 groups"):
        rl.group_rewards(fn, [["#### 42"]], [ADD, ADD])
    with pytest.raises(ValueError, match=r"group sizes \[2, 1\]"):
        rl.group_rewards(fn, [["a", "b"], ["c"]], [ADD, ADD])
    with pytest.raises(ValueError, match="group sizes"):
        rl.group_rewards(fn, ["ab", "cd"], [ADD, ADD])  # strings, not groups of strings
    with pytest.raises(ValueError, match=r"truncated shape \(2,\) must match .* \(1, 2\)"):
        rl.group_rewards(fn, [["a", "b"]], [ADD], truncated=np.array([True, False]))
    with pytest.raises(ValueError, match="truncation_reward"):
        rl.group_rewards(fn, [["a", "b"]], [ADD], truncation_reward=float("inf"))
    with pytest.raises(ValueError, match="prompt 0, completion 1"):
        rl.group_rewards(lambda c, e: float("nan") if c == "b" else 0.0, [["a", "b"]], [ADD])
    with pytest.raises(TypeError, match="check"):
        rl.binary_reward(object())
