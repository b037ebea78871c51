"""The training state and the optimizer that updates it.

`TrainState` is what a step reads and writes and what a checkpoint holds; `make_optimizer` is the
one optax chain supervised training and RL share (the RL schedule runs over its own update count).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bitscale import nn as bnn
from bitscale.train.qat import low_precision_master, scale_by_precision
from bitscale.train.sections import OptimConfig

__all__ = ["TrainState", "create_train_state", "make_optimizer", "make_schedule"]


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


def make_schedule(optim: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``optim.lr``, then cosine decay to ``lr * end_lr_ratio`` at
    ``total_steps`` optimizer updates."""
    total = int(total_steps)
    warmup = min(int(optim.warmup_steps), total)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
        decay_steps=max(total, warmup + 1), end_value=optim.lr * optim.end_lr_ratio)


def make_optimizer(optim: OptimConfig, total_steps: int, *,
                   seed: int = 0) -> optax.GradientTransformation:
    """clip -> adamw(`make_schedule`) -> [scale_by_precision] -> [low_precision_master].

    ``seed`` keys the stochastic rounding of low-precision master weights.
    """
    parts = []
    if optim.clip_norm:
        parts.append(optax.clip_by_global_norm(optim.clip_norm))
    parts.append(optax.adamw(make_schedule(optim, total_steps), b1=optim.b1, b2=optim.b2,
                             weight_decay=optim.weight_decay))
    if optim.lr_scales:
        parts.append(scale_by_precision(dict(optim.lr_scales)))
    if optim.master_spec:
        parts.append(low_precision_master(optim.master_spec, seed=int(seed)))
    return optax.chain(*parts)


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, mesh: Mesh, *,
                       seed: int = 0) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """Shards ``model``'s parameters and ``tx``'s state: ``(graphdef, state, state_shardings)``.

    Parameters are sharded by their logical axes (`bitscale.nn.param_specs`), optimizer moments
    like their parameters, everything else replicated; the state's ``rng`` is ``key(seed)``.
    """
    specs = bnn.param_specs(model, mesh)
    graphdef, params = nnx.split(model, nnx.Param)
    replicated = NamedSharding(mesh, P())
    p_shard = jax.tree_util.tree_map_with_path(
        lambda path, _: NamedSharding(mesh, specs.get(bnn.dotted_path(path), P())), params)
    opt_state = tx.init(params)
    o_shard = optax.tree_utils.tree_map_params(
        tx, lambda _, s: s, opt_state, p_shard, transform_non_params=lambda _: replicated)
    rng = jax.random.key_data(jax.random.key(int(seed)))
    state = TrainState(params, opt_state, jnp.zeros([], jnp.int32), rng)
    shardings = TrainState(p_shard, o_shard, replicated, replicated)
    return graphdef, jax.device_put(state, shardings), shardings
