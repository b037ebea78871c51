"""The config sections a `bitscale.train.train` run reads, with their defaults in one place.

A ``configs/*.py`` file builds its ``loss`` / ``mesh`` / ``optim`` / ``train`` sections with
these functions and names only what it changes::

    cfg.optim = optim_section(lr=3e-3, warmup_steps=20)
    cfg.train = train_section(steps=200, checkpoint_every=50)

Every key stays in the (locked) config, so each can be overridden on the command line
(``--config.optim.lr=1e-3``). Keys:

  loss: ``kind`` (``ce`` | ``dco``: pass@N-aware `bitscale.train.dco_loss`), ``dco_n``,
    ``masked_thought_rate`` (> 0: Masked Thought input masking of answer tokens),
    ``masked_thought_ramp`` (fraction of train.steps over which the rate ramps up), ``mask_id``
    (token written over masked inputs; the CharTokenizer's PAD).
  mesh: ``data``, ``fsdp``, ``tensor`` axis sizes (-1: all remaining devices).
  optim: ``lr`` (peak), ``warmup_steps`` (linear from 0), ``end_lr_ratio`` (cosine decays to
    ``lr * end_lr_ratio`` at train.steps), ``b1``, ``b2``, ``weight_decay`` (AdamW),
    ``clip_norm`` (0: no global-norm clipping), ``lr_scales`` (``((regex, factor), ...)``:
    `bitscale.train.scale_by_precision`), ``master_spec`` (e.g. ``"bf16"``:
    `bitscale.train.low_precision_master`).
  train: ``batch_size`` (per step, all micro-batches), ``grad_accum`` (micro-batches per step;
    must divide batch_size), ``steps``, ``log_every``, ``checkpoint_every``, ``max_to_keep``,
    ``stop_after`` (> 0: stop after that step without saving, the kill drill),
    ``debug_nan_at_step`` (> 0: make that step's loss NaN, the NaN-guard drill), ``progress``
    (a progress line on stderr).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from bitscale.data import PAD_ID

__all__ = ["LOSS_DEFAULTS", "MESH_DEFAULTS", "OPTIM_DEFAULTS", "TRAIN_DEFAULTS", "loss_section",
           "mesh_section", "optim_section", "train_section"]

LOSS_DEFAULTS: Mapping[str, Any] = {
    "kind": "ce", "dco_n": 1, "masked_thought_rate": 0.0, "masked_thought_ramp": 0.0,
    "mask_id": PAD_ID}
MESH_DEFAULTS: Mapping[str, Any] = {"data": -1, "fsdp": 1, "tensor": 1}
OPTIM_DEFAULTS: Mapping[str, Any] = {
    "lr": 3e-4, "warmup_steps": 100, "end_lr_ratio": 0.1, "b1": 0.9, "b2": 0.95,
    "weight_decay": 0.01, "clip_norm": 1.0, "lr_scales": (), "master_spec": ""}
TRAIN_DEFAULTS: Mapping[str, Any] = {
    "batch_size": 16, "grad_accum": 1, "steps": 1000, "log_every": 10, "checkpoint_every": 100,
    "max_to_keep": 3, "stop_after": 0, "debug_nan_at_step": 0, "progress": True}


def _section(name: str, defaults: Mapping[str, Any], overrides: dict) -> ml_collections.ConfigDict:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"{name}_section: unknown keys {unknown}; valid: {sorted(defaults)}")
    return ml_collections.ConfigDict({**defaults, **overrides})


def loss_section(**overrides: Any) -> ml_collections.ConfigDict:
    """``cfg.loss``: `LOSS_DEFAULTS` updated with ``overrides`` (unknown keys: ValueError)."""
    return _section("loss", LOSS_DEFAULTS, overrides)


def mesh_section(**overrides: Any) -> ml_collections.ConfigDict:
    """``cfg.mesh``: `MESH_DEFAULTS` updated with ``overrides`` (unknown keys: ValueError)."""
    return _section("mesh", MESH_DEFAULTS, overrides)


def optim_section(**overrides: Any) -> ml_collections.ConfigDict:
    """``cfg.optim``: `OPTIM_DEFAULTS` updated with ``overrides`` (unknown keys: ValueError)."""
    return _section("optim", OPTIM_DEFAULTS, overrides)


def train_section(**overrides: Any) -> ml_collections.ConfigDict:
    """``cfg.train``: `TRAIN_DEFAULTS` updated with ``overrides`` (unknown keys: ValueError)."""
    return _section("train", TRAIN_DEFAULTS, overrides)
