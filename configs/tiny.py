"""Tiny Llama config for CPU tests and smoke runs, and an example user-defined policy.

    from configs.tiny import get_config   # or ml_collections.config_flags on this file
    cfg = get_config()
    model = bitscale.nn.Llama(cfg.model, cfg.policy, rngs=flax.nnx.Rngs(cfg.seed))

Sizes are multiples of 128 so every named policy applies (``int4@g128`` groups run along the
contraction axis: hidden 128 and intermediate 256).

References:
  bitscale DESIGN.md ("configs/*.py: get_config(), locked"); ml_collections ConfigDict.
"""

from __future__ import annotations

import ml_collections

from bitscale.nn import PROJ, ModelConfig, Policy, Rule, register_policy
from bitscale.train.sections import loss_section, mesh_section, optim_section, train_section

TINY = ModelConfig(
    arch="llama",
    vocab_size=256,
    hidden_size=128,
    intermediate_size=256,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=512,
    rope_theta=10000.0,
)

# A policy written as data: MLP in MXFP4 with stochastic-rounded MXFP8 (E5M2) output gradients
# and the weight gradient from the unquantized activation; attention projections in FP8;
# everything else (attention products, lm head) in float32. Registered, so a run selects it
# with `--config.policy=w4a4_mlp_fp8_attn`.
W4A4_MLP_FP8_ATTN = register_policy(Policy(
    "w4a4_mlp_fp8_attn",
    rules=(
        Rule(r"layers\.\d+\.mlp\..*", weight="mxfp4", act="mxfp4", grad="mxfp8_e5m2",
             grad_rounding="stochastic", wgrad_act="original", estimator="clipped_ste"),
        Rule(PROJ, weight="fp8_e4m3@channel", act="fp8_e4m3@channel",
             grad="fp8_e5m2@channel"),
    ),
))


def get_config() -> ml_collections.ConfigDict:
    """The tiny model, its default policy and a few run settings (locked)."""
    cfg = ml_collections.ConfigDict()
    cfg.model = TINY
    cfg.policy = "fp32"
    cfg.seed = 0

    # Training run (`python -m bitscale.train --config=configs/tiny.py --workdir=...`): the tiny
    # model on 2-digit arithmetic with worked steps; ~200 steps train in well under a minute on CPU.
    cfg.data = ml_collections.ConfigDict()
    cfg.data.task = "arithmetic"
    cfg.data.digits = 2
    cfg.data.split = "train"
    cfg.data.max_prompt_len = 24
    cfg.data.max_len = 128
    cfg.data.loss_on = "answer"          # "answer" | "full"

    # The loop's sections: every key of bitscale.train.sections, defaults but for those named.
    cfg.loss = loss_section()
    cfg.mesh = mesh_section()
    cfg.optim = optim_section(lr=3e-3, warmup_steps=20)
    cfg.train = train_section(steps=200, checkpoint_every=50)
    cfg.lock()
    return cfg
