"""The ``interpret`` fixture: every kernel value test runs in the Pallas interpreter (the CPU
path CI tests) and compiled for the backend; the compiled case is skipped unless
``jax.default_backend()`` is a GPU or TPU, so the same cases run on hardware unchanged."""

from __future__ import annotations

import jax
import pytest

ACCELERATORS = ("gpu", "tpu")


@pytest.fixture(params=[pytest.param(True, id="interpret"), pytest.param(False, id="compiled")])
def interpret(request) -> bool:
    """True: the Pallas interpreter; False: the kernel compiled for a GPU / TPU backend."""
    if not request.param and jax.default_backend() not in ACCELERATORS:
        pytest.skip(f"compiled kernels need a GPU or TPU; jax.default_backend() is "
                    f"{jax.default_backend()!r}")
    return request.param
