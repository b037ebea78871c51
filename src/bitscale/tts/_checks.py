"""Input checks shared by the tts modules: concrete values are validated eagerly with clear
ValueErrors; traced values (inside `jit`/`vmap`) can only be checked for shape and dtype."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def concrete(x: Any) -> np.ndarray | None:
    """`x` as a numpy array if its value is known now, or None if it is a tracer."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def first_bad(mask: np.ndarray, *arrays: np.ndarray) -> str:
    """A short description of the first position where `mask` is True, with the arrays' values."""
    idx = np.argwhere(np.atleast_1d(mask))[0]
    vals = [np.broadcast_to(np.atleast_1d(a), np.atleast_1d(mask).shape)[tuple(idx)].item()
            for a in arrays]
    where = "" if np.ndim(mask) == 0 else f" at index {tuple(int(i) for i in idx)}"
    return ", ".join(repr(v) for v in vals) + where


def check_unit_interval(name: str, value: Any, *, fn: str) -> None:
    """Raise ValueError if a concrete `value` has an entry outside [0, 1] (or NaN)."""
    v = concrete(value)
    if v is None:
        return
    if v.size == 0:
        raise ValueError(f"{fn}: {name} is empty; expected values in [0, 1]")
    bad = ~((v >= 0) & (v <= 1))
    if np.any(bad):
        raise ValueError(f"{fn}: {name} must be in [0, 1], got {first_bad(bad, v)}")


def check_matrix(name: str, x: Any, *, fn: str, ndim: int = 2) -> tuple[int, ...]:
    """Raise ValueError unless `x` has `ndim` dims, each >= 1; returns the shape."""
    shape = tuple(np.shape(x))
    if len(shape) != ndim:
        raise ValueError(f"{fn}: {name} must have {ndim} dims (problems, samples), got shape "
                         f"{shape}")
    if any(d < 1 for d in shape):
        raise ValueError(f"{fn}: {name} must be non-empty (every dim >= 1), got shape {shape}")
    return shape


def check_ks(ks: Any, n: int | None, *, fn: str) -> tuple[int, ...]:
    """`ks` as a tuple of Python ints, each in [1, n] (n=None: no upper bound)."""
    arr = np.asarray(ks)
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(f"{fn}: ks must be a non-empty int or 1-D sequence, got shape {arr.shape}")
    arr = np.atleast_1d(arr)
    if not (np.issubdtype(arr.dtype, np.integer)
            or (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)))):
        raise ValueError(f"{fn}: ks must be integers, got {arr.tolist()}")
    out = tuple(int(v) for v in arr)
    for v in out:
        if v < 1 or (n is not None and v > n):
            hi = "" if n is None else f" <= n={n}"
            raise ValueError(f"{fn}: every k must satisfy 1 <= k{hi}, got k={v}")
    return out
