"""DCO vs cross-entropy study config: a small char-level Llama over-trained on a finite pool.

Used by ``python -m bitscale.studies.dco`` (see experiments/dco.sh): both losses train this exact
config (same model init, pool, data order and steps per seed); only ``loss`` changes. The pool
(``data.train_examples``: 256 problems of 2-digit multiplication with compact worked steps) is
seen ~90 times in 1500 steps of 16, so cross-entropy memorises it and grows over-confident on
held-out problems -- the regime where Chen et al. report pass@N falling with longer training.

    python -m bitscale.train --config=configs/dco.py:dco16 --workdir=/tmp/dco16

``get_config(loss)``: ``"ce"`` (token cross-entropy) or ``"dco<N>"`` (DCO for pass@N, e.g.
``dco16``).

References:
  Chen et al., "Rethinking Fine-Tuning when Scaling Test-Time Compute: Limiting Confidence
  Improves Mathematical Reasoning", arXiv:2502.07154.
"""

from __future__ import annotations

import re

import ml_collections

from bitscale.nn import ModelConfig
from bitscale.train.sections import loss_section, mesh_section, optim_section, train_section

SMALL = ModelConfig(
    arch="llama",
    vocab_size=128,          # CharTokenizer uses ids < 100
    hidden_size=128,
    intermediate_size=256,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=128,
    rope_theta=10000.0,
)


def loss_of(name: str) -> ml_collections.ConfigDict:
    """``cfg.loss`` of ``"ce"`` or ``"dco<N>"`` (ValueError otherwise)."""
    if name == "ce":
        return loss_section(kind="ce")
    m = re.fullmatch(r"dco(\d+)", name)
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"loss must be 'ce' or 'dco<N>' (N >= 1), got {name!r}")
    return loss_section(kind="dco", dco_n=int(m.group(1)))


def get_config(loss: str = "ce") -> ml_collections.ConfigDict:
    """The study's model, pool and schedule with ``loss`` (``ce`` or ``dco<N>``), locked."""
    cfg = ml_collections.ConfigDict()
    cfg.model = SMALL
    cfg.policy = "fp32"
    cfg.seed = 0

    cfg.data = ml_collections.ConfigDict()
    cfg.data.task = "arithmetic"
    cfg.data.digits = 2
    cfg.data.ops = ("*",)
    cfg.data.style = "compact"           # "85*3=255" lines, then the sum of the partial products
    cfg.data.pad = False
    cfg.data.split = "train"
    cfg.data.train_examples = 256        # the finite pool, reshuffled every epoch
    cfg.data.max_prompt_len = 24
    cfg.data.max_len = 64
    cfg.data.loss_on = "answer"

    cfg.loss = loss_of(loss)
    cfg.mesh = mesh_section()
    cfg.optim = optim_section(lr=3e-3, warmup_steps=50)
    cfg.train = train_section(batch_size=16, steps=1500, log_every=25, checkpoint_every=250,
                              max_to_keep=100)
    cfg.lock()
    return cfg
