"""The run table the precision scaling laws are fitted to: one frozen ``Run`` per training run,
JSONL load/save, and column extraction with clear errors.

A run is (parameters N, tokens D, final loss) plus the precision it was trained in: bit widths of
weights / activations / KV cache (Kumar et al.), or the floating-point format E exponent bits,
M mantissa bits and scaling block size B (Sun et al.), and optionally a post-training
quantization width. ``None`` means "not quantized" (full precision) for that field.

References:
    Kumar et al., "Scaling Laws for Precision", arXiv:2411.04330.
    Sun et al., "Scaling Laws for Floating-Point Quantization Training", arXiv:2501.02423.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["Run", "load_runs", "save_runs", "runs_column", "check_values"]

_BIT_FIELDS = ("w_bits", "a_bits", "kv_bits", "post_bits")
_MAX_BITS = 64.0


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: size, data, final loss and the precision it was trained in.

    Attributes:
        n_params: N, the (non-embedding, or however the sweep counts them, consistently)
            parameter count; > 0.
        tokens: D, training tokens; > 0.
        loss: the final (validation) loss; finite and > 0.
        w_bits, a_bits, kv_bits: integer-like bit widths (0 < P <= 64) of weights, activations
            and KV cache in quantization-aware training (Kumar et al.); None = not quantized.
        exp_bits, man_bits: E >= 0 and M >= 0, the exponent and mantissa bits of the FP format
            (Sun et al.); None = not given.
        block_size: B >= 1, how many elements share one scale (Sun et al.); None = not given.
        post_bits: bit width of post-training quantization of the weights (Kumar et al.'s
            P_post); None = no PTQ.
        name: a free-form label (not used by the fits).
    """

    n_params: float
    tokens: float
    loss: float
    w_bits: float | None = None
    a_bits: float | None = None
    kv_bits: float | None = None
    exp_bits: int | None = None
    man_bits: int | None = None
    block_size: int | None = None
    post_bits: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("n_params", "tokens", "loss"):
            v = getattr(self, field)
            if not _is_real(v) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"Run: {field} must be a finite number > 0, got {v!r}"
                                 + (f" (run {self.name!r})" if self.name else ""))
        for field in _BIT_FIELDS:
            v = getattr(self, field)
            if v is not None and not (_is_real(v) and 0 < v <= _MAX_BITS):
                raise ValueError(f"Run: {field} must be None (not quantized) or a bit width in "
                                 f"(0, {_MAX_BITS:g}], got {v!r}")
        for field, lo in (("exp_bits", 0), ("man_bits", 0), ("block_size", 1)):
            v = getattr(self, field)
            if v is not None and not (_is_real(v) and float(v).is_integer() and v >= lo):
                raise ValueError(f"Run: {field} must be None or an integer >= {lo}, got {v!r}")
        if self.exp_bits is not None and self.exp_bits > 16:
            raise ValueError(f"Run: exp_bits must be <= 16, got {self.exp_bits!r}")
        if self.man_bits is not None and self.man_bits > 52:
            raise ValueError(f"Run: man_bits must be <= 52, got {self.man_bits!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        """A Run from a mapping with the field names above; unknown keys raise a ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Run.from_dict: unknown keys {unknown}; accepted: {sorted(names)}")
        missing = [k for k in ("n_params", "tokens", "loss") if k not in d]
        if missing:
            raise ValueError(f"Run.from_dict: missing required keys {missing}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (None and empty name left out), JSON-serialisable."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != ""}


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def load_runs(path: str | os.PathLike[str]) -> list[Run]:
    """Runs from a JSONL file, one JSON object (``Run`` field names) a line; blank lines skipped.

    Errors name the file and line.
    """
    runs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                runs.append(Run.from_dict(obj))
            except ValueError as e:
                raise ValueError(f"load_runs: {os.fspath(path)}:{i}: {e}") from e
    if not runs:
        raise ValueError(f"load_runs: {os.fspath(path)} holds no runs")
    return runs


def save_runs(runs: Iterable[Run], path: str | os.PathLike[str]) -> str:
    """Writes runs as JSONL (one object a line); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in runs:
            f.write(json.dumps(r.to_dict()) + "\n")
    return path


def runs_column(runs: Sequence[Run], field: str, *, fn: str, required: bool = True,
                fill: float = np.nan) -> np.ndarray:
    """Column ``field`` of ``runs`` as float64 [R]; a None raises (``required``) or is ``fill``."""
    if field not in {f.name for f in dataclasses.fields(Run)}:
        raise ValueError(f"{fn}: unknown run field {field!r}")
    vals = [getattr(r, field) for r in runs]
    if required:
        bad = [i for i, v in enumerate(vals) if v is None]
        if bad:
            raise ValueError(f"{fn}: run {bad[0]} ({runs[bad[0]].name or 'unnamed'}) has no "
                             f"{field}; every run needs it for this law ({len(bad)} missing)")
    return np.asarray([fill if v is None else float(v) for v in vals], np.float64)


def check_runs(runs: Any, *, fn: str) -> list[Run]:
    """``runs`` as a non-empty list of Run, or a ValueError naming what was passed."""
    if isinstance(runs, Run) or not isinstance(runs, Iterable):
        raise ValueError(f"{fn}: runs must be a sequence of Run, got {type(runs).__name__}")
    out = list(runs)
    if not out:
        raise ValueError(f"{fn}: runs is empty")
    bad = [i for i, r in enumerate(out) if not isinstance(r, Run)]
    if bad:
        raise ValueError(f"{fn}: runs[{bad[0]}] is a {type(out[bad[0]]).__name__}, not a Run "
                         f"(use Run(...) or load_runs)")
    return out


def check_values(name: str, x: Any, *, fn: str, lo: float = 0.0, strict: bool = True,
                 allow_inf: bool = False) -> None:
    """ValueError unless every element of ``x`` is finite (or +inf, with ``allow_inf``: an
    unquantized part) and ``> lo`` (``>= lo`` unless ``strict``); traced values pass unchecked.

    The one argument check of the laws' ``predict`` methods and ``ptq_degradation``.
    """
    if isinstance(x, jax.core.Tracer):
        return
    v = np.asarray(x, np.float64)
    ok = ((v > lo) if strict else (v >= lo)) & (np.isfinite(v) | (allow_inf & (v == np.inf)))
    if not np.all(ok):
        what = f"{'>' if strict else '>='} {lo:g}"
        what = f"{what} (or +inf for unquantized)" if allow_inf else f"finite and {what}"
        raise ValueError(f"{fn}: {name} must be {what}, got {float(v[~ok].reshape(-1)[0])!r}")
