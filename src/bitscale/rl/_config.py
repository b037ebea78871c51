"""The ``cfg.rl`` section: one frozen dataclass holding every RL setting, its default and its check.

A config builds the section with `rl_section`, naming only what its recipe changes::

    cfg.rl = rl_section(algorithm="mc_grpo", group_size=8, beta=0.04)

and `train_rl` reads it back with `read_rl_config`; every key stays in the locked config, so
``--config.rl.group_size=4`` works on the command line and a misspelt key fails.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from bitscale import nn as bnn
from bitscale.rl._losses import AGGREGATIONS, KL_ESTIMATORS, PolicyLossConfig
from bitscale.rl._rollout import REWARDS, RolloutConfig
from bitscale.rl._step import ALGORITHMS, RLStepConfig
from bitscale.train.sections import read_section, section_builder

__all__ = ["RESUMABLE_RL_KEYS", "RLConfig", "read_rl_config", "rl_section"]

# ``cfg.rl`` keys that may change between a run and its resumption (they do not change the state).
RESUMABLE_RL_KEYS = tuple(f"rl.{k}" for k in ("stop_after", "progress", "log_every",
                                              "checkpoint_every", "max_to_keep",
                                              "debug_nan_at_step"))
_COUNTS = (("prompts_per_step", 1), ("steps", 1), ("ppo_epochs", 1), ("max_new_tokens", 1),
           ("chunk_size", 0), ("eval_every", 0), ("eval_problems", 1), ("checkpoint_every", 1),
           ("max_to_keep", 1), ("log_every", 1), ("stop_after", 0), ("debug_nan_at_step", 0))


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Every setting of an RL run (`bitscale.rl.train_rl`), with its default.

    Attributes:
      algorithm: ``grpo`` | ``drgrpo`` | ``rloo`` | ``mc_grpo`` (advantage estimator).
      group_size: G rollouts per prompt that carry gradient (>= 2; MC-GRPO samples G + 1 and
        masks the median pivot, so G must be even).
      prompts_per_step: prompts per RL step (the batch is prompts_per_step * G sequences).
      steps: RL steps (one rollout batch each); ppo_epochs: optax updates per rollout batch (the
        ratio is clipped from the second on). The LR schedule of ``cfg.optim`` runs over
        ``steps * ppo_epochs`` updates.
      eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high] (clip-higher: eps_high 0.28).
      beta: KL(pi || pi_ref) coefficient; kl_estimator: ``k1`` | ``k2`` | ``k3``.
      aggregation: ``token_mean`` | ``sequence_mean`` (GRPO) | ``constant_length`` (Dr. GRPO,
        normaliser max_new_tokens).
      ref_policy: precision policy of the frozen reference ("": ``cfg.policy``; e.g. "bf16" with
        an fp8 policy); log_ref_kl: compute the reference forward for the ``kl_ref`` metric even
        when beta = 0.
      reward: ``binary`` (task.check) | ``graded`` (partial credit for a well-formed wrong
        answer); truncation_reward: reward of a completion cut off at max_new_tokens.
      strategy: sampling strategy (``temperature:1.0`` samples the policy itself);
        max_new_tokens: generation budget; chunk_size: samples decoded at once (0: all).
      init_checkpoint: a ``bitscale.train`` workdir to start from ("": random init, warned).
      eval_every, eval_problems: held-out greedy accuracy every N steps (0: never) on this many
        test problems.
      checkpoint_every, max_to_keep, log_every, progress: bookkeeping; stop_after (> 0: stop
        after that step without saving, the kill drill); debug_nan_at_step (> 0: poison that
        step's loss, the NaN-guard drill).

    References:
      Shao et al., "DeepSeekMath" (GRPO), arXiv:2402.03300; Liu et al., "Understanding R1-Zero-
      Like Training" (Dr. GRPO), arXiv:2503.20783; Kim, "MC-GRPO", arXiv:2601.22582.
    """

    algorithm: str = "grpo"
    group_size: int = 8
    prompts_per_step: int = 8
    steps: int = 100
    ppo_epochs: int = 1
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0
    kl_estimator: str = "k3"
    aggregation: str = "token_mean"
    ref_policy: Any = ""
    log_ref_kl: bool = True
    reward: str = "binary"
    truncation_reward: float = 0.0
    strategy: str = "temperature:1.0"
    max_new_tokens: int = 32
    chunk_size: int = 0
    init_checkpoint: str = ""
    eval_every: int = 0
    eval_problems: int = 64
    checkpoint_every: int = 50
    max_to_keep: int = 2
    log_every: int = 1
    stop_after: int = 0
    debug_nan_at_step: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"rl.algorithm={self.algorithm!r} is unknown; accepted: "
                             f"{list(ALGORITHMS)}")
        if self.reward not in REWARDS:
            raise ValueError(f"rl.reward={self.reward!r} is unknown; accepted: {list(REWARDS)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"rl.kl_estimator={self.kl_estimator!r} is unknown; accepted: "
                             f"{list(KL_ESTIMATORS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"rl.aggregation={self.aggregation!r} is unknown; accepted: "
                             f"{list(AGGREGATIONS)}")
        for k, lo in (("group_size", None),) + _COUNTS:
            x = getattr(self, k)
            if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
                raise ValueError(f"rl.{k} must be an int, got {x!r}")
            if lo is not None and x < lo:
                raise ValueError(f"rl.{k} must be >= {lo}, got {x}")
            object.__setattr__(self, k, int(x))
        g = self.group_size
        if g < 2:
            raise ValueError(f"rl.group_size={g}: {self.algorithm} needs at least 2 rollouts per "
                             f"prompt (its advantages are relative to the group)")
        if self.algorithm == "mc_grpo" and g % 2:
            raise ValueError(f"rl.group_size={g}: mc_grpo samples G+1={g + 1} rollouts per "
                             f"prompt and needs G+1 odd (the median rollout is the pivot); use "
                             f"an even group_size such as {g - 1} or {g + 1}")
        for k in ("eps_low", "eps_high", "beta", "truncation_reward"):
            object.__setattr__(self, k, float(getattr(self, k)))
        if self.ref_policy:
            bnn.resolve_policy(self.ref_policy)
        self.step_config()
        self.rollout_config()

    def reference_policy(self, policy: Any) -> Any:
        """The reference's policy when the trained one is ``policy``."""
        return self.ref_policy or policy

    def step_config(self) -> RLStepConfig:
        """The static settings of the jitted RL step."""
        loss = PolicyLossConfig(eps_low=self.eps_low, eps_high=self.eps_high, beta=self.beta,
                                kl_estimator=self.kl_estimator, aggregation=self.aggregation,
                                max_len=self.max_new_tokens)
        return RLStepConfig(algorithm=self.algorithm, group_size=self.group_size,
                            ppo_epochs=self.ppo_epochs, loss=loss,
                            use_ref=bool(self.beta > 0 or self.log_ref_kl),
                            debug_nan_at_step=self.debug_nan_at_step)

    def rollout_config(self) -> RolloutConfig:
        """The sampling and scoring settings of a step's rollouts."""
        return RolloutConfig(n=self.step_config().samples_per_prompt, strategy=self.strategy,
                             max_new_tokens=self.max_new_tokens, reward=self.reward,
                             truncation_reward=self.truncation_reward,
                             chunk_size=self.chunk_size or None)


rl_section = section_builder(RLConfig, "rl")


def read_rl_config(cfg: Any) -> RLConfig:
    """`RLConfig` of ``cfg.rl`` (absent keys take the defaults), validated with ``cfg.policy``.

    Raises:
      ValueError: no ``rl`` section, an unknown key, an unknown algorithm / reward / KL estimator /
        aggregation / sampling strategy / precision policy, G < 2, an even G + 1 for MC-GRPO, or a
        count out of range; the message names the value and what is accepted.
    """
    section = cfg.get("rl", None) if hasattr(cfg, "get") else None
    if section is None:
        raise ValueError("the config has no `rl` section (see configs/grpo_arith.py)")
    bnn.resolve_policy(cfg.policy)
    return read_section(RLConfig, section, "rl")
