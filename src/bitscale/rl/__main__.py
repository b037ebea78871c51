"""Launcher: ``python -m bitscale.rl --config=configs/grpo_arith.py --workdir=/tmp/rl``.

Override config fields with ``--config.rl.group_size=4``; the config is locked, so a misspelt
key fails. Re-running the same command in the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from bitscale.rl._loop import train_rl

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    result = train_rl(_CONFIG.value, _WORKDIR.value)
    logging.info("done: step %d, metrics %s", result["step"], result["metrics"])


if __name__ == "__main__":
    app.run(main)
