"""Stability-grid config: a small char-level Llama on 2-digit addition, many short runs.

Used by `bitscale.studies.stability` (``experiments/stability.sh``): every run of the policy x
learning-rate x seed grid trains this config with only ``policy``, ``optim.lr`` and ``seed``
changed. Sized for a 2-core CPU: hidden 128, 2 layers, batch 16 of at most 48 tokens and 100
steps, so one run costs ~5-15 s (a few more for its first compile).

    python -m bitscale.train --config=configs/stability.py --workdir=/tmp/stab_fp32 \
        --config.optim.lr=0.3

Gradient clipping is off (``clip_norm=0``): AdamW's update is invariant to the gradient's scale,
so global-norm clipping only damps the first steps after a spike; turning it off removes one
safeguard that would blur the effect of precision alone. The learning rate here is a default;
the study sets it per run.

References:
  Lee et al., "To FP8 and Back Again: Quantifying Reduced Precision Effects on LLM Training
  Stability", arXiv:2405.18710 (2024).
"""

from __future__ import annotations

import ml_collections

from bitscale.nn import ModelConfig, Policy
from bitscale.train.sections import loss_section, mesh_section, optim_section, train_section

STABILITY = ModelConfig(
    arch="llama",
    vocab_size=128,          # CharTokenizer uses ids < 100
    hidden_size=128,         # multiples of 32: every MX block spec applies
    intermediate_size=256,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=64,
    rope_theta=10000.0,
)
STEPS = 100


def get_config(policy: "str | Policy" = "fp32") -> ml_collections.ConfigDict:
    """The stability model and run settings with ``policy`` (a name or a `Policy`; locked)."""
    cfg = ml_collections.ConfigDict()
    cfg.model = STABILITY
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

    cfg.loss = loss_section()
    cfg.mesh = mesh_section()
    cfg.optim = optim_section(lr=1e-2, warmup_steps=STEPS // 10, clip_norm=0.0)
    # one checkpoint (the last step) per run; no progress line (the study prints one per run)
    cfg.train = train_section(steps=STEPS, batch_size=16, log_every=10, checkpoint_every=STEPS,
                              max_to_keep=1, progress=False)
    cfg.lock()
    return cfg
