"""Divergence metrics of greedy outputs: which problems changed, where, and by how much.

An output set is ``(tokens [N, T], lengths [N])``: the generated tokens of N problems and how
many of them count (up to and including EOS), as `bitscale.train.evaluate.greedy_decode`
returns them.

* `first_divergence`: per problem, the index of the first generated token that differs from the
  reference (-1 when the two outputs are identical; ``min(len_a, len_b)`` when one is a strict
  prefix of the other).
* `divergence`: fraction of problems that differ and a summary of their first-divergence indices.
* `group_divergence`: the same across a group of runs (a problem diverges when any run differs
  from the group's first; its index is the earliest such index): the paper's ``Div_Index``.
* `std_at_acc`: mean and standard deviation of accuracy across runs (``Std@Acc``).
* `length_spread`: per-problem standard deviation and range of output length across runs,
  averaged over problems (``Avg_Std@Output_Length``).

References:
  Yuan et al., "Give Me FP32 or Give Me Death? Challenges and Solutions for Reproducible
    Reasoning", arXiv:2506.09501 (Std@Acc, Avg_Std@Output_Length, Div_Index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Outputs = tuple[Any, Any]
"""``(tokens [N, T] int, lengths [N] int)``."""


def _check(outputs: Outputs, name: str) -> tuple[np.ndarray, np.ndarray]:
    tokens, lengths = np.asarray(outputs[0]), np.asarray(outputs[1])
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise ValueError(f"{name}: need tokens [N, T] and lengths [N], got {tokens.shape} and "
                         f"{lengths.shape}")
    if np.any(lengths < 0) or np.any(lengths > tokens.shape[1]):
        raise ValueError(f"{name}: lengths must lie in [0, {tokens.shape[1]}]")
    return tokens, lengths.astype(np.int64)


def first_divergence(reference: Outputs, other: Outputs) -> np.ndarray:
    """int64 [N]: first differing token index per problem, -1 where identical."""
    rt, rl = _check(reference, "reference")
    ot, ol = _check(other, "other")
    if rt.shape[0] != ot.shape[0]:
        raise ValueError(f"different numbers of problems: {rt.shape[0]} vs {ot.shape[0]}")
    out = np.full(rt.shape[0], -1, np.int64)
    for i in range(rt.shape[0]):
        n = min(rl[i], ol[i])
        diff = np.flatnonzero(rt[i, :n] != ot[i, :n])
        if diff.size:
            out[i] = diff[0]
        elif rl[i] != ol[i]:
            out[i] = n
    return out


def summarize_indices(indices) -> dict[str, Any]:
    """Count, mean, median, min, max, 10th / 90th percentile of the indices >= 0 (None when
    no problem diverged)."""
    idx = np.asarray(indices, np.int64)
    d = idx[idx >= 0]
    if d.size == 0:
        return {"count": 0, "mean": None, "median": None, "min": None, "max": None,
                "p10": None, "p90": None}
    return {"count": int(d.size), "mean": float(d.mean()), "median": float(np.median(d)),
            "min": int(d.min()), "max": int(d.max()), "p10": float(np.percentile(d, 10)),
            "p90": float(np.percentile(d, 90))}


def divergence(reference: Outputs, other: Outputs) -> dict[str, Any]:
    """``diverged_fraction``, ``first_divergence`` (per problem) and its ``summary``."""
    idx = first_divergence(reference, other)
    return {"diverged_fraction": float(np.mean(idx >= 0)) if idx.size else 0.0,
            "first_divergence": idx.tolist(), "summary": summarize_indices(idx)}


def group_divergence(runs: Sequence[Outputs]) -> dict[str, Any]:
    """Divergence within a group of runs, each compared with the first.

    Returns ``diverged_fraction`` (problems whose outputs are not all identical),
    ``first_divergence`` (per problem, the earliest index at which any run differs; -1 when all
    agree) and its ``summary``.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("group_divergence: no runs")
    n = _check(runs[0], "runs[0]")[0].shape[0]
    idx = np.full(n, -1, np.int64)
    for r in runs[1:]:
        d = first_divergence(runs[0], r)
        hit = d >= 0
        idx = np.where(hit & ((idx < 0) | (d < idx)), d, idx)
    return {"diverged_fraction": float(np.mean(idx >= 0)) if n else 0.0,
            "first_divergence": idx.tolist(), "summary": summarize_indices(idx)}


