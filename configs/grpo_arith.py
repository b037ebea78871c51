"""GRPO on the built-in arithmetic task (configs/demo.py's model and data) from an SFT checkpoint.

First train the starting checkpoint, then RL-train from it:

    python -m bitscale.train --config=configs/demo.py --workdir=runs/sft
    python -m bitscale.rl --config=configs/grpo_arith.py --workdir=runs/grpo \
        --config.rl.init_checkpoint=runs/sft

Override any key on the command line (``--config.rl.group_size=4``, ``--config.policy=fp8``,
``--config.rl.ref_policy=bf16``); the config is locked, so a misspelt key fails. Re-running the
same command resumes from the latest checkpoint (a changed config is refused).

The ``cfg.rl`` keys, their defaults and meanings are `bitscale.rl.RLConfig`'s; this recipe changes
only those it names in `recipe` below.

References:
  Shao et al., "DeepSeekMath" (GRPO), arXiv:2402.03300.
"""

from __future__ import annotations

import ml_collections

from bitscale.config_file import load_module, sibling
from bitscale.rl import rl_section

_demo = load_module(sibling(__file__, "demo.py"))


def recipe(**overrides) -> ml_collections.ConfigDict:
    """The ``cfg.rl`` section of the GRPO recipe (`bitscale.rl.RLConfig` defaults otherwise),
    with ``overrides``."""
    settings = dict(
        prompts_per_step=16, steps=200, ppo_epochs=2,
        beta=0.04,                       # GRPO's KL penalty (k3)
        aggregation="sequence_mean",     # GRPO: mean over tokens, then over sequences
        max_new_tokens=32,               # compact 2-digit worked steps + answer: <= 26 tokens
        eval_every=25, eval_problems=200)
    settings.update(overrides)
    return rl_section(**settings)


def base_config(policy: str = "fp32", **rl_overrides) -> ml_collections.ConfigDict:
    """demo.py's model, policy, seed, data and mesh; an RL optimizer; the ``recipe`` (unlocked)."""
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
    cfg.rl = recipe(**rl_overrides)
    return cfg


def get_config() -> ml_collections.ConfigDict:
    """GRPO with G = 8 on 2-digit addition (locked)."""
    cfg = base_config()
    cfg.lock()
    return cfg
