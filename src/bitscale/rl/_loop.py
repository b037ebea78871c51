"""The RL loop: `train_rl(config, workdir)` samples, scores and updates, resumably.

Each step ``s`` (1-based) takes the next ``rl.prompts_per_step`` prompts of the task's train split
(a deterministic, resumable stream position), samples G completions of each with the current
policy (`bitscale.rl.rollout`; G + 1 for MC-GRPO), scores them with the task's verifier and runs
the jitted RL step (`bitscale.rl.make_rl_step`). Habits of `bitscale.train.train`: the state is
donated; metrics of step ``s`` reach the host after step ``s + 1`` is dispatched (and before
every checkpoint); a non-finite loss or gradient norm stops the run naming the step, before
anything containing it is saved; checkpoints hold the whole state plus the prompt position, so a
killed run restarted with the same command ends bit-identical to an uninterrupted one; a resumed
run whose config changed is refused.

Start: ``rl.init_checkpoint`` is a `bitscale.train` workdir (its ``config.json`` says how its
optimizer state is laid out; its model must be ``cfg.model``). The policy starts from its
parameters cast to ``cfg.policy``'s dtype, the frozen reference from the same parameters cast
to ``rl.ref_policy``'s (which may be another precision, e.g. a bf16 reference for an fp8
policy). An empty ``init_checkpoint`` starts from a random initialisation (with a warning).

Sampling key of step ``s``: ``fold_in(fold_in(key(seed), _ROLLOUT_STREAM), s)``.

References:
  Shao et al., "DeepSeekMath" (GRPO), arXiv:2402.03300.
  Schulman et al., "Proximal Policy Optimization Algorithms", arXiv:1707.06347.
  nanodo (https://github.com/google-deepmind/nanodo): pure jitted step, metrics one step late.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale.rl._config import RESUMABLE_RL_KEYS, RLConfig, read_rl_config
from bitscale.rl._rollout import rollout
from bitscale.rl._step import RLState, make_rl_step
from bitscale.train import (StepDriver, check_resume_config, create_train_state, evaluate,
                            make_optimizer, make_schedule, restore_model, saved_config)
from bitscale.train.checkpoint import Checkpointer
from bitscale.train.metrics import MetricsWriter, Progress
from bitscale.train.sections import MeshConfig, OptimConfig, read_section

__all__ = ["initial_model", "reference_model", "rl_state", "train_rl"]

_ROLLOUT_STREAM = 0x524F4C4C  # fold_in constant of the sampling keys


def initial_model(cfg: Any, rlc: RLConfig, mesh: Mesh) -> nnx.Module:
    """The starting model: ``rl.init_checkpoint``'s parameters under the policy it trained with
    (its ``config.json``'s, else ``cfg.policy``), else a random init of ``cfg.model``."""
    if not rlc.init_checkpoint:
        logging.warning("rl.init_checkpoint is empty: RL starts from a RANDOM initialisation "
                        "(seed %d); rewards will stay near zero on most tasks. Train one first, "
                        "e.g. python -m bitscale.train --config=configs/demo.py "
                        "--workdir=runs/sft", int(cfg.seed))
        return bnn.Llama(cfg.model, cfg.policy, rngs=nnx.Rngs(int(cfg.seed)))
    trained = (saved_config(rlc.init_checkpoint) or {}).get("policy")
    trained = trained if isinstance(trained, str) else cfg.policy
    model, step = restore_model(rlc.init_checkpoint, cfg.model, trained_policy=trained,
                                mesh=mesh)
    logging.info("RL starts from %s (step %d, policy %s)", rlc.init_checkpoint, step, trained)
    return model


def rl_state(cfg: Any, start_model: nnx.Module | None, tx, mesh: Mesh):
    """``(graphdef, state, shardings)`` of a fresh RL run: ``start_model``'s parameters cast to
    ``cfg.policy`` and ``tx``'s initial state; with ``start_model=None`` a random state of the
    same layout (the restore target of a resumed run)."""
    model = bnn.Llama(cfg.model, cfg.policy, rngs=nnx.Rngs(int(cfg.seed)))
    if start_model is not None:
        nnx.update(model, nnx.state(bnn.with_policy(start_model, cfg.policy), nnx.Param))
    graphdef, state, shardings = create_train_state(model, tx, mesh, seed=int(cfg.seed))
    return graphdef, RLState(*state), RLState(*shardings)


def reference_model(start_model: nnx.Module, policy: Any, mesh: Mesh):
    """The frozen reference: ``(graphdef, params, shardings)`` of ``start_model`` under
    ``policy``, sharded over ``mesh``."""
    ref = bnn.shard_model(bnn.with_policy(start_model, policy), mesh)
    graphdef, params = nnx.split(ref, nnx.Param)
    return graphdef, params, jax.tree.map(lambda x: x.sharding, params)


def train_rl(config, workdir: str, *, mesh: Mesh | None = None,
             on_step: Callable[[int, dict], None] | None = None,
             init_model: nnx.Module | None = None, task: Any = None,
             tokenizer: bdata.Tokenizer | None = None) -> dict:
    """RL-trains (or resumes) the run in ``workdir``; returns the final state and last metrics.

    Args:
      config: a locked ConfigDict with ``model``, ``policy``, ``seed``, ``data``, ``optim``,
        optionally ``mesh``, and ``rl`` (`RLConfig`; e.g. configs/grpo_arith.py).
      workdir: run directory: ``checkpoints/``, ``metrics.jsonl``, ``tb/``, ``config.json``.
      on_step: ``on_step(step, metrics)`` as each step's metrics reach the host (one step late);
        metrics are floats: the step's (`make_rl_step`) and the rollout's (``reward_mean``,
        ``accuracy``, ``mean_length``, ``truncation_rate``, ...; `Rollout.metrics`), plus
        ``eval_accuracy`` (greedy, held-out) every ``rl.eval_every`` steps.
      init_model: start from this model's parameters instead of ``rl.init_checkpoint`` (any
        precision; they are cast to the policy's and the reference's dtypes).
      task, tokenizer: override ``bitscale.data.make_task(cfg.data)`` and the
        `bitscale.data.CharTokenizer`.
    Returns:
      dict with ``step``, ``state`` (`RLState`), ``metrics`` (last step's), ``stopped`` (True if
      ``rl.stop_after`` cut the run short), ``resumed_from`` (checkpoint step or None),
      ``model`` (the policy `Llama` with the final parameters) and ``eval`` (list of
      ``(step, held-out accuracy)``, step 0 for the starting model; this run's only).
    Raises:
      FloatingPointError: a non-finite loss or gradient norm, naming the step; nothing containing
        it is saved.
      bitscale.train.checkpoint.CheckpointError: a corrupt or mismatched checkpoint, an init
        checkpoint that does not match ``cfg.model``, or a resumed run whose config changed.
      ValueError: an invalid ``rl``, ``optim`` or ``mesh`` section (`read_rl_config`).
    """
    cfg = config
    s = read_rl_config(cfg)
    optim = read_section(OptimConfig, cfg.get("optim", None), "optim")
    step_cfg, ro_cfg = s.step_config(), s.rollout_config()
    mesh = mesh if mesh is not None else read_section(MeshConfig, cfg.get("mesh", None),
                                                      "mesh").make()
    task = task if task is not None else bdata.make_task(cfg.data)
    tok = tokenizer if tokenizer is not None else bdata.CharTokenizer()
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=s.max_to_keep)
    driver = None
    try:
        resumed = ckpt.latest_step()
        check_resume_config(cfg, workdir, resuming=resumed is not None,
                            resumable=RESUMABLE_RL_KEYS)
        start_model = None  # the init model: the policy's start, the reference's parameters
        if init_model is not None:
            start_model = init_model
        elif resumed is None or step_cfg.use_ref:
            start_model = initial_model(cfg, s, mesh)
        updates = s.steps * s.ppo_epochs  # optimizer updates: the schedule's length
        tx = make_optimizer(optim, updates, seed=int(cfg.seed))
        graphdef, state, sh = rl_state(cfg, start_model if resumed is None else None, tx, mesh)
        start, position = 0, 0
        if resumed is not None:
            state, meta = ckpt.restore(resumed, state, sh)
            start, position = int(meta["step"]), int(meta["position"])
            logging.info("resumed from %s at step %d (prompt position %d)", ckpt.directory,
                         start, position)
        ref_graphdef = ref_params = ref_sh = None
        if step_cfg.use_ref:
            ref_graphdef, ref_params, ref_sh = reference_model(
                start_model, s.reference_policy(cfg.policy), mesh)
        rows = s.prompts_per_step * ro_cfg.n
        row_sh = NamedSharding(mesh, bnn.batch_spec(mesh, rows))
        replicated = NamedSharding(mesh, P())
        batch_sh = {"tokens": row_sh, "attention_mask": row_sh, "completion_mask": row_sh,
                    "sampler_logp": row_sh, "rewards": replicated}
        step_fn = make_rl_step(graphdef, tx, step_cfg, ref_graphdef=ref_graphdef,
                               schedule=make_schedule(optim, updates),
                               shardings=(sh, ref_sh, batch_sh))
        writer = MetricsWriter(workdir, resume_step=start)
        driver = StepDriver("RL", total=s.steps, ckpt=ckpt, on_step=on_step, writer=writer,
                            progress=Progress(s.steps, start, enabled=s.progress,
                                              keys=("loss", "reward_mean")),
                            log_every=s.log_every, checkpoint_every=s.checkpoint_every,
                            stop_after=s.stop_after, always_log=("eval_accuracy",))
        stream = bdata.batches(task, cfg.data.split, s.prompts_per_step, int(cfg.seed), tok,
                               max_prompt_len=cfg.data.max_prompt_len, max_len=cfg.data.max_len,
                               start=position, loss_on="answer")
        eval_examples = (task.generate("test", s.eval_problems, int(cfg.seed))
                         if s.eval_every else [])
        rollout_key = jax.random.fold_in(jax.random.key(int(cfg.seed)), _ROLLOUT_STREAM)
        evals: list[tuple[int, float]] = []

        def held_out(params) -> float:
            acc = evaluate.accuracy(nnx.merge(graphdef, params), eval_examples, task, tok,
                                    batch_size=min(64, len(eval_examples)),
                                    max_prompt_len=cfg.data.max_prompt_len,
                                    max_new_tokens=s.max_new_tokens)
            return float(acc["accuracy"])

        if s.eval_every and start == 0:
            evals.append((0, held_out(state.params)))
            writer.write(0, {"eval_accuracy": evals[-1][1]})
        step = start
        for step in range(start + 1, s.steps + 1):
            batch = next(stream)
            ro = rollout(nnx.merge(graphdef, state.params), batch.arrays["prompt"],
                         batch.arrays["prompt_mask"], batch.examples, task, tok, config=ro_cfg,
                         key=jax.random.fold_in(rollout_key, step))
            host = ro.metrics()
            state, m_dev = step_fn(state, ref_params, ro.batch)
            driver.submit(step, m_dev, host)  # drains step - 1; host is read when step drains
            if s.eval_every and (step % s.eval_every == 0 or step == s.steps):
                host["eval_accuracy"] = held_out(state.params)
                evals.append((step, host["eval_accuracy"]))
            if driver.end_step(step, state, {"position": batch.next_position}):
                break
        driver.finish()
    finally:
        if driver is not None:
            driver.close()
        else:
            ckpt.close()
    return {"step": step, "state": state, "metrics": dict(driver.last), "stopped": driver.stopped,
            "resumed_from": resumed, "model": nnx.merge(graphdef, state.params), "eval": evals}

