"""Metrics writers: JSONL (always), TensorBoard event files (when a writer is importable), and a
one-line progress display on stderr.

``metrics.jsonl`` holds one JSON object per logged step, with Python floats (full float64 repr of
the float32 values, so they compare exactly). On resume, `MetricsWriter(..., resume_step=s)` drops
lines with ``step > s`` that a killed run wrote after its last checkpoint, so the file ends up the
same as an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any


__all__ = ["MetricsWriter", "Progress", "read_metrics"]


def _tb_writer(logdir: str):
    """A TensorBoard event-file writer (tensorboardX, which needs no TensorFlow)."""
    from tensorboardX import SummaryWriter
    return SummaryWriter(logdir)


class MetricsWriter:
    """Appends metric rows to ``<workdir>/metrics.jsonl`` and TensorBoard events in ``<workdir>/tb``.

    On resume the TensorBoard directory receives a new event file; TensorBoard shows the steps
    logged twice by a killed run once each (the later value wins).
    """

    def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        rows = read_metrics(self.path) if os.path.exists(self.path) else []
        kept = [r for r in rows if r["step"] <= resume_step]
        with open(self.path, "w") as f:  # rewrite: drop steps a killed run logged past its ckpt
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self._f = open(self.path, "a")  # noqa: SIM115 - closed by close()
        self._tb = _tb_writer(os.path.join(workdir, "tb")) if tensorboard else None

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        row = {"step": int(step)}
        row.update({k: float(v) for k, v in metrics.items()})
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics JSONL file (a partial last line from a kill is ignored)."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class Progress:
    """``\\rstep s/N loss ... steps/s`` on stderr, one ``name value`` per key of ``keys`` that the
    step's metrics hold; silent when disabled."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True,
                 keys: Sequence[str] = ("loss",)):
        self.total, self.start, self.enabled, self.keys = total, start, enabled, tuple(keys)
        self._t0 = time.perf_counter()

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        rate = (step - self.start) / max(time.perf_counter() - self._t0, 1e-9)
        shown = "".join(f" {k} {_fmt(float(metrics[k]))}" for k in self.keys if k in metrics)
        sys.stderr.write(f"\rstep {step}/{self.total}{shown} {rate:.1f} steps/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _fmt(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else str(v)
