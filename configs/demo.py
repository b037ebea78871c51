"""Precision-study config: a 1.8M-parameter char-level Llama on 2-digit addition and
multiplication with worked steps.

Used by `make demo` (`bitscale.studies.demo` -> `bitscale.studies.precision`): every recipe
trains this exact config (same data, seeds and steps) with only ``policy`` changed; the per-recipe files
``configs/{fp32,bf16,fp8,mxfp4,int4_g128}.py`` are this config with their policy.

    python -m bitscale.train --config=configs/demo.py --workdir=/tmp/demo_fp32

Sizes are multiples of 128 so every named policy applies (``int4@g128`` groups run along the
contraction axis: hidden 256 and intermediate 512). Tuned for a 2-core CPU and for a task the
model does *not* solve in its budget, so that test-time scaling has something to show: half the
problems are additions (``5+8+0=13`` column lines), half multiplications (``47*3=141``,
``47*50=2350``, ``141+2350=2491``), at most 62 tokens. After 500 steps the fp32 model's greedy
accuracy on held-out problems is 14% while pass@64 of temperature-1 samples is 0.44 (the
recorded `make demo` run, docs/benchmarks.md). On 2-digit addition alone the same model reached
~95% in 600 steps and pass@64 was 1.0 for every recipe: nothing left to scale.
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
    cfg.data.ops = ("+", "*")
    cfg.data.style = "compact"           # worked steps as "5+8+0=13" lines
    cfg.data.pad = False
    cfg.data.max_len = 64                # BOS + prompt + steps + EOS: at most 62 tokens
    cfg.data.loss_on = "answer"

    # The loop's sections: every key of bitscale.train.sections, defaults but for those named.
    cfg.loss = loss_section()
    cfg.mesh = mesh_section()
    cfg.optim = optim_section(lr=3e-3, warmup_steps=50)
    # checkpoint_every: the demo's RL section starts from the step-300 checkpoint
    cfg.train = train_section(steps=500, log_every=5, checkpoint_every=100, max_to_keep=6)
    cfg.lock()
    return cfg
