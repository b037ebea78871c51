"""Loading ``configs/*.py`` files (``get_config()``) by path, as ``--config=...`` does.

Config files are not a package: a recipe builds on another by loading it by file name, and
tests, benchmarks and notebooks load them the same way::

    _demo = load_module(sibling(__file__, "demo.py"))      # inside configs/bf16.py
    cfg = load_config("configs/demo.py", "bf16")            # get_config("bf16")

A file is executed once per process (modules are cached by absolute path), so module-level
side effects such as `bitscale.nn.register_policy` run once.
"""

from __future__ import annotations

import importlib.util
import os
import re
import zlib
from types import ModuleType
from typing import Any

__all__ = ["load_config", "load_module", "sibling"]

_MODULES: dict[str, ModuleType] = {}


def sibling(file: str, name: str) -> str:
    """The path of ``name`` in the directory of ``file`` (a config's ``__file__``)."""
    return os.path.join(os.path.dirname(os.path.abspath(file)), name)


def load_module(path: "str | os.PathLike") -> ModuleType:
    """The config file at ``path`` as a module (executed on first use, then cached).

    Raises:
      FileNotFoundError: no file at ``path``.
    """
    path = os.path.abspath(os.fspath(path))
    if path in _MODULES:
        return _MODULES[path]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"_bitscale_config_{stem}_{zlib.crc32(path.encode()):08x}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _MODULES[path] = module
    return module


def load_config(path: "str | os.PathLike", *args: Any):
    """``get_config(*args)`` of the config file at ``path`` (a fresh ConfigDict each call).

    Raises:
      FileNotFoundError: no file at ``path``; ValueError: the file defines no ``get_config``.
    """
    get = getattr(load_module(path), "get_config", None)
    if not callable(get):
        raise ValueError(f"config file {os.fspath(path)} defines no get_config()")
    return get(*args)
