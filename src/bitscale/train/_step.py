"""The supervised train step: a pure ``(TrainState, batch) -> (TrainState, metrics)``, jitted once.

Step numbering: ``step s`` (1-based) is the ``s``-th update; its ``loss`` is measured on the
parameters after ``s - 1`` updates.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bitscale import nn as bnn
from bitscale.train.losses import dco_loss, masked_thought, ramped_rate, token_cross_entropy
from bitscale.train.sections import LossConfig, TrainConfig
from bitscale.train._state import TrainState

__all__ = ["BATCH_FIELDS", "make_train_step"]

BATCH_FIELDS = ("tokens", "loss_mask", "full_mask", "answer_mask")
_MT_STREAM = 0x4D54  # fold_in constant separating Masked Thought draws from rounding keys


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, loss: LossConfig, train: TrainConfig,
                    state_shardings: TrainState, mesh: Mesh) -> Callable:
    """``step(state, batch) -> (state, metrics)``, jitted once, ``state`` donated.

    ``batch`` holds ``tokens``, ``loss_mask``, ``full_mask``, ``answer_mask`` shaped
    ``[train.grad_accum, train.micro_batch, T]`` (int32). Loss: next-token cross-entropy over
    ``loss_mask[..., 1:]`` averaged over all masked tokens of the step (so accumulation equals
    one big batch up to summation order), or DCO averaged over the step's sequences. With
    Masked Thought, answer tokens of the *inputs* are replaced by ``loss.mask_id`` at the ramped
    rate (targets unchanged); its draws use a key stream separate from stochastic rounding.
    ``schedule`` only feeds the ``lr`` metric (``tx`` holds its own).

    References:
      Chen et al., "Rethinking Fine-Tuning when Scaling Test-Time Compute", arXiv:2502.07154
        (DCO); Chen et al., "Masked Thought", arXiv:2403.02178.
    """
    accum, micro = int(train.grad_accum), int(train.micro_batch)
    nan_at = int(train.debug_nan_at_step)
    dco_n, mt_rate = int(loss.dco_n), float(loss.masked_thought_rate)

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        n_tok = jnp.maximum(jnp.sum(batch["loss_mask"][..., 1:].astype(jnp.float32)), 1.0)
        n_seq = jnp.float32(accum * micro)
        rate = ramped_rate(state.step, int(train.steps), mt_rate,
                           float(loss.masked_thought_ramp))

        def micro_loss(params, mb, key):
            model = nnx.merge(graphdef, params)
            inputs = mb["tokens"]
            if mt_rate > 0:
                inputs, _ = masked_thought(inputs, mb["answer_mask"],
                                           jax.random.fold_in(key, _MT_STREAM), rate,
                                           mask_id=int(loss.mask_id))
            logits = model(inputs, attention_mask=mb["full_mask"], key=key)
            _, per_seq = token_cross_entropy(logits[:, :-1], mb["tokens"][:, 1:],
                                             mb["loss_mask"][:, 1:])
            if loss.kind == "dco":
                return jnp.sum(dco_loss(-per_seq, dco_n)) / n_seq
            return jnp.sum(per_seq) / n_tok

        grad_fn = jax.value_and_grad(micro_loss)

        def body(carry, xs):
            loss_acc, g_acc = carry
            i, mb = xs
            value, g = grad_fn(state.params, mb, jax.random.fold_in(step_key, i))
            return (loss_acc + value, jax.tree.map(jnp.add, g_acc, g)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (value, grads), _ = jax.lax.scan(body, (jnp.zeros([], jnp.float32), zeros),
                                         (jnp.arange(accum), batch))
        if nan_at > 0:  # debug hook: poison the loss of step `nan_at` (1-based)
            value = jnp.where(state.step + 1 == nan_at, jnp.nan, value)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads),
                   "lr": jnp.asarray(schedule(state.step), jnp.float32), "tokens": n_tok}
        return TrainState(params, opt_state, state.step + 1, state.rng), metrics

    replicated = NamedSharding(mesh, P())
    b_shard = {k: NamedSharding(mesh, bnn.batch_spec(mesh, micro, leading=1))
               for k in BATCH_FIELDS}
    return jax.jit(step_fn, in_shardings=(state_shardings, b_shard),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
