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

import math
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
from bitscale.train.checkpoint import Checkpointer
from bitscale.train.losses import token_cross_entropy
from bitscale.train.metrics import MetricsWriter, Progress
from bitscale.train.qat import low_precision_master, scale_by_precision

__all__ = ["TrainState", "create_train_state", "make_optimizer", "make_schedule",
           "make_train_step", "train"]

BATCH_FIELDS = ("tokens", "loss_mask", "full_mask")


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


def _dotted(path) -> str:
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
            continue
        out.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
    return ".".join(out)


def _batch_spec(mesh: Mesh, micro_batch: int) -> P:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    return P(None, ("data", "fsdp")) if micro_batch % n == 0 else P()


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
        lambda path, _: NamedSharding(mesh, specs.get(_dotted(path), P())), params)
    tx = make_optimizer(cfg)
    opt_state = tx.init(params)
    o_shard = optax.tree_utils.tree_map_params(
        tx, lambda _, s: s, opt_state, p_shard, transform_non_params=lambda _: replicated)
    rng = jax.random.key_data(jax.random.key(int(cfg.seed)))
    state = TrainState(params, opt_state, jnp.zeros([], jnp.int32), rng)
    shardings = TrainState(p_shard, o_shard, replicated, replicated)
    return graphdef, tx, jax.device_put(state, shardings), shardings


def make_train_step(graphdef, tx: optax.GradientTransformation, cfg, *, state_shardings,
                    mesh: Mesh) -> Callable:
    """``step(state, batch) -> (state, metrics)``, jitted once, ``state`` donated.

    ``batch`` holds ``tokens``, ``loss_mask``, ``full_mask`` shaped ``[grad_accum, micro, T]``
    (int32). Loss: next-token cross-entropy over ``loss_mask[..., 1:]``, averaged over all masked
    tokens of the step (so accumulation equals one big batch up to summation order).
    """
    accum = int(cfg.train.grad_accum)
    micro = int(cfg.train.batch_size) // accum
    nan_at = int(cfg.train.debug_nan_at_step)
    schedule = make_schedule(cfg)

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        n_tok = jnp.maximum(jnp.sum(batch["loss_mask"][..., 1:].astype(jnp.float32)), 1.0)

        def micro_loss(params, mb, key):
            model = nnx.merge(graphdef, params)
            logits = model(mb["tokens"], attention_mask=mb["full_mask"], key=key)
            _, per_seq = token_cross_entropy(logits[:, :-1], mb["tokens"][:, 1:],
                                             mb["loss_mask"][:, 1:])
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
    b_shard = {k: NamedSharding(mesh, _batch_spec(mesh, micro)) for k in BATCH_FIELDS}
    return jax.jit(step_fn, in_shardings=(state_shardings, b_shard),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def make_task(cfg):
    """The training task named by ``cfg.data`` (the same object evaluation must use)."""
    if cfg.data.task != "arithmetic":
        raise ValueError(f"data.task must be 'arithmetic' (only built-in task wired so far), "
                         f"got {cfg.data.task!r}")
    ops = tuple(cfg.data.get("ops", ())) or bdata.Arithmetic().ops
    return bdata.Arithmetic(digits=int(cfg.data.digits), ops=ops)


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
      bitscale.train.checkpoint.CheckpointError: a corrupt or mismatched checkpoint directory.
    """
    cfg = config
    t = cfg.train
    if t.batch_size % t.grad_accum:
        raise ValueError(f"train.grad_accum={t.grad_accum} must divide "
                         f"train.batch_size={t.batch_size}")
    mesh = mesh if mesh is not None else bnn.make_mesh()
    os.makedirs(workdir, exist_ok=True)
    graphdef, tx, state, shardings = create_train_state(cfg, mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.max_to_keep)
    start, position, resumed = 0, 0, ckpt.latest_step()
    if resumed is not None:
        state, meta = ckpt.restore(resumed, state, shardings)
        start, position = int(meta["step"]), int(meta["position"])
        logging.info("resumed from %s at step %d (data position %d)", ckpt.directory, start,
                     position)
    step_fn = make_train_step(graphdef, tx, cfg, state_shardings=shardings, mesh=mesh)
    writer = MetricsWriter(workdir, resume_step=start)
    progress = Progress(t.steps, start, enabled=t.progress)
    tok = bdata.CharTokenizer()
    stream = bdata.batches(make_task(cfg), cfg.data.split, t.batch_size, int(cfg.seed), tok,
                           max_prompt_len=cfg.data.max_prompt_len, max_len=cfg.data.max_len,
                           start=position, loss_on=cfg.data.loss_on)
    last: dict = {}

    def drain(s: int, m_dev: dict) -> None:
        m = {k: float(v) for k, v in jax.device_get(m_dev).items()}
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            raise FloatingPointError(
                f"non-finite training metrics at step {s}: loss={m['loss']}, "
                f"grad_norm={m['grad_norm']}; stopped without saving it (latest checkpoint: "
                f"step {ckpt.latest_step()} in {ckpt.directory})")
        if s == 1 or s % t.log_every == 0 or s == t.steps:
            writer.write(s, m)
        progress.update(s, m["loss"])
        if on_step is not None:
            on_step(s, m)
        last.clear()
        last.update(m)

    stopped, s = False, start
    pending = None
    try:
        for s in range(start + 1, t.steps + 1):
            batch = next(stream)
            state, m_dev = step_fn(state, _stack(batch.arrays, t.grad_accum))
            if pending is not None:
                drain(*pending)  # step s - 1: fetched after step s is dispatched
            pending = (s, m_dev)
            if t.stop_after and s >= t.stop_after and s < t.steps:
                drain(*pending)
                pending, stopped = None, True
                break
            if s % t.checkpoint_every == 0 or s == t.steps:
                drain(*pending)  # never save a state whose step was not checked
                pending = None
                ckpt.save(s, state, {"position": batch.next_position})
        if pending is not None:
            drain(*pending)
        ckpt.wait()
    finally:
        progress.close()
        writer.close()
        ckpt.close()
    return {"step": s, "state": state, "metrics": dict(last), "stopped": stopped,
            "resumed_from": resumed}
