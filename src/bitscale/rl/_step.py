"""The RL update: a pure step over one rollout batch, jitted once with the state donated.

``step(state, ref_params, batch) -> (state, metrics)``:

1. advantages from the batch's rewards [P, n] by the configured estimator (GRPO, Dr. GRPO,
   RLOO, or MC-GRPO, which samples G + 1 per prompt and masks its median pivot out);
2. reference log-probs of the completion tokens from the frozen reference parameters, run under
   the reference model's own precision policy (e.g. a bf16 reference for an fp8 policy);
3. ``ppo_epochs`` optax updates on the clipped surrogate (`bitscale.rl.policy_loss`). The first
   computes the trainer's log-probs under the trained policy's precision; their stop-gradient is
   ``logp_old`` for every epoch (so the first epoch is on-policy, ratio 1, and clipping acts
   from the second on). Updates go through the optax transform unchanged, so the QAT rules of
   `bitscale.train.make_optimizer` (low-precision master weights, per-precision LR) apply as in
   supervised training;
4. the sampler-vs-trainer log-prob mismatch (`bitscale.rl.logprob_mismatch`) between the
   sampler's recorded behaviour log-probs and ``logp_old``.

Randomness: the stochastic-rounding key of epoch e of step s is
``fold_in(fold_in(wrap_key_data(state.rng), s), e)``; the reference forward uses
``fold_in(., _REF_STREAM)``.

References:
  Schulman et al., "Proximal Policy Optimization Algorithms" (PPO epochs, clipped surrogate),
  arXiv:1707.06347.
  Shao et al., "DeepSeekMath" (GRPO), arXiv:2402.03300.
  Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO),
  arXiv:2503.20783.
  Kim, "MC-GRPO: Median-Centered Group Relative Policy Optimization for Small-Rollout
  Reinforcement Learning", arXiv:2601.22582.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bitscale.rl._advantages import (
    drgrpo_advantages,
    grpo_advantages,
    mc_grpo_advantages,
    rloo_advantages,
)
from bitscale.rl._losses import PolicyLossConfig, logprob_mismatch, policy_loss
from bitscale.train.losses import token_log_probs

__all__ = ["ALGORITHMS", "BATCH_KEYS", "RLState", "RLStepConfig", "advantages",
           "make_rl_step", "trainer_log_probs"]

ALGORITHMS = ("grpo", "drgrpo", "rloo", "mc_grpo")
BATCH_KEYS = ("tokens", "attention_mask", "completion_mask", "sampler_logp", "rewards")
_REF_STREAM = 0x52454600  # fold_in constant of the reference forward's key


class RLState(NamedTuple):
    """Everything an RL step reads and writes (checkpointed as is), like `TrainState`.

    Attributes:
      params: the policy's `nnx.Param` state.
      opt_state: the optax state.
      step: int32 scalar, RL steps (rollout batches) done so far.
      rng: uint32 raw key data; see the module docstring for the keys derived from it.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class RLStepConfig:
    """Static settings of the RL step (frozen, hashable).

    Attributes:
      algorithm: advantage estimator, one of `ALGORITHMS`.
      group_size: G, the rollouts per prompt that carry gradient. MC-GRPO samples G + 1 (the
        median pivot is masked out), so it needs an even G; the others need G >= 2.
      ppo_epochs: optax updates per rollout batch (>= 1; clipping matters from the second).
      loss: the clipped-surrogate settings (eps_low, eps_high, beta, KL estimator, aggregation).
      use_ref: compute reference log-probs (required when ``loss.beta > 0``; else only the
        ``kl_ref`` metric uses them).
      debug_nan_at_step: > 0 poisons the reported loss of that step (1-based) with NaN, to test
        the loop's NaN guard.
    """

    algorithm: str = "grpo"
    group_size: int = 8
    ppo_epochs: int = 1
    loss: PolicyLossConfig = PolicyLossConfig()
    use_ref: bool = True
    debug_nan_at_step: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown RL algorithm {self.algorithm!r}; accepted: "
                             f"{list(ALGORITHMS)}")
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, int):
            raise ValueError(f"group_size must be an int, got {g!r}")
        if g < 2:
            raise ValueError(f"group_size G={g}: {self.algorithm} needs at least 2 rollouts per "
                             f"prompt (its advantages are relative to the group)")
        if self.algorithm == "mc_grpo" and (g + 1) % 2 != 1:
            raise ValueError(f"group_size G={g}: mc_grpo samples G+1={g + 1} rollouts per prompt "
                             f"and needs G+1 odd (the median is one of them, the pivot); use an "
                             f"even G such as {g - 1 if g > 2 else 2} or {g + 1}")
        if isinstance(self.ppo_epochs, bool) or not isinstance(self.ppo_epochs, int) \
                or self.ppo_epochs < 1:
            raise ValueError(f"ppo_epochs must be an int >= 1, got {self.ppo_epochs!r}")
        if not isinstance(self.loss, PolicyLossConfig):
            raise TypeError(f"loss must be a PolicyLossConfig, got {type(self.loss).__name__}")
        if self.loss.beta > 0 and not self.use_ref:
            raise ValueError(f"beta={self.loss.beta} > 0 needs the reference (use_ref=True)")

    @property
    def samples_per_prompt(self) -> int:
        """Rollouts sampled per prompt: G, or G + 1 for MC-GRPO."""
        return self.group_size + 1 if self.algorithm == "mc_grpo" else self.group_size


