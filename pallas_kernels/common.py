"""Dispatch between the Pallas kernels and their XLA (pure jnp) references.

``implementation="auto"`` picks Pallas on GPU and TPU and XLA on CPU; ``"pallas"`` forces the kernel
(on CPU only with ``interpret=True``, which runs the kernel body through the Pallas interpreter);
``"xla"`` runs the jnp reference from `bitscale.numerics`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax

from bitscale.numerics import ieee
from bitscale.numerics.validate import (  # noqa: F401  (re-exported)
    IMPLEMENTATIONS, Implementation, check_implementation)

PALLAS_BACKENDS = ("gpu", "tpu")


def backend() -> str:
    return jax.default_backend()


def use_pallas(implementation: str, interpret: bool, op: str) -> bool:
    """Resolves ``implementation`` to True (run the Pallas kernel) or False (run XLA).

    Raises ValueError for an unknown choice, and for ``"pallas"`` on a backend without a Pallas
    lowering unless ``interpret=True``.
    """
    check_implementation(implementation)
    if implementation == "xla":
        return False
    if interpret:
        return True
    supported = backend() in PALLAS_BACKENDS
    if implementation == "pallas" and not supported:
        raise ValueError(
            f"{op}: implementation='pallas' needs a GPU or TPU backend, but JAX's default backend is "
            f"{backend()!r}; pass interpret=True to run the kernel in the Pallas interpreter, or "
            "implementation='xla' (or 'auto') for the jnp reference")
    return supported


def check_positive_multiple(name: str, value: int, multiple: int, what: str) -> None:
    if not isinstance(value, int) or value < 1 or value % multiple:
        raise ValueError(f"{name}={value!r} must be a positive multiple of {multiple} ({what})")


def portable_body(kernel: Callable) -> Callable:
    """``kernel`` traced under `bitscale.numerics.ieee.portable`: the numerics it calls use
    their integer emulations, which every Pallas lowering has, instead of a per-platform switch
    (Triton cannot lower one), and so give the XLA path's bits on every backend."""
    @functools.wraps(kernel)
    def body(*refs):
        with ieee.portable():
            return kernel(*refs)
    return body
