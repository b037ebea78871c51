"""The supervised training loop: `train(config, workdir)`, resumable and bit-identical.

Habits (nanodo): the step (`bitscale.train.make_train_step`) is jitted once with explicit
shardings and the state donated; metrics of step ``t`` are fetched after step ``t + 1`` is
dispatched (and before every checkpoint); a non-finite loss or gradient norm raises naming the
step, before anything containing it is saved. Checkpoints hold the whole state plus the data
stream position, so a run killed at any point and restarted with the same command ends
bit-identical to an uninterrupted one. Checkpoint ``s`` holds the state after ``s`` updates.

Data: ``cfg.data.train_examples = 0`` (or absent) streams fresh examples of the task forever;
``n > 0`` trains on the finite pool ``task.generate(split, n, seed)``, reshuffled every epoch
(`bitscale.data.batches`), e.g. to study over-training on a fixed set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale.train._driver import StepDriver
from bitscale.train.checkpoint import Checkpointer
from bitscale.train.metrics import MetricsWriter, Progress
from bitscale.train._resume import check_resume_config
from bitscale.train.sections import RunConfig
from bitscale.train._state import create_train_state, make_optimizer, make_schedule
from bitscale.train._step import BATCH_FIELDS, make_train_step

__all__ = ["train", "train_source"]


def _stack(arrays: dict, accum: int) -> dict:
    return {k: np.asarray(arrays[k]).reshape(accum, -1, *arrays[k].shape[1:])
            for k in BATCH_FIELDS}


def train_source(task: Any, data: Any, seed: int) -> Any:
    """What the loop streams: ``task`` itself (``data["train_examples"]`` 0 or absent: fresh
    examples forever) or the finite pool ``task.generate(data["split"], n, seed)`` (n > 0).

    Raises:
      ValueError: ``train_examples`` is not an int >= 0.
    """
    n = data.get("train_examples", 0)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"cfg.data.train_examples must be an int >= 0 (0: an infinite stream of "
                         f"fresh examples; n > 0: a finite pool of n examples), got {n!r}")
    return task.generate(data["split"], int(n), seed) if n > 0 else task


def train(config: Any, workdir: str, *, mesh: Mesh | None = None,
          on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the final state and last metrics.

    Args:
      config: the run's ConfigDict (see configs/tiny.py; read as a `RunConfig`).
      workdir: run directory: ``checkpoints/``, ``metrics.jsonl``, ``tb/``, ``config.json``.
      mesh: overrides ``cfg.mesh``.
      on_step: ``on_step(step, metrics)`` as each step's metrics reach the host (one step late).
    Returns:
      dict with ``step`` (updates done), ``state`` (`TrainState`), ``metrics`` (last step's, as
      floats), ``stopped`` (True if ``train.stop_after`` cut the run short), ``resumed_from``
      (checkpoint step restored, or None).
    Raises:
      ValueError: an invalid config section (named).
      FloatingPointError: non-finite loss or gradient norm at a step (named); nothing containing
        it is saved, the checkpoints on disk stay restorable.
      bitscale.train.checkpoint.CheckpointError: a corrupt or mismatched checkpoint directory, or
        a resumed run whose config differs from the one it started with (`check_resume_config`).
    """
    run = RunConfig.of(config)
    t = run.train
    task = bdata.make_task(run.data)
    source = train_source(task, run.data, run.seed)
    mesh = mesh if mesh is not None else run.mesh.make()
    os.makedirs(workdir, exist_ok=True)
    tx = make_optimizer(run.optim, t.steps, seed=run.seed)
    model = bnn.Llama(run.model, run.policy, rngs=nnx.Rngs(run.seed))
    graphdef, state, shardings = create_train_state(model, tx, mesh, seed=run.seed)
    del model
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.max_to_keep)
    start, position, resumed = 0, 0, ckpt.latest_step()
    check_resume_config(config, workdir, resuming=resumed is not None)
    if resumed is not None:
        state, meta = ckpt.restore(resumed, state, shardings)
        start, position = int(meta["step"]), int(meta["position"])
        logging.info("resumed from %s at step %d (data position %d)", ckpt.directory, start,
                     position)
    step_fn = make_train_step(graphdef, tx, make_schedule(run.optim, t.steps), loss=run.loss,
                              train=t, state_shardings=shardings, mesh=mesh)
    driver = StepDriver("training", total=t.steps, ckpt=ckpt, on_step=on_step,
                        writer=MetricsWriter(workdir, resume_step=start),
                        progress=Progress(t.steps, start, enabled=t.progress),
                        log_every=t.log_every, checkpoint_every=t.checkpoint_every,
                        stop_after=t.stop_after)
    d = run.data
    stream = bdata.batches(source, d["split"], t.batch_size, run.seed, bdata.CharTokenizer(),
                           max_prompt_len=d["max_prompt_len"], max_len=d["max_len"],
                           start=position, loss_on=d.get("loss_on", "answer"))
    s = start
    try:
        for s in range(start + 1, t.steps + 1):
            batch = next(stream)
            state, m_dev = step_fn(state, _stack(batch.arrays, t.grad_accum))
            driver.submit(s, m_dev)
            if driver.end_step(s, state, {"position": batch.next_position}):
                break
        driver.finish()
    finally:
        driver.close()
    return {"step": s, "state": state, "metrics": dict(driver.last), "stopped": driver.stopped,
            "resumed_from": resumed}