def std_at_acc(accuracies: Sequence[float]) -> dict[str, float]:
    """``mean`` and ``std`` (sample standard deviation, ddof=1; 0 for a single run) of the
    accuracies of several runs: the paper's Std@Acc."""
    a = np.asarray(list(accuracies), np.float64)
    if a.size == 0:
        raise ValueError("std_at_acc: no accuracies")
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max())}


def length_spread(lengths: Sequence[Any]) -> dict[str, float]:
    """Output-length spread across runs: ``lengths`` is one [N] array per run.

    Returns ``mean_length`` (over runs and problems), ``avg_std`` (per-problem sample std over
    runs, averaged over problems: Avg_Std@Output_Length), ``avg_range`` and ``max_range``
    (per-problem max - min over runs).
    """
    a = np.stack([np.asarray(x, np.float64) for x in lengths])
    if a.ndim != 2:
        raise ValueError(f"length_spread: need one [N] array per run, got shape {a.shape}")
    rng = a.max(0) - a.min(0)
    std = a.std(0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1])
    return {"mean_length": float(a.mean()), "avg_std": float(std.mean()),
            "avg_range": float(rng.mean()), "max_range": float(rng.max())}


def divergence_curve(indices, max_len: int) -> list[float]:
    """Fraction of problems diverged at or before each token index 0 .. max_len - 1."""
    idx = np.asarray(indices, np.int64)
    if idx.size == 0:
        return [0.0] * max_len
    return [float(np.mean((idx >= 0) & (idx <= t))) for t in range(max_len)]


def logit_distance(reference_logp: Any, other_logp: Any, mask: Any) -> dict[str, Any]:
    """How far two runs' next-token distributions are, on the same token sequences.

    Args:
      reference_logp, other_logp: float [N, T, V] log-probabilities (log-softmax of the logits)
        of the two runs at the same positions of the same sequences (e.g. both teacher-forced
        on the reference run's outputs).
      mask: [N, T], nonzero on the positions that count.
    Returns:
      ``max_abs`` (largest |log p_ref - log p_other| over counted positions and the vocabulary),
      ``mean_kl`` (KL(p_ref || p_other) in nats, averaged over counted positions; each
      position's KL clipped at 0, which rounding of the log-softmax can cross), ``max_kl``,
      ``argmax_flips`` (fraction of counted positions whose most likely token differs; ties go
      to the lowest id), ``problems_flipped`` (fraction of problems with at least one flip) and
      ``positions`` (how many counted). All 0 when nothing is counted.
    """
    ref = np.asarray(reference_logp, np.float64)
    oth = np.asarray(other_logp, np.float64)
    m = np.asarray(mask).astype(bool)
    if ref.ndim != 3 or ref.shape != oth.shape or m.shape != ref.shape[:2]:
        raise ValueError(f"logit_distance: need two [N, T, V] arrays and a [N, T] mask of one "
                         f"shape, got {ref.shape}, {oth.shape} and {m.shape}")
    if not (np.all(np.isfinite(ref[m])) and np.all(np.isfinite(oth[m]))):
        raise ValueError("logit_distance: non-finite log-probabilities at counted positions")
    if not m.any():
        return {"max_abs": 0.0, "mean_kl": 0.0, "max_kl": 0.0, "argmax_flips": 0.0,
                "problems_flipped": 0.0, "positions": 0}
    r, o = ref[m], oth[m]                                          # [M, V]
    kl = np.maximum(np.sum(np.exp(r) * (r - o), axis=-1), 0.0)  # >= 0 up to rounding
    flips = np.zeros(m.shape, bool)
    flips[m] = np.argmax(r, -1) != np.argmax(o, -1)
    return {"max_abs": float(np.max(np.abs(r - o))), "mean_kl": float(np.mean(kl)),
            "max_kl": float(np.max(kl)), "argmax_flips": float(np.mean(flips[m])),
            "problems_flipped": float(np.mean(flips.any(1))), "positions": int(m.sum())}
