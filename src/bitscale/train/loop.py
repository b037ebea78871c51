"""Supervised training loop: a pure train step jitted once, and a resumable `train(config, workdir)`.

Habits (nanodo): the step is a pure function of ``(TrainState, batch)`` jitted once with explicit
shardings and the state donated; metrics of step ``t`` are fetched after step ``t + 1`` is
dispatched (and before every checkpoint); a non-finite loss or gradient norm raises naming the
step, before anything containing it is saved. Checkpoints hold the whole state plus the data
stream position, so a run killed at any point and restarted with the same command ends
bit-identical to an uninterrupted one.

Step numbering: ``step s`` (1-based) is the ``s``-th update; its ``loss`` is measured on the
parameters after ``s - 1`` updates; checkpoint ``s`` holds the state after ``s`` updates.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale.train._driver import StepDriver
from bitscale.train.checkpoint import CheckpointError, Checkpointer
from bitscale.train.losses import dco_loss, masked_thought, ramped_rate, token_cross_entropy
from bitscale.train.metrics import MetricsWriter, Progress
from bitscale.train.sections import LOSS_DEFAULTS
from bitscale.train.qat import low_precision_master, scale_by_precision

__all__ = ["TASKS", "TrainState", "check_resume_config", "create_train_state", "make_mesh",
           "make_optimizer", "make_schedule", "make_task", "make_train_step", "restore_model",
           "train"]

BATCH_FIELDS = ("tokens", "loss_mask", "full_mask", "answer_mask")
TASKS = {"arithmetic": bdata.Arithmetic, "countdown": bdata.Countdown,
         "modular": bdata.ModularArithmetic}
LOSSES = ("ce", "dco")
# Config keys that may change between a run and its resumption (they do not change the result).
RESUMABLE_KEYS = ("train.stop_after", "train.progress", "train.log_every",
                  "train.checkpoint_every", "train.max_to_keep", "train.debug_nan_at_step")
_MT_STREAM = 0x4D54  # fold_in constant separating Masked Thought draws from rounding keys


class TrainState(NamedTuple):
    """Everything a step reads and writes; a pytree of arrays (checkpointed as is).

    Attributes:
      params: the model's `nnx.Param` state (from `nnx.split`).
      opt_state: the optax state.
      step: int32 scalar, updates done so far.
      rng: uint32 raw key data (`jax.random.key_data`); the stochastic-rounding key of step ``s``
        is ``fold_in(wrap_key_data(rng), s)`` and of its micro-batch ``i`` a further
        ``fold_in(., i)``.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def make_schedule(cfg) -> optax.Schedule:
    """Linear warmup to ``optim.lr`` then cosine decay to ``lr * end_lr_ratio`` at train.steps."""
    o = cfg.optim
    warmup = min(int(o.warmup_steps), int(cfg.train.steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=warmup,
        decay_steps=max(int(cfg.train.steps), warmup + 1), end_value=o.lr * o.end_lr_ratio)


def make_optimizer(cfg) -> optax.GradientTransformation:
    """clip -> adamw(warmup-cosine) -> [scale_by_precision] -> [low_precision_master]."""
    o = cfg.optim
    parts = []
    if o.clip_norm:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    parts.append(optax.adamw(make_schedule(cfg), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
    if o.lr_scales:
        parts.append(scale_by_precision({str(k): float(v) for k, v in o.lr_scales}))
    if o.master_spec:
        parts.append(low_precision_master(o.master_spec, seed=int(cfg.seed)))
    return optax.chain(*parts)


def create_train_state(cfg, mesh: Mesh):
    """Builds the model and optimizer; returns ``(graphdef, tx, state, state_shardings)``.

    Parameters are sharded by their logical axes (`bitscale.nn.param_specs`), optimizer moments
    like their parameters, everything else replicated.
    """
    model = bnn.Llama(cfg.model, cfg.policy, rngs=nnx.Rngs(int(cfg.seed)))
    specs = bnn.param_specs(model, mesh)
    graphdef, params = nnx.split(model, nnx.Param)
    replicated = NamedSharding(mesh, P())
    p_shard = jax.tree_util.tree_map_with_path(
        lambda path, _: NamedSharding(mesh, specs.get(bnn.dotted_path(path), P())), params)
    tx = make_optimizer(cfg)
    opt_state = tx.init(params)
    o_shard = optax.tree_utils.tree_map_params(
        tx, lambda _, s: s, opt_state, p_shard, transform_non_params=lambda _: replicated)
    rng = jax.random.key_data(jax.random.key(int(cfg.seed)))
    state = TrainState(params, opt_state, jnp.zeros([], jnp.int32), rng)
    shardings = TrainState(p_shard, o_shard, replicated, replicated)
    return graphdef, tx, jax.device_put(state, shardings), shardings


def loss_settings(cfg) -> dict:
    """The ``cfg.loss`` section with defaults (plain cross-entropy when the section is absent).

    Keys: ``kind`` (``ce``: token cross-entropy averaged over the step's masked tokens; ``dco``:
    the DCO pass@N loss of each sequence's masked tokens, averaged over sequences),
    ``dco_n`` (N of DCO), ``masked_thought_rate`` (final Masked Thought input-masking rate of
    answer tokens; 0 disables), ``masked_thought_ramp`` (fraction of ``train.steps`` over which
    the rate ramps up linearly from 0) and ``mask_id`` (token written over masked inputs; default
    the tokenizer's PAD).
    """
    section = cfg.get("loss", None)
    out = dict(LOSS_DEFAULTS)
    if section is not None:
        unknown = sorted(set(section.keys()) - set(out))
        if unknown:
            raise ValueError(f"unknown cfg.loss keys {unknown}; valid: {sorted(out)}")
        out.update({k: section[k] for k in section.keys()})
    if out["kind"] not in LOSSES:
        raise ValueError(f"loss.kind must be one of {LOSSES}, got {out['kind']!r}")
    if int(out["dco_n"]) < 1:
        raise ValueError(f"loss.dco_n must be >= 1, got {out['dco_n']}")
    if not 0.0 <= float(out["masked_thought_rate"]) < 1.0:
        raise ValueError(f"loss.masked_thought_rate must be in [0, 1), got "
                         f"{out['masked_thought_rate']}")
    if not 0.0 <= float(out["masked_thought_ramp"]) <= 1.0:
        raise ValueError(f"loss.masked_thought_ramp must be in [0, 1], got "
                         f"{out['masked_thought_ramp']}")
    return out


def make_train_step(graphdef, tx: optax.GradientTransformation, cfg, *, state_shardings,
                    mesh: Mesh) -> Callable:
    """``step(state, batch) -> (state, metrics)``, jitted once, ``state`` donated.

    ``batch`` holds ``tokens``, ``loss_mask``, ``full_mask``, ``answer_mask`` shaped
    ``[grad_accum, micro, T]`` (int32). Loss (`loss_settings`): next-token cross-entropy over
    ``loss_mask[..., 1:]`` averaged over all masked tokens of the step (so accumulation equals
    one big batch up to summation order), or DCO averaged over the step's sequences. With
    Masked Thought, answer tokens of the *inputs* are replaced by ``mask_id`` at the ramped rate
    (targets unchanged); its draws use a key stream separate from stochastic rounding.

    References:
      Chen et al., "Rethinking Fine-Tuning when Scaling Test-Time Compute", arXiv:2502.07154
        (DCO); Chen et al., "Masked Thought", arXiv:2403.02178.
    """
    accum = int(cfg.train.grad_accum)
    micro = int(cfg.train.batch_size) // accum
    nan_at = int(cfg.train.debug_nan_at_step)
    schedule = make_schedule(cfg)
    ls = loss_settings(cfg)
    dco_n, mt_rate = int(ls["dco_n"]), float(ls["masked_thought_rate"])

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        n_tok = jnp.maximum(jnp.sum(batch["loss_mask"][..., 1:].astype(jnp.float32)), 1.0)
        n_seq = jnp.float32(accum * micro)
        rate = ramped_rate(state.step, int(cfg.train.steps), mt_rate,
                           float(ls["masked_thought_ramp"]))

        def micro_loss(params, mb, key):
            model = nnx.merge(graphdef, params)
            inputs = mb["tokens"]
            if mt_rate > 0:
                inputs, _ = masked_thought(inputs, mb["answer_mask"],
                                           jax.random.fold_in(key, _MT_STREAM), rate,
                                           mask_id=int(ls["mask_id"]))
            logits = model(inputs, attention_mask=mb["full_mask"], key=key)
            _, per_seq = token_cross_entropy(logits[:, :-1], mb["tokens"][:, 1:],
                                             mb["loss_mask"][:, 1:])
            if ls["kind"] == "dco":
                return jnp.sum(dco_loss(-per_seq, dco_n)) / n_seq
            return jnp.sum(per_seq) / n_tok

        grad_fn = jax.value_and_grad(micro_loss)

        def body(carry, xs):
            loss_acc, g_acc = carry
            i, mb = xs
            loss, g = grad_fn(state.params, mb, jax.random.fold_in(step_key, i))
            return (loss_acc + loss, jax.tree.map(jnp.add, g_acc, g)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (loss, grads), _ = jax.lax.scan(body, (jnp.zeros([], jnp.float32), zeros),
                                        (jnp.arange(accum), batch))
        if nan_at > 0:  # debug hook: poison the loss of step `nan_at` (1-based)
            loss = jnp.where(state.step + 1 == nan_at, jnp.nan, loss)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": jnp.asarray(schedule(state.step), jnp.float32), "tokens": n_tok}
        return TrainState(params, opt_state, state.step + 1, state.rng), metrics

    replicated = NamedSharding(mesh, P())
    b_shard = {k: NamedSharding(mesh, bnn.batch_spec(mesh, micro, leading=1))
               for k in BATCH_FIELDS}
    return jax.jit(step_fn, in_shardings=(state_shardings, b_shard),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def make_task(cfg):
    """The training task named by ``cfg.data.task`` (the same object evaluation must use).

    Keys of ``cfg.data`` that are fields of the task's dataclass (``digits``, ``ops``,
    ``n_numbers``, ``modulus``, ...) are passed to it; an empty ``ops`` keeps the task's default.
    """
    name = cfg.data.task
    if name not in TASKS:
        raise ValueError(f"data.task must be one of {sorted(TASKS)}, got {name!r}")
    cls = TASKS[name]
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in cfg.data:
            v = cfg.data[f.name]
            if isinstance(v, (list, tuple)):
                if not v:
                    continue
                v = tuple(v)
            kw[f.name] = v
    return cls(**kw)


def make_mesh(cfg) -> Mesh:
    """The (data, fsdp, tensor) mesh of ``cfg.mesh`` (all devices on ``data`` if absent)."""
    m = cfg.get("mesh", None)
    if m is None:
        return bnn.make_mesh()
    return bnn.make_mesh(int(m.data), int(m.fsdp), int(m.tensor))


def _plain(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict) or hasattr(x, "items"):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_resume_config(cfg, workdir: str, resuming: bool) -> None:
    """Refuses to resume a run whose config changed (other than `RESUMABLE_KEYS`).

    A run that starts from scratch writes ``<workdir>/config.json``; a resumed run compares
    against it, so e.g. changing ``train.steps`` (which reshapes the LR schedule) or the policy
    fails instead of silently giving a different run. Delete the file to resume deliberately
    with a new config (it is then rewritten).
    """
    path = os.path.join(workdir, "config.json")
    now = _flatten(_plain(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg))
    if not resuming or not os.path.exists(path):
        with open(path, "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
        return
    try:
        with open(path) as f:
            before = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the saved run config {path}: {e}") from e
    diff = sorted(k for k in set(before) | set(now)
                  if k not in RESUMABLE_KEYS and before.get(k, "<absent>") != now.get(k, "<absent>"))
    if diff:
        shown = ", ".join(f"{k}: {before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}"
                          for k in diff[:8])
        raise CheckpointError(f"the config of {workdir} changed since the run started ({shown}); "
                         f"resume with the original config, use a new workdir, or delete {path} "
                         f"to resume anyway (keys that may change: {list(RESUMABLE_KEYS)})")


def _stack(arrays: dict, accum: int) -> dict:
    return {k: np.asarray(arrays[k]).reshape(accum, -1, *arrays[k].shape[1:])
            for k in BATCH_FIELDS}


def train(config, workdir: str, *, mesh: Mesh | None = None,
          on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the final state and last metrics.

    ``on_step(step, metrics)`` is called as each step's metrics reach the host (one step late).

    Returns:
      dict with ``step`` (updates done), ``state`` (`TrainState`), ``metrics`` (last step's, as
      floats), ``stopped`` (True if ``train.stop_after`` cut the run short), ``resumed_from``
      (checkpoint step restored, or None).
    Raises:
      FloatingPointError: non-finite loss or gradient norm at a step (named); nothing containing
        it is saved, the checkpoints on disk stay restorable.
      bitscale.train.checkpoint.CheckpointError: a corrupt or mismatched checkpoint directory, or
        a resumed run whose config differs from the one it started with (`check_resume_config`).
    """
    cfg = config
    t = cfg.train
    if t.batch_size % t.grad_accum:
        raise ValueError(f"train.grad_accum={t.grad_accum} must divide "
                         f"train.batch_size={t.batch_size}")
    loss_settings(cfg)  # validate before building anything
    mesh = mesh if mesh is not None else make_mesh(cfg)
    os.makedirs(workdir, exist_ok=True)
    graphdef, tx, state, shardings = create_train_state(cfg, mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.max_to_keep)
    start, position, resumed = 0, 0, ckpt.latest_step()
    check_resume_config(cfg, workdir, resuming=resumed is not None)
    if resumed is not None:
        state, meta = ckpt.restore(resumed, state, shardings)
        start, position = int(meta["step"]), int(meta["position"])
        logging.info("resumed from %s at step %d (data position %d)", ckpt.directory, start,
                     position)
    step_fn = make_train_step(graphdef, tx, cfg, state_shardings=shardings, mesh=mesh)
    driver = StepDriver("training", total=t.steps, ckpt=ckpt, on_step=on_step,
                        writer=MetricsWriter(workdir, resume_step=start),
                        progress=Progress(t.steps, start, enabled=t.progress),
                        log_every=t.log_every, checkpoint_every=t.checkpoint_every,
                        stop_after=t.stop_after)
    tok = bdata.CharTokenizer()
    stream = bdata.batches(make_task(cfg), cfg.data.split, t.batch_size, int(cfg.seed), tok,
                           max_prompt_len=cfg.data.max_prompt_len, max_len=cfg.data.max_len,
                           start=position, loss_on=cfg.data.loss_on)
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


def restore_model(cfg, workdir: str, step: int | None = None, *, policy=None,
                  mesh: Mesh | None = None) -> tuple[Any, int]:
    """The trained `Llama` of a `train` run: ``(model, step)``.

    Args:
      cfg: the run's config (its model, policy and optimizer define the checkpoint layout).
      workdir: the run directory (``<workdir>/checkpoints``) or the checkpoints directory itself.
      step: the checkpoint to load (default: the latest).
      policy: build the model under another precision policy (default: ``cfg.policy``); the
        parameters are the trained ones either way.
    Raises:
      CheckpointError: no checkpoint in ``workdir``, an unknown ``step``, or a checkpoint that
        does not match ``cfg``.
    """
    directory = workdir
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    mesh = mesh if mesh is not None else make_mesh(cfg)
    graphdef, _, like, shardings = create_train_state(cfg, mesh)
    ckpt = Checkpointer(directory, max_to_keep=None)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {directory} (expected a bitscale.train "
                                  f"workdir or its checkpoints directory)")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {directory}; available: "
                                  f"{steps}")
        state, _ = ckpt.restore(step, like, shardings)
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, state.params)
    if policy is not None:
        model = bnn.with_policy(model, policy)
    return model, step
