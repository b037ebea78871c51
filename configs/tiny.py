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

    cfg.loss = ml_collections.ConfigDict()
    cfg.loss.kind = "ce"                 # "ce" | "dco" (pass@N-aware, bitscale.train.dco_loss)
    cfg.loss.dco_n = 1                   # N of DCO
    cfg.loss.masked_thought_rate = 0.0   # > 0: Masked Thought input masking of answer tokens
    cfg.loss.masked_thought_ramp = 0.0   # fraction of train.steps over which the rate ramps up
    cfg.loss.mask_id = 0                 # token written over masked inputs (CharTokenizer PAD)

    cfg.mesh = ml_collections.ConfigDict()  # (data, fsdp, tensor); -1: all remaining devices
    cfg.mesh.data = -1
    cfg.mesh.fsdp = 1
    cfg.mesh.tensor = 1

    cfg.optim = ml_collections.ConfigDict()
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 20
    cfg.optim.end_lr_ratio = 0.1         # cosine decays to lr * end_lr_ratio at train.steps
    cfg.optim.b1 = 0.9
    cfg.optim.b2 = 0.95
    cfg.optim.weight_decay = 0.01
    cfg.optim.clip_norm = 1.0            # 0: no global-norm clipping
    cfg.optim.lr_scales = ()             # ((regex, factor), ...): train.scale_by_precision
    cfg.optim.master_spec = ""           # e.g. "bf16" -> bitscale.train.low_precision_master

    cfg.train = ml_collections.ConfigDict()
    cfg.train.batch_size = 16            # per step (all micro-batches together)
    cfg.train.grad_accum = 1             # micro-batches per step (must divide batch_size)
    cfg.train.steps = 200
    cfg.train.log_every = 10
    cfg.train.checkpoint_every = 50
    cfg.train.max_to_keep = 3
    cfg.train.stop_after = 0             # > 0: stop after this step without saving (kill drill)
    cfg.train.debug_nan_at_step = 0      # > 0: make that step's loss NaN (tests the NaN guard)
    cfg.train.progress = True            # progress line on stderr
    cfg.lock()
    return cfg
