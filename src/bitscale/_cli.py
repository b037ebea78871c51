"""The one command-line system of bitscale (absl flags): `launch` for the config-file runs
(``python -m bitscale.train`` / ``bitscale.rl``), `launch_study` for the studies
(``python -m bitscale.studies.<name>``), and `quiet_library_logs` for every launcher."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from bitscale._logs import _LibraryInfoFilter, quiet_library_logs  # noqa: F401

flags.disclaim_key_flags()  # the flags `launch` defines belong to its caller (the __main__ --help)


def launch(run: Callable[[object, str], dict]) -> None:
    """Parses ``--config`` (a get_config() file, locked; ``--config.a.b=v`` overrides),
    ``--workdir`` and ``--distributed``, then runs ``run(config, workdir)`` and logs its final
    ``step`` and ``metrics``. Call it from a ``__main__`` module, whose docstring is the usage."""
    config = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.",
                                             lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
    distributed = flags.DEFINE_bool("distributed", False,
                                    "Call jax.distributed.initialize() (multi-host runs).")
    flags.mark_flags_as_required(["config", "workdir"])

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        quiet_library_logs()
        if distributed.value:
            jax.distributed.initialize()
        result = run(config.value, workdir.value)
        logging.info("done: step %d, metrics %s", result["step"], result["metrics"])

    app.run(main)


def launch_study(define_flags: Callable[[], Mapping[str, flags.FlagHolder]],
                 main: Callable[[dict[str, Any]], object]) -> None:
    """Defines a study's flags (``define_flags() -> {name: FlagHolder}``, called here so that a
    study imported by another defines nothing), parses the command line and runs
    ``main({name: value})``. Call it from the study's ``if __name__ == "__main__"`` block; the
    module docstring is the usage."""
    holders = dict(define_flags())

    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        quiet_library_logs()
        main({name: h.value for name, h in holders.items()})

    app.run(run)
