"""Launcher: ``python -m bitscale.train --config=configs/tiny.py --workdir=/tmp/run``.

Override config fields with ``--config.optim.lr=1e-3``; the config is locked, so a misspelt key
fails. Re-running the same command in the same workdir resumes from the latest checkpoint.
"""

from bitscale._cli import launch
from bitscale.train._loop import train

if __name__ == "__main__":
    launch(train)
