"""bitscale.rl: verifiable rewards, group-relative advantages (GRPO, Dr. GRPO, RLOO, MC-GRPO),
the clipped policy loss with KL estimators, and the sampler/trainer log-prob mismatch report.

Typical step: ``rewards = group_rewards(binary_reward(task), completions, examples,
truncated=truncated)`` ([P, G]); ``adv = grpo_advantages(jnp.asarray(rewards)).reshape(-1)``;
``loss, metrics = policy_loss(logp_new, logp_old, adv, mask, PolicyLossConfig(...))``.
"""

from bitscale.rl._advantages import (
    MAD_TO_STD,
    drgrpo_advantages,
    grpo_advantages,
    mc_grpo_advantages,
    rloo_advantages,
)
from bitscale.rl._losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    PolicyLossConfig,
    aggregate,
    kl_estimate,
    logprob_mismatch,
    policy_loss,
)
from bitscale.rl._rewards import (
    RewardFn,
    binary_reward,
    countdown_graded_reward,
    group_rewards,
    int_graded_reward,
)

__all__ = [
    "AGGREGATIONS", "KL_ESTIMATORS", "MAD_TO_STD", "PolicyLossConfig", "RewardFn", "aggregate",
    "binary_reward", "countdown_graded_reward", "drgrpo_advantages", "group_rewards",
    "grpo_advantages", "int_graded_reward", "kl_estimate", "logprob_mismatch",
    "mc_grpo_advantages", "policy_loss", "rloo_advantages",
]