def advantages(rewards: jax.Array, algorithm: str) -> tuple[jax.Array, jax.Array]:
    """``(advantages [P, n], sequence weights [P, n])`` of ``rewards`` [P, n] by ``algorithm``.

    The weights are 1 except at MC-GRPO's pivot (0: excluded from the gradient).

    References:
      GRPO arXiv:2402.03300; Dr. GRPO arXiv:2503.20783; RLOO arXiv:2402.14740; MC-GRPO
      arXiv:2601.22582.
    """
    r = jnp.asarray(rewards, jnp.float32)
    if algorithm == "mc_grpo":
        return mc_grpo_advantages(r)
    fns = {"grpo": grpo_advantages, "drgrpo": drgrpo_advantages, "rloo": rloo_advantages}
    if algorithm not in fns:
        raise ValueError(f"unknown RL algorithm {algorithm!r}; accepted: {list(ALGORITHMS)}")
    return fns[algorithm](r), jnp.ones(r.shape, jnp.float32)


def trainer_log_probs(model: nnx.Module, tokens: jax.Array, attention_mask: jax.Array, *,
                      key: jax.Array | None = None) -> jax.Array:
    """Teacher-forced float32 log-probs [B, L - 1] of ``tokens[:, 1:]`` under ``model``."""
    logits = model(tokens, attention_mask=attention_mask, key=key)
    return token_log_probs(logits[:, :-1], tokens[:, 1:])


def _check_batch(batch: dict, config: RLStepConfig) -> None:
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"RL batch lacks {missing}; needs {list(BATCH_KEYS)}")
    shape = tuple(batch["tokens"].shape)
    for k in ("attention_mask", "completion_mask", "sampler_logp"):
        if tuple(batch[k].shape) != shape:
            raise ValueError(f"RL batch: {k} shape {tuple(batch[k].shape)} != tokens {shape}")
    r = tuple(batch["rewards"].shape)
    n = config.samples_per_prompt
    if len(r) != 2 or r[1] != n or r[0] * r[1] != shape[0]:
        raise ValueError(f"RL batch: rewards shape {r} does not match the rollouts: expected "
                         f"[P, {n}] ({config.algorithm}, G={config.group_size}) with P * {n} = "
                         f"{shape[0]} rows of tokens {shape}")


