"""Config files the studies share: the demo recipe's config, with a step override."""

from __future__ import annotations

import pathlib
from typing import Any

from bitscale.config_file import load_module

__all__ = ["default_config_path", "load_config", "task_words"]


def default_config_path(name: str = "demo") -> pathlib.Path:
    """``configs/<name>.py`` of the source checkout (or of the working directory)."""
    here = pathlib.Path(__file__).resolve().parents[3] / "configs" / f"{name}.py"
    return here if here.exists() else pathlib.Path("configs") / f"{name}.py"


def load_config(path: str | pathlib.Path | None, policy: str, steps: int | None = None) -> Any:
    """``get_config(policy)`` of the config file ``path`` (default: `default_config_path`), with
    ``train.steps`` overridden (and the warmup shortened to at most a tenth of it) when given."""
    mod = load_module(pathlib.Path(path) if path else default_config_path())
    cfg = mod.get_config(policy)
    if steps is not None:
        with cfg.unlocked():
            cfg.train.steps = int(steps)
            cfg.optim.warmup_steps = min(int(cfg.optim.warmup_steps), max(int(steps) // 10, 1))
    return cfg


def task_words(cfg: Any) -> str:
    """``2-digit addition with compact worked steps``: the arithmetic task of ``cfg.data``."""
    names = {"+": "addition", "-": "subtraction", "*": "multiplication"}
    ops = tuple(cfg.data.get("ops", ())) or tuple(names)
    style = cfg.data.get("style", "verbose")
    return (f"{cfg.data.digits}-digit {' / '.join(names[o] for o in ops)} with "
            f"{'compact ' if style == 'compact' else ''}worked steps")
