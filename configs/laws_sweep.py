"""Base run of the precision scaling-law sweep (`bitscale.studies.laws_sweep`).

A small char-level Llama on 2-digit multiplication with compact worked steps (``85*3=255``
lines, at most 62 tokens), trained on the answer tokens. The sweep changes only the model size
(``hidden_size``, ``intermediate_size = 4 x hidden``, ``num_layers``, heads of 32), the number
of steps (each run its own warmup + cosine schedule) and the precision policy; everything else
(data stream, seed, optimizer, batch) is this file.

    python -m bitscale.train --config=configs/laws_sweep.py --workdir=/tmp/laws_fp32

Multiplication rather than addition: the small models do not saturate it within a
few hundred steps, so the held-out loss keeps falling with both N and D, which a scaling fit
needs.
"""

from __future__ import annotations

import ml_collections

from bitscale.nn import ModelConfig
from bitscale.train.sections import loss_section, mesh_section, optim_section, train_section

HEAD_DIM = 32


def model_config(hidden: int = 96, layers: int = 2) -> ModelConfig:
    """The sweep's Llama at width ``hidden`` (a multiple of `HEAD_DIM`) and depth ``layers``."""
    if hidden % HEAD_DIM or hidden < HEAD_DIM or layers < 1:
        raise ValueError(f"model_config: hidden must be a positive multiple of {HEAD_DIM} and "
                         f"layers >= 1, got hidden={hidden}, layers={layers}")
    heads = hidden // HEAD_DIM
    return ModelConfig(arch="llama", vocab_size=128, hidden_size=hidden,
                       intermediate_size=4 * hidden, num_layers=layers, num_heads=heads,
                       num_kv_heads=heads, head_dim=HEAD_DIM, max_position_embeddings=128,
                       rope_theta=10000.0)


def get_config(policy: object = "fp32") -> ml_collections.ConfigDict:
    """The base run (hidden 96, 2 layers, 300 steps of 32 sequences) with ``policy`` (a policy
    name or a `bitscale.nn.Policy`), locked."""
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config()
    cfg.policy = policy
    cfg.seed = 0

    cfg.data = ml_collections.ConfigDict()
    cfg.data.task = "arithmetic"
    cfg.data.digits = 2
    cfg.data.split = "train"
    cfg.data.max_prompt_len = 24
    cfg.data.ops = ("*",)
    cfg.data.style = "compact"
    cfg.data.pad = False
    cfg.data.max_len = 64                # BOS + prompt + steps + EOS: at most 62 tokens
    cfg.data.loss_on = "answer"

    cfg.loss = loss_section()
    cfg.mesh = mesh_section()
    cfg.optim = optim_section(lr=3e-3, warmup_steps=30)
    cfg.train = train_section(batch_size=32, steps=300, log_every=10, checkpoint_every=100000,
                              max_to_keep=1, progress=False)
    cfg.lock()
    return cfg
