"""Precision-study config: a 1.8M-parameter char-level Llama on 2-digit addition with worked steps.

Used by `make demo` (`bitscale.studies.demo` -> `bitscale.studies.precision`): every recipe
trains this exact config (same data, seeds and steps) with only ``policy`` changed; the per-recipe files
``configs/{fp32,bf16,fp8,mxfp4,int4_g128}.py`` are this config with their policy.

    python -m bitscale.train --config=configs/demo.py --workdir=/tmp/demo_fp32

Sizes are multiples of 128 so every named policy applies (``int4@g128`` groups run along the
contraction axis: hidden 256 and intermediate 512). Tuned for a 2-core CPU: the compact worked
steps (``5+8+0=13`` lines, 44 tokens at most) and 8 heads of 32 let the fp32 model pass the
"copy the right digit" transition after ~150 steps; 600 steps reach ~95% greedy accuracy on
held-out problems (see README / docs/benchmarks.md for the measured numbers).
"""

from __future__ import annotations

import ml_collections

from bitscale.nn import ModelConfig
from bitscale.train.sections import loss_section, mesh_section, optim_section, train_section

DEMO = ModelConfig(
    arch="llama",
    vocab_size=128,          # CharTokenizer uses ids < 100
    hidden_size=256,
    intermediate_size=512,
    num_layers=3,
    num_heads=8,
    num_kv_heads=4,
    max_position_embeddings=256,
    rope_theta=10000.0,
)


def get_config(policy: str = "fp32") -> ml_collections.ConfigDict:
    """The demo model and run settings with ``policy`` (locked)."""
    cfg = ml_collections.ConfigDict()
    cfg.model = DEMO
    cfg.policy = policy
    cfg.seed = 0

    cfg.data = ml_collections.ConfigDict()
    cfg.data.task = "arithmetic"
    cfg.data.digits = 2
    cfg.data.split = "train"
    cfg.data.max_prompt_len = 24
    cfg.data.ops = ("+",)
    cfg.data.style = "compact"           # worked steps as "5+8+0=13" lines
    cfg.data.pad = False
    cfg.data.max_len = 48                # BOS + prompt + steps + EOS: at most 44 tokens
    cfg.data.loss_on = "answer"

    # The loop's sections: every key of bitscale.train.sections, defaults but for those named.
    cfg.loss = loss_section()
    cfg.mesh = mesh_section()
    cfg.optim = optim_section(lr=3e-3, warmup_steps=50)
    # checkpoint_every: the demo's RL section starts from the step-300 checkpoint
    cfg.train = train_section(steps=600, log_every=5, checkpoint_every=100, max_to_keep=6)
    cfg.lock()
    return cfg
