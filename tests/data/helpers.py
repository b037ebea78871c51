"""Shared cached example lists for the bitscale.data tests."""

from __future__ import annotations

import functools

from bitscale.data import Arithmetic, Countdown, ModularArithmetic

TASKS = {"arithmetic": Arithmetic(), "countdown": Countdown(), "modular": ModularArithmetic()}


@functools.cache
def examples(name: str, split: str, n: int, seed: int = 0):
    return tuple(TASKS[name].generate(split, n, seed))
