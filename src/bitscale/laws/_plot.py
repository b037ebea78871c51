"""``plot_fit``: a fitted precision law against its runs (matplotlib, Agg backend).

Two panels: loss against a precision field (bits) and loss against tokens D. Points are runs;
each line is the law's prediction for one group of runs that share every other field, swept
along the panel's x-axis.

References:
    Kumar et al., arXiv:2411.04330 (Figs. 2-4: loss against bits per model size);
    Sun et al., arXiv:2501.02423 (loss against E, M, B and D).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bitscale.laws._runs import Run, check_runs

__all__ = ["plot_fit"]

_INT_FIELDS = ("exp_bits", "man_bits", "block_size")
_LOG_FIELDS = ("tokens", "n_params", "block_size")
_X_FIELDS = ("w_bits", "a_bits", "kv_bits", "exp_bits", "man_bits", "block_size", "tokens",
             "n_params")


def _groups(runs: list[Run], x: str, max_lines: int) -> list[list[Run]]:
    """Runs grouped by every field but x, loss and name; groups with >= 2 x values, at most
    ``max_lines`` of them spread over the sorted group keys."""
    key_fields = [f.name for f in dataclasses.fields(Run) if f.name not in (x, "loss", "name")]
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for r in runs:
        if getattr(r, x) is not None:
            groups.setdefault(tuple(getattr(r, f) for f in key_fields), []).append(r)
    keep = [g for _, g in sorted(groups.items(), key=lambda kv: repr(kv[0]))
            if len({getattr(r, x) for r in g}) >= 2]
    if len(keep) > max_lines:
        keep = [keep[i] for i in np.linspace(0, len(keep) - 1, max_lines).round().astype(int)]
    return keep


def _sweep(group: list[Run], x: str) -> np.ndarray:
    vals = np.asarray([float(getattr(r, x)) for r in group])
    lo, hi = vals.min(), vals.max()
    if x == "block_size":
        return 2.0 ** np.arange(np.floor(np.log2(lo)), np.ceil(np.log2(hi)) + 1)
    if x in _INT_FIELDS:
        return np.arange(lo, hi + 1)
    if x in _LOG_FIELDS:
        return np.geomspace(lo, hi, 64)
    return np.linspace(lo, hi, 64)


def _label(r: Run, x: str) -> str:
    parts = []
    if x != "n_params":
        parts.append(f"N={r.n_params:.3g}")
    if x != "tokens":
        parts.append(f"D={r.tokens:.3g}")
    for f in ("w_bits", "a_bits", "kv_bits", "exp_bits", "man_bits", "block_size"):
        v = getattr(r, f)
        if f != x and v is not None:
            parts.append(f"{f.split('_')[0]}={v:g}")
    return " ".join(parts)


def plot_fit(law: Any, runs: Sequence[Run], path: str | os.PathLike[str], *,
             bits_field: str | None = None, title: str = "", max_lines: int = 6) -> str:
    """Write a PNG of ``law`` (a fitted KumarLaw or SunLaw) against ``runs``; returns the path.

    Left panel: loss against ``bits_field`` (default: the law's ``default_bits_field``,
    ``w_bits`` for Kumar, ``man_bits`` for Sun); right panel: loss against tokens D (log x).
    Points: runs; lines: the law swept along x for up to ``max_lines`` groups of runs that share
    all other fields (groups with a single x value are drawn as points only).
    """
    fn = "plot_fit"
    runs = check_runs(runs, fn=fn)
    if not callable(getattr(law, "predict_runs", None)):
        raise ValueError(f"{fn}: law must be a fitted law (KumarLaw, SunLaw), got {law!r}")
    bits_field = bits_field or getattr(law, "default_bits_field", "w_bits")
    if bits_field not in _X_FIELDS:
        raise ValueError(f"{fn}: bits_field must be one of {_X_FIELDS}, got {bits_field!r}")
    if not isinstance(max_lines, int) or max_lines < 1:
        raise ValueError(f"{fn}: max_lines must be an int >= 1, got {max_lines!r}")
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plot_fit needs matplotlib (pip install matplotlib)") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    try:
        for ax, x in zip(axes, (bits_field, "tokens")):
            xs_all = [getattr(r, x) for r in runs if getattr(r, x) is not None]
            ax.scatter(xs_all, [r.loss for r in runs if getattr(r, x) is not None], s=10,
                       color="0.6", label="runs", zorder=1)
            for group in _groups(runs, x, max_lines):
                sweep = _sweep(group, x)
                pred = law.predict_runs([dataclasses.replace(group[0], **{
                    x: int(v) if x in _INT_FIELDS else float(v)}) for v in sweep])
                (line,) = ax.plot(sweep, pred, "-", linewidth=1.3, label=_label(group[0], x),
                                  zorder=2)
                ax.scatter([getattr(r, x) for r in group], [r.loss for r in group], s=22,
                           color=line.get_color(), edgecolors="k", linewidths=0.4, zorder=3)
            if x in _LOG_FIELDS:
                ax.set_xscale("log", base=2 if x == "block_size" else 10)
            ax.set_xlabel(x)
            ax.set_ylabel("loss")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6)
        fig.suptitle(title or f"{type(law).__name__} fit")
        fig.tight_layout()
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
