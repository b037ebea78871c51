"""The launchers' log filter: library INFO chatter dropped, warnings and the run's own lines kept,
everything kept at --v >= 1."""

import logging as py_logging

from absl import logging

from bitscale import _cli


def _record(path: str, level: int) -> py_logging.LogRecord:
    return py_logging.LogRecord("absl", level, path, 1, "msg", None, None)


def test_filter_drops_library_info_only():
    f = _cli._LibraryInfoFilter()
    orbax = "/env/site-packages/orbax/checkpoint/_src/checkpoint_manager.py"
    bridge = "/env/site-packages/jax/_src/xla_bridge.py"
    ours = "/work/src/bitscale/train/loop.py"
    assert not f.filter(_record(orbax, py_logging.INFO))
    assert not f.filter(_record(bridge, py_logging.INFO))
    assert f.filter(_record(orbax, py_logging.WARNING))
    assert f.filter(_record(ours, py_logging.INFO))


def test_installed_once_and_not_when_verbose():
    handler = logging.get_absl_handler()
    before = list(handler.filters)
    old = logging.get_verbosity()
    try:
        logging.set_verbosity(logging.INFO)
        _cli.quiet_library_logs()
        _cli.quiet_library_logs()
        added = [f for f in handler.filters if f not in before]
        assert len(added) == 1 and isinstance(added[0], _cli._LibraryInfoFilter)
        for f in added:
            handler.removeFilter(f)
        logging.set_verbosity(logging.DEBUG)
        _cli.quiet_library_logs()
        assert handler.filters == before
    finally:
        for f in [f for f in handler.filters if f not in before]:
            handler.removeFilter(f)
        logging.set_verbosity(old)
