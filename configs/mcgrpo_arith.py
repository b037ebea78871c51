"""MC-GRPO on the built-in arithmetic task: configs/grpo_arith.py with the median-centred
advantage over G + 1 rollouts per prompt (the median one, the pivot, is masked out), for small
rollout budgets.

    python -m bitscale.train --config=configs/demo.py --workdir=runs/sft
    python -m bitscale.rl --config=configs/mcgrpo_arith.py --workdir=runs/mcgrpo \
        --config.rl.init_checkpoint=runs/sft

References:
  Kim, "MC-GRPO: Median-Centered Group Relative Policy Optimization for Small-Rollout
  Reinforcement Learning", arXiv:2601.22582.
"""

from __future__ import annotations

from bitscale.config_file import load_module, sibling

_grpo = load_module(sibling(__file__, "grpo_arith.py"))


def get_config():
    """MC-GRPO with G = 4 (5 samples per prompt; G must be even so that G + 1 is odd)."""
    cfg = _grpo.base_config(algorithm="mc_grpo", group_size=4)
    cfg.lock()
    return cfg