def make_rl_step(graphdef, tx: optax.GradientTransformation, config: RLStepConfig, *,
                 ref_graphdef=None, schedule: optax.Schedule | None = None,
                 shardings: tuple | None = None, jit: bool = True) -> Callable:
    """``step(state, ref_params, batch) -> (state, metrics)``; ``state`` (an `RLState`) donated.

    Args:
      graphdef: the policy model's graph (``nnx.split(model, nnx.Param)[0]``); it carries the
        trained precision policy.
      tx: the optax transform (e.g. `bitscale.train.make_optimizer`).
      config: `RLStepConfig`.
      ref_graphdef: the reference model's graph (its own precision policy); required when
        ``config.use_ref``. ``ref_params`` may be None otherwise.
      schedule: the learning-rate schedule, only to report ``lr`` (by optimizer updates).
      shardings: optional ``(state, ref_params, batch)`` shardings for `jax.jit`.
      jit: False returns the plain function (for tests and composition).
    Returns:
      the step. ``batch``: ``tokens``, ``attention_mask``, ``completion_mask``, ``sampler_logp``
      [P * n, L] (`bitscale.rl.teacher_forced_batch`) and ``rewards`` [P, n]. ``metrics``
      (float32 scalars): ``loss`` (mean over epochs), ``grad_norm`` (max over epochs), the
      `policy_loss` metrics (``pg_loss``, ``kl_loss``, ``kl_ref``, clip fractions, ratios,
      ``approx_kl``: mean over epochs; ``ratio_min``/``ratio_max``: over all epochs),
      ``mismatch_mean_abs_diff``, ``mismatch_max_abs_diff``, ``mismatch_kl_k1``,
      ``mismatch_kl_k3`` (sampler vs trainer), ``adv_abs_mean``, ``lr``.
    Raises:
      ValueError: (when called) a batch with missing keys or rewards whose shape does not match
        the rollouts.
    """
    if config.use_ref and ref_graphdef is None:
        raise ValueError("make_rl_step: use_ref=True needs ref_graphdef")
    epochs = config.ppo_epochs
    nan_at = int(config.debug_nan_at_step)

    def step_fn(state: RLState, ref_params, batch: dict) -> tuple[RLState, dict]:
        _check_batch(batch, config)
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        tokens = batch["tokens"].astype(jnp.int32)
        attn = batch["attention_mask"]
        comp = batch["completion_mask"][:, 1:].astype(jnp.float32)
        adv, seq_w = advantages(batch["rewards"], config.algorithm)
        adv = adv.reshape(-1)
        weights = comp * seq_w.reshape(-1)[:, None]
        logp_ref = None
        if config.use_ref:
            ref = nnx.merge(ref_graphdef, ref_params)
            logp_ref = jax.lax.stop_gradient(trainer_log_probs(
                ref, tokens, attn, key=jax.random.fold_in(step_key, _REF_STREAM)))

        def loss_fn(params, key, logp_old):
            lp = trainer_log_probs(nnx.merge(graphdef, params), tokens, attn, key=key)
            old = jax.lax.stop_gradient(lp) if logp_old is None else logp_old
            loss, m = policy_loss(lp, old, adv, weights, config.loss, logp_ref=logp_ref)
            return loss, (m, lp)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def update(params, opt_state, epoch, logp_old):
            (loss, (m, lp)), g = grad_fn(params, jax.random.fold_in(step_key, epoch), logp_old)
            updates, opt_state = tx.update(g, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, loss, optax.tree.norm(g), m, lp

        params, opt_state, loss, gnorm, m, lp = update(state.params, state.opt_state, 0, None)
        logp_old = jax.lax.stop_gradient(lp)
        losses, gnorms, ms = loss[None], gnorm[None], jax.tree.map(lambda x: x[None], m)
        if epochs > 1:
            def body(carry, epoch):
                p, o = carry
                p, o, l_e, g_e, m_e, _ = update(p, o, epoch, logp_old)
                return (p, o), (l_e, g_e, m_e)

            (params, opt_state), (l2, g2, m2) = jax.lax.scan(
                body, (params, opt_state), jnp.arange(1, epochs, dtype=jnp.int32))
            losses = jnp.concatenate([losses, l2])
            gnorms = jnp.concatenate([gnorms, g2])
            ms = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ms, m2)
        loss = jnp.mean(losses)
        if nan_at > 0:  # debug hook: poison the loss of step `nan_at` (1-based)
            loss = jnp.where(state.step + 1 == nan_at, jnp.nan, loss)
        metrics = {k: jnp.mean(v) for k, v in ms.items()}
        metrics.update(ratio_min=jnp.min(ms["ratio_min"]), ratio_max=jnp.max(ms["ratio_max"]),
                       num_tokens=ms["num_tokens"][0], num_seqs=ms["num_seqs"][0])
        mm = logprob_mismatch(batch["sampler_logp"][:, 1:], logp_old, comp)
        metrics.update({f"mismatch_{k}": v for k, v in mm.items() if k != "num_tokens"})
        metrics.update(loss=loss, grad_norm=jnp.max(gnorms),
                       adv_abs_mean=jnp.sum(jnp.abs(adv) * seq_w.reshape(-1))
                       / jnp.maximum(jnp.sum(seq_w), 1.0))
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step * epochs), jnp.float32)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return RLState(params, opt_state, state.step + 1, state.rng), metrics

    if not jit:
        return step_fn
    if shardings is None:
        return jax.jit(step_fn, donate_argnums=(0,))
    state_sh, ref_sh, batch_sh = shardings
    replicated = jax.tree.leaves(state_sh.step)[0]
    return jax.jit(step_fn, in_shardings=(state_sh, ref_sh, batch_sh),
                   out_shardings=(state_sh, replicated), donate_argnums=(0,))
