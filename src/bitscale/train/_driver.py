"""`StepDriver`: the host side of a training loop's steps (shared by `bitscale.train.train` and
`bitscale.rl.train_rl`).

Guarantees:
  * one step late: `submit` of step ``s`` fetches step ``s - 1``'s device metrics, i.e. only after
    step ``s`` is dispatched, so the host never makes the device wait between steps;
  * never an unchecked save: `save` (and `end_step` on a checkpoint step) first drains the step,
    and a non-finite ``loss`` or ``grad_norm`` raises `FloatingPointError` naming the step before
    its metrics are written or anything containing it is saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jax

from bitscale.train.checkpoint import Checkpointer
from bitscale.train.metrics import MetricsWriter, Progress

__all__ = ["StepDriver"]


class StepDriver:
    """Drains, checks, logs and checkpoints the steps of a run of ``total`` steps.

    A drained step's metrics (device ones as floats, then its host ones) go to ``writer`` on
    step 1, every ``log_every`` steps, the last step and any step with a key of ``always_log``;
    to ``progress`` and ``on_step(step, metrics)`` always; and become `last`.

    Args:
      name: names the run in the non-finite error ("non-finite {name} metrics at step ...").
      checkpoint_every, stop_after: `end_step`'s save period and early stop (0: none).
    """

    def __init__(self, name: str, *, total: int, writer: MetricsWriter, progress: Progress,
                 ckpt: Checkpointer, log_every: int, checkpoint_every: int, stop_after: int = 0,
                 on_step: Callable[[int, dict], None] | None = None,
                 always_log: Collection[str] = ()):
        self.name, self.total, self.log_every = name, int(total), int(log_every)
        self.checkpoint_every, self.stop_after = int(checkpoint_every), int(stop_after or 0)
        self.writer, self.progress, self.ckpt = writer, progress, ckpt
        self.on_step, self.always_log = on_step, tuple(always_log)
        self.last: dict[str, float] = {}
        self.stopped = False
        self._pending: tuple[int, Any, Mapping[str, float]] | None = None

    def submit(self, step: int, metrics: Any, host: Mapping[str, float] | None = None) -> None:
        """Queues dispatched step ``step``'s device ``metrics`` and drains the previous step.

        ``host`` is read when the step is drained: entries added until then are included.
        """
        pending, self._pending = self._pending, (step, metrics, {} if host is None else host)
        if pending is not None:
            self._drain(*pending)

    def flush(self) -> None:
        """Drains the queued step, if any (blocks on the device)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._drain(*pending)

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Drains (checks) the queued step, then checkpoints ``state`` as step ``step``."""
        self.flush()
        self.ckpt.save(step, state, meta)

    def end_step(self, step: int, state: Any, meta: dict) -> bool:
        """Ends submitted step ``step``: True (drained, `stopped` set) if ``stop_after`` stops the
        run here, else False after saving on a checkpoint step (``checkpoint_every``, the last)."""
        if self.stop_after and self.total > step >= self.stop_after:
            self.flush()
            self.stopped = True
            return True
        if step % self.checkpoint_every == 0 or step == self.total:
            self.save(step, state, meta)
        return False

    def finish(self) -> None:
        """Drains the queued step and waits for pending checkpoint writes."""
        self.flush()
        self.ckpt.wait()

    def close(self) -> None:
        """Closes the progress display, the metrics writer and the checkpointer."""
        self.progress.close()
        self.writer.close()
        self.ckpt.close()

    def _drain(self, step: int, metrics: Any, host: Mapping[str, float]) -> None:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            raise FloatingPointError(
                f"non-finite {self.name} metrics at step {step}: loss={m['loss']}, "
                f"grad_norm={m['grad_norm']}; stopped without saving it (latest checkpoint: "
                f"step {self.ckpt.latest_step()} in {self.ckpt.directory})")
        m.update(host)
        if (step == 1 or step % self.log_every == 0 or step == self.total
                or any(k in m for k in self.always_log)):
            self.writer.write(step, m)
        self.progress.update(step, m)
        if self.on_step is not None:
            self.on_step(step, m)
        self.last = dict(m)
