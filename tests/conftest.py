"""Suite-wide settings, fixtures and markers.

* ``jax_numpy_rank_promotion="raise"`` for every test: implicit rank promotion is a bug here.
* Markers (registered in pyproject.toml): ``slow`` (more than about 20 s on 2 CPU cores; run by
  default, ``-m "not slow"`` skips them), ``gpu`` and ``tpu`` (skipped unless
  ``jax.default_backend()`` is that platform).
* Fixtures: ``key``, the suite's default PRNG key ``jax.random.key(0)``.

Shared helpers are modules, not fixtures: ``tests/<dir>/helpers.py``, imported as
``from tests.<dir>.helpers import ...`` (pyproject puts the repository root on ``sys.path``).
"""

from __future__ import annotations

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

PLATFORM_MARKERS = ("gpu", "tpu")


def pytest_collection_modifyitems(config, items):
    marked = [(item, name) for item in items for name in PLATFORM_MARKERS
              if item.get_closest_marker(name) is not None]
    if not marked:
        return  # no backend query unless a test asks for a platform
    backend = jax.default_backend()
    for item, name in marked:
        if backend != name:
            item.add_marker(pytest.mark.skip(
                reason=f"needs a {name.upper()} backend; jax.default_backend() is {backend!r}"))


@pytest.fixture
def key() -> jax.Array:
    """The default PRNG key, ``jax.random.key(0)``."""
    return jax.random.key(0)
