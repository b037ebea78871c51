"""Dr. GRPO on the built-in arithmetic task: configs/grpo_arith.py with unnormalised advantages,
the constant-length loss normaliser and no KL penalty.

    python -m bitscale.train --config=configs/demo.py --workdir=runs/sft
    python -m bitscale.rl --config=configs/drgrpo_arith.py --workdir=runs/drgrpo \
        --config.rl.init_checkpoint=runs/sft

References:
  Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO),
  arXiv:2503.20783.
"""

from __future__ import annotations

from bitscale.config_file import load_module, sibling

_grpo = load_module(sibling(__file__, "grpo_arith.py"))


def get_config():
    """Dr. GRPO: advantages r - mean, sum over tokens / (sequences * max_new_tokens), beta 0."""
    cfg = _grpo.base_config(algorithm="drgrpo", aggregation="constant_length", beta=0.0)
    cfg.lock()
    return cfg
