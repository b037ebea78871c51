"""The registry of built-in tasks by name, and building one from a config's ``data`` section."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bitscale.data._arithmetic import Arithmetic
from bitscale.data._countdown import Countdown
from bitscale.data._modular import ModularArithmetic

TASKS: Mapping[str, type] = {"arithmetic": Arithmetic, "countdown": Countdown,
                             "modular": ModularArithmetic}


def make_task(data: Mapping[str, Any]):
    """The task named by ``data["task"]`` (the object training and evaluation must share).

    Keys of ``data`` that are fields of the task's dataclass (``digits``, ``ops``, ``style``,
    ``n_numbers``, ``modulus``, ...) are passed to it; an empty ``ops`` keeps the task's default;
    other keys (``split``, ``max_len``, ...) are ignored.

    Raises:
      ValueError: an unknown task name, listing the valid ones.
    """
    name = data["task"]
    if name not in TASKS:
        raise ValueError(f"data.task must be one of {sorted(TASKS)}, got {name!r}")
    cls = TASKS[name]
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            v = data[f.name]
            if isinstance(v, (list, tuple)):
                if not v:
                    continue
                v = tuple(v)
            kw[f.name] = v
    return cls(**kw)
