"""Launcher: ``python -m bitscale.rl --config=configs/grpo_arith.py --workdir=/tmp/rl``.

Override config fields with ``--config.rl.group_size=4``; the config is locked, so a misspelt
key fails. Re-running the same command in the same workdir resumes from the latest checkpoint.
"""

from bitscale._cli import launch
from bitscale.rl._loop import train_rl

if __name__ == "__main__":
    launch(train_rl)
