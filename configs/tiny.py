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

from bitscale.nn import PROJ, ModelConfig, Policy, Rule

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
# everything else (attention products, lm head) in float32.
W4A4_MLP_FP8_ATTN = Policy(
    "w4a4_mlp_fp8_attn",
    rules=(
        Rule(r"layers\.\d+\.mlp\..*", weight="mxfp4", act="mxfp4", grad="mxfp8_e5m2",
             grad_rounding="stochastic", wgrad_act="original", estimator="clipped_ste"),
        Rule(PROJ, weight="fp8_e4m3@channel", act="fp8_e4m3@channel",
             grad="fp8_e5m2@channel"),
    ),
)


def get_config() -> ml_collections.ConfigDict:
    """The tiny model, its default policy and a few run settings (locked)."""
    cfg = ml_collections.ConfigDict()
    cfg.model = TINY
    cfg.policy = "fp32"
    cfg.seed = 0
    cfg.batch_size = 2
    cfg.seq_len = 32
    cfg.lock()
    return cfg
