"""Launcher: ``python -m bitscale.repro --config=configs/repro.py --workdir=/tmp/repro``.

Optional ``--checkpoint=<bitscale.train workdir>`` evaluates a trained model (the config's
``run`` must be the config it was trained with). Override fields with
``--config.grid.batch_sizes='(1, 8)'``; the config is locked, so a misspelt key fails. Writes
``<workdir>/repro.json``, ``repro.md`` and ``repro_divergence.png``.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from bitscale._cli import quiet_library_logs
from bitscale.repro._runner import run_from_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (report, trained model).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A bitscale.train run directory (or its checkpoints/) to evaluate; "
    "default: train the config's run into <workdir>/train (train_model) or random init.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    result = run_from_config(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value)
    logging.info("wrote %s", ", ".join(result["files"].values()))
    print("wrote " + ", ".join(result["files"].values()), flush=True)


if __name__ == "__main__":
    app.run(main)
