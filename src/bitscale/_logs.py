"""`quiet_library_logs` for the launchers, in a module of its own so that launchers without
configs (``python -m bitscale.selfcheck``) do not import ml_collections."""

from __future__ import annotations

import logging as py_logging

from absl import logging

# Libraries whose INFO lines (orbax: ~25 per checkpoint; jax: backend probing) bury a run's own.
_CHATTY = ("/orbax/", "/jax/_src/xla_bridge", "/jax/_src/distributed")


class _LibraryInfoFilter(py_logging.Filter):
    def filter(self, record: py_logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        return record.levelno >= py_logging.WARNING or not any(p in path for p in _CHATTY)


def quiet_library_logs() -> None:
    """Drops INFO lines of orbax and of jax's backend setup from the absl log, unless the run
    asked for verbose logging (``--v=1`` or more); warnings and errors always pass."""
    if logging.get_verbosity() >= 1:
        return
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
        handler.addFilter(_LibraryInfoFilter())
