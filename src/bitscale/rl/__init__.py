"""bitscale.rl: verifiable rewards, group-relative advantages (GRPO, Dr. GRPO, RLOO, MC-GRPO),
the clipped policy loss with KL estimators, and the sampler/trainer log-prob mismatch report.

RL training: `rollout` (G samples per prompt from `bitscale.sampling.sample_n`, verifier rewards,
the teacher-forced batch), `make_rl_step` (a pure step jitted once: advantages, reference
log-probs under the reference's own precision, PPO epochs of `policy_loss`, optax update) and
`train_rl(config, workdir)` (the resumable loop; ``python -m bitscale.rl --config=...``) whose
``cfg.rl`` section is one `RLConfig` (built in configs with `rl_section`).

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
from bitscale.rl._config import RLConfig, read_rl_config, rl_section
from bitscale.rl._loop import initial_model, reference_model, rl_state, train_rl
from bitscale.rl._rewards import (
    RewardFn,
    binary_reward,
    countdown_graded_reward,
    group_rewards,
    int_graded_reward,
)
from bitscale.rl._rollout import (
    REWARDS,
    Rollout,
    RolloutConfig,
    check_rewards,
    prompt_arrays,
    reward_function,
    rollout,
    teacher_forced_batch,
)
from bitscale.rl._step import (
    ALGORITHMS,
    RLState,
    RLStepConfig,
    advantages,
    make_rl_step,
    trainer_log_probs,
)

__all__ = [
    "AGGREGATIONS", "KL_ESTIMATORS", "MAD_TO_STD", "PolicyLossConfig", "RewardFn", "aggregate",
    "binary_reward", "countdown_graded_reward", "drgrpo_advantages", "group_rewards",
    "grpo_advantages", "int_graded_reward", "kl_estimate", "logprob_mismatch",
    "mc_grpo_advantages", "policy_loss", "rloo_advantages",
    # RL training
    "ALGORITHMS", "REWARDS", "RLConfig", "RLState", "RLStepConfig", "Rollout",
    "RolloutConfig", "advantages", "check_rewards", "initial_model", "make_rl_step",
    "prompt_arrays", "read_rl_config", "reference_model", "reward_function", "rl_section",
    "rl_state", "rollout", "teacher_forced_batch", "train_rl", "trainer_log_probs",
]
