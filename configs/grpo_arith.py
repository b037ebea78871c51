"""GRPO on the built-in arithmetic task (configs/demo.py's model and data) from an SFT checkpoint.

First train the starting checkpoint, then RL-train from it:

    python -m bitscale.train --config=configs/demo.py --workdir=runs/sft
    python -m bitscale.rl --config=configs/grpo_arith.py --workdir=runs/grpo \
        --config.rl.init_checkpoint=runs/sft

Override any key on the command line (``--config.rl.group_size=4``, ``--config.policy=fp8``,
``--config.rl.ref_policy=bf16``); the config is locked, so a misspelt key fails. Re-running the
same command resumes from the latest checkpoint (a changed config is refused).

``cfg.rl`` keys:
  algorithm: ``grpo`` | ``drgrpo`` | ``rloo`` | ``mc_grpo`` (advantage estimator).
  group_size: G rollouts per prompt that carry gradient (>= 2; MC-GRPO samples G + 1 and masks
    the median pivot, so G must be even).
  prompts_per_step: prompts per RL step (the batch is prompts_per_step * G sequences).
  steps: RL steps (one rollout batch each); ppo_epochs: optax updates per rollout batch (the
    ratio is clipped from the second on). The LR schedule of ``optim`` runs over
    ``steps * ppo_epochs`` updates.
  eps_low / eps_high: clip range [1 - eps_low, 1 + eps_high] (clip-higher: eps_high 0.28);
    beta: KL(pi || pi_ref) coefficient; kl_estimator: k1 | k2 | k3; aggregation: token_mean |
    sequence_mean (GRPO) | constant_length (Dr. GRPO, normaliser max_new_tokens).
  ref_policy: precision policy of the frozen reference ("" = ``policy``; e.g. "bf16" with an
    fp8 policy); log_ref_kl: compute the reference forward for the ``kl_ref`` metric even when
    beta = 0.
  reward: ``binary`` (task.check) | ``graded`` (partial credit for a well-formed wrong answer);
    truncation_reward: reward of a completion cut off at max_new_tokens.
  strategy: sampling strategy (``temperature:1.0`` samples the policy itself); max_new_tokens:
    generation budget; chunk_size: samples decoded at once (0: all).
  init_checkpoint: a ``bitscale.train`` workdir ("" = random init, with a warning).
  eval_every / eval_problems: held-out greedy accuracy every N steps (0: never) on this many
    test problems.
  checkpoint_every, max_to_keep, log_every, progress; stop_after (> 0: stop after that step
    without saving, the kill drill); debug_nan_at_step (> 0: poison that step's loss).

References:
  Shao et al., "DeepSeekMath" (GRPO), arXiv:2402.03300.
"""

from __future__ import annotations

import ml_collections

from bitscale.config_file import load_module, sibling

_demo = load_module(sibling(__file__, "demo.py"))


def rl_section(**overrides) -> ml_collections.ConfigDict:
    """The ``cfg.rl`` section of the GRPO recipe with ``overrides``."""
    rl = ml_collections.ConfigDict()
    rl.algorithm = "grpo"
    rl.group_size = 8
    rl.prompts_per_step = 16
    rl.steps = 200
    rl.ppo_epochs = 2
    rl.eps_low = 0.2
    rl.eps_high = 0.2
    rl.beta = 0.04                   # GRPO's KL penalty (k3)
    rl.kl_estimator = "k3"
    rl.aggregation = "sequence_mean"  # GRPO: mean over tokens, then over sequences
    rl.ref_policy = ""               # "": same as cfg.policy
    rl.log_ref_kl = True
    rl.reward = "binary"             # "binary" | "graded"
    rl.truncation_reward = 0.0
    rl.strategy = "temperature:1.0"
    rl.max_new_tokens = 32           # compact 2-digit worked steps + answer: <= 26 tokens
    rl.chunk_size = 0
    rl.init_checkpoint = ""          # e.g. runs/sft (python -m bitscale.train ... demo.py)
    rl.eval_every = 25
    rl.eval_problems = 200
    rl.checkpoint_every = 50
    rl.max_to_keep = 2
    rl.log_every = 1
    rl.stop_after = 0
    rl.debug_nan_at_step = 0
    rl.progress = True
    for k, v in overrides.items():
        setattr(rl, k, v)
    return rl


def base_config(policy: str = "fp32", **rl_overrides) -> ml_collections.ConfigDict:
    """demo.py's model, policy, seed, data and mesh; an RL optimizer; ``rl_section`` (unlocked)."""
    demo = _demo.get_config(policy)
    cfg = ml_collections.ConfigDict()
    cfg.model = demo.model
    cfg.policy = demo.policy
    cfg.seed = demo.seed
    cfg.data = ml_collections.ConfigDict(demo.data.to_dict())
    cfg.mesh = ml_collections.ConfigDict(demo.mesh.to_dict())
    cfg.optim = ml_collections.ConfigDict(demo.optim.to_dict())
    cfg.optim.lr = 3e-4              # RL fine-tuning: ~10x below the SFT peak
    cfg.optim.warmup_steps = 4       # in optimizer updates (steps * ppo_epochs in all)
    cfg.optim.end_lr_ratio = 1.0     # constant after warmup
    cfg.optim.weight_decay = 0.0
    cfg.rl = rl_section(**rl_overrides)
    return cfg


def get_config() -> ml_collections.ConfigDict:
    """GRPO with G = 8 on 2-digit addition (locked)."""
    cfg = base_config()
    cfg.lock()
    return cfg
