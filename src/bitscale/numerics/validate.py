"""Argument checks shared by every public quantizer: clear errors naming the bad value."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.numerics import bits as B

Rounding = Literal["nearest", "stochastic"]
Implementation = Literal["auto", "pallas", "xla"]
IMPLEMENTATIONS = ("auto", "pallas", "xla")
"""Where a quantized op runs: ``auto`` (the Pallas kernel on GPU / TPU, XLA on CPU), ``pallas``
or ``xla`` (the jnp reference)."""
ROUNDINGS = ("nearest", "stochastic")
_FLOAT_INPUTS = (jnp.float32, jnp.bfloat16, jnp.float16)


def check_input(x: Any, name: str = "x") -> jax.Array:
    """Accepts float32 / bfloat16 / float16 arrays; rejects everything else by name."""
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype  # before any x64 downcast
    if dtype not in [jnp.dtype(d) for d in _FLOAT_INPUTS]:
        raise TypeError(
            f"{name} must be a float32, bfloat16 or float16 array, got dtype {dtype}"
            + ("; cast integers to float first" if jnp.issubdtype(dtype, jnp.integer) else "")
            + ("; float64 is not supported (cast to float32)" if dtype == np.float64 else ""))
    return jnp.asarray(x)


def check_axis(axis: int, ndim: int) -> int:
    """``axis`` normalized to [0, ndim), or a TypeError / ValueError naming it."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}: {axis!r}")
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"axis {axis!r} is out of range for an array of rank {ndim}")
    return int(axis) % max(ndim, 1)


def check_rounding(rounding: str, key: Any) -> None:
    """``rounding`` is ``nearest`` or ``stochastic``, and stochastic rounding has a key."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs a PRNG key: pass key=jax.random.key(seed)")


def random_bits_for(x: jax.Array, rounding: str, key: Any) -> jax.Array | None:
    """The counter-hash bits of stochastic rounding for ``x`` (None for nearest rounding)."""
    return B.random_bits(key, x.shape) if rounding == "stochastic" else None


def check_implementation(implementation: str) -> str:
    """``implementation`` if it is one of `IMPLEMENTATIONS`, else a ValueError naming it."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got "
                         f"{implementation!r}")
    return implementation
