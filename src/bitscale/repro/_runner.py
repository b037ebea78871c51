"""Config-driven study (``python -m bitscale.repro``): load or train the model, run, report.

The config (``configs/repro.py``) holds ``run`` (a `bitscale.train` config: model, policy,
data, optimizer), the evaluation set, the grid and the reference cell. The model comes from
``--checkpoint`` (a `bitscale.train` run directory, or its ``checkpoints/``, written with the
same ``run`` config), else is trained for ``run.train.steps`` steps into ``<workdir>/train``
when ``train_model`` is set (rerunning reuses it), else is randomly initialized (a smoke run:
greedy outputs of an untrained model are noise, but the numerics of the comparison are real).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale.repro._report import write_report
from bitscale.repro._study import Cell, make_grid, run_study


def load_model(run_cfg, checkpoint: str | None = None) -> bnn.Llama:
    """The model of a `bitscale.train` config: restored from ``checkpoint`` (the latest step of
    a run directory or of its ``checkpoints/``), or randomly initialized when None."""
    if checkpoint is None:
        return bnn.Llama(run_cfg.model, run_cfg.policy, rngs=nnx.Rngs(int(run_cfg.seed)))
    from bitscale.train import loop as train_loop
    from bitscale.train.checkpoint import Checkpointer

    sub = os.path.join(checkpoint, "checkpoints")
    directory = sub if os.path.isdir(sub) else checkpoint
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {checkpoint!r} does not exist")
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {directory!r}")
        graphdef, _, state, shardings = train_loop.create_train_state(run_cfg, bnn.make_mesh())
        restored, _ = ckpt.restore(step, state, shardings)
    finally:
        ckpt.close()
    return nnx.merge(graphdef, jax.device_get(restored.params))


def run_from_config(cfg, workdir: str, checkpoint: str | None = None,
                    progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Runs the study a ``configs/repro.py``-style config describes; writes the report files
    under ``workdir`` and returns the `run_study` result (plus ``source`` and ``files``)."""
    run = cfg.run
    if checkpoint:
        model, source = load_model(run, checkpoint), f"checkpoint `{checkpoint}`"
    elif cfg.train_model:
        from bitscale.train import loop as train_loop

        train_dir = os.path.join(workdir, "train")
        train_loop.train(run, train_dir)
        model = load_model(run, train_dir)
        source = f"trained {run.train.steps} steps (`bitscale.train`, {train_dir})"
    else:
        model, source = load_model(run), f"random init (seed {run.seed}; smoke run)"
    from bitscale.train import loop as train_loop

    task = train_loop.make_task(run)
    tok = bdata.CharTokenizer()
    examples = task.generate(cfg.eval.split, int(cfg.eval.num_problems), int(cfg.eval.seed))
    grid = make_grid(cfg.grid.policies, cfg.grid.batch_sizes, cfg.grid.orders,
                     cfg.grid.acc_dtypes)
    ref = cfg.reference
    reference = Cell(ref.policy, int(ref.batch_size), ref.order, ref.acc_dtype)
    result = run_study(model, task, tok, examples, grid, reference=reference,
                       max_prompt_len=int(cfg.eval.max_prompt_len),
                       max_new_tokens=int(cfg.eval.max_new_tokens), progress=progress,
                       strategy=cfg.eval.get("strategy", "greedy"),
                       seed=int(cfg.eval.get("sample_seed", 0)))
    m = run.model
    n_params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    result["source"] = source
    intro = (f"Model: Llama, {n_params / 1e6:.2f}M parameters (hidden {m.hidden_size}, "
             f"{m.num_layers} layers, {m.num_heads}/{m.num_kv_heads} heads), {source}. Task: "
             f"{task.name} ({cfg.eval.split} split), {len(examples)} problems. Machine: "
             f"{jax.devices()[0].platform}, jax {jax.__version__}.")
    result["files"] = write_report(result, workdir, intro=intro)
    return result
