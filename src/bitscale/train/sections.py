"""The typed config sections of a `bitscale.train.train` run, and the builders configs use.

Each section is a frozen dataclass holding its defaults and its validation. A ``configs/*.py``
file builds its locked ``loss`` / ``mesh`` / ``optim`` / ``train`` sections from them, naming only
what it changes::

    cfg.optim = optim_section(lr=3e-3, warmup_steps=20)
    cfg.train = train_section(steps=200, checkpoint_every=50)

Every key stays in the config, so each can be overridden on the command line
(``--config.optim.lr=1e-3``); the loop reads the sections back as dataclasses
(`RunConfig.of`), so a misspelt key or an out-of-range value fails before anything is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import ml_collections
from jax.sharding import Mesh

from bitscale import nn as bnn
from bitscale.data import PAD_ID

__all__ = ["LOSSES", "LossConfig", "MeshConfig", "OptimConfig", "RunConfig", "TrainConfig",
           "loss_section", "mesh_section", "optim_section", "read_section", "section_builder",
           "train_section"]

LOSSES = ("ce", "dco")
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """``cfg.optim``: AdamW with linear warmup and cosine decay, clipping and QAT transforms.

    Attributes:
      lr: peak learning rate; warmup_steps: linear warmup from 0; end_lr_ratio: the cosine decays
        to ``lr * end_lr_ratio`` at the last update.
      b1, b2, weight_decay: AdamW's.
      clip_norm: global-norm clipping threshold (0: none).
      lr_scales: ``((regex, factor), ...)`` (`bitscale.train.scale_by_precision`).
      master_spec: e.g. ``"bf16"``: low-precision master weights
        (`bitscale.train.low_precision_master`); "" keeps float32 masters.
    """

    lr: float = 3e-4
    warmup_steps: int = 100
    end_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    lr_scales: tuple = ()
    master_spec: str = ""

    def __post_init__(self):
        object.__setattr__(self, "lr_scales",
                           tuple((str(k), float(v)) for k, v in (self.lr_scales or ())))
        _nonneg("optim", self, "lr", "warmup_steps", "end_lr_ratio", "weight_decay", "clip_norm")
        for k in ("b1", "b2"):
            if not 0.0 <= float(getattr(self, k)) < 1.0:
                raise ValueError(f"optim.{k} must be in [0, 1), got {getattr(self, k)!r}")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """``cfg.loss``: what the supervised step minimises.

    Attributes:
      kind: ``ce`` (token cross-entropy averaged over the step's masked tokens) or ``dco`` (the
        pass@N-aware DCO loss of each sequence, averaged over sequences; `bitscale.train.dco_loss`).
      dco_n: N of DCO.
      masked_thought_rate: final Masked Thought input-masking rate of answer tokens (0: off).
      masked_thought_ramp: fraction of ``train.steps`` over which the rate ramps up from 0.
      mask_id: token written over masked inputs (the CharTokenizer's PAD).
    """

    kind: str = "ce"
    dco_n: int = 1
    masked_thought_rate: float = 0.0
    masked_thought_ramp: float = 0.0
    mask_id: int = PAD_ID

    def __post_init__(self):
        if self.kind not in LOSSES:
            raise ValueError(f"loss.kind must be one of {LOSSES}, got {self.kind!r}")
        if int(self.dco_n) < 1:
            raise ValueError(f"loss.dco_n must be >= 1, got {self.dco_n}")
        if not 0.0 <= float(self.masked_thought_rate) < 1.0:
            raise ValueError(f"loss.masked_thought_rate must be in [0, 1), got "
                             f"{self.masked_thought_rate}")
        if not 0.0 <= float(self.masked_thought_ramp) <= 1.0:
            raise ValueError(f"loss.masked_thought_ramp must be in [0, 1], got "
                             f"{self.masked_thought_ramp}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """``cfg.mesh``: the (data, fsdp, tensor) axis sizes; one may be -1 (all other devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def make(self) -> Mesh:
        """The mesh over all devices (ValueError if the sizes do not match the device count)."""
        return bnn.make_mesh(int(self.data), int(self.fsdp), int(self.tensor))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``cfg.train``: the loop's schedule and bookkeeping.

    Attributes:
      batch_size: sequences per step (all micro-batches); grad_accum: micro-batches per step
        (divides batch_size); steps: optimizer updates.
      log_every, checkpoint_every, max_to_keep, progress (a progress line on stderr).
      stop_after: > 0: stop after that step without saving (the kill drill).
      debug_nan_at_step: > 0: make that step's loss NaN (the NaN-guard drill).
    """

    batch_size: int = 16
    grad_accum: int = 1
    steps: int = 1000
    log_every: int = 10
    checkpoint_every: int = 100
    max_to_keep: int = 3
    stop_after: int = 0
    debug_nan_at_step: int = 0
    progress: bool = True

    def __post_init__(self):
        for k, lo in (("batch_size", 1), ("grad_accum", 1), ("steps", 1), ("log_every", 1),
                      ("checkpoint_every", 1), ("max_to_keep", 1), ("stop_after", 0),
                      ("debug_nan_at_step", 0)):
            v = getattr(self, k)
            if isinstance(v, bool) or int(v) != v or v < lo:
                raise ValueError(f"train.{k} must be an int >= {lo}, got {v!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.grad_accum={self.grad_accum} must divide "
                             f"train.batch_size={self.batch_size}")

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.grad_accum


def _nonneg(section: str, obj: Any, *keys: str) -> None:
    for k in keys:
        v = getattr(obj, k)
        if isinstance(v, bool) or not float(v) >= 0.0:
            raise ValueError(f"{section}.{k} must be a number >= 0, got {v!r}")


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def read_section(cls: type[_T], section: Mapping[str, Any] | None, name: str) -> _T:
    """``cls`` built from the config section ``name`` (absent keys take the defaults).

    Raises:
      ValueError: a key that is not a field of ``cls`` (named, with the valid keys), or a value
        the dataclass refuses.
    """
    if section is None:
        return cls()
    keys = list(section.keys())
    unknown = sorted(set(keys) - set(_names(cls)))
    if unknown:
        raise ValueError(f"unknown cfg.{name} keys {unknown}; valid: {sorted(_names(cls))}")
    return cls(**{k: section[k] for k in keys})


def section_builder(cls: type, name: str):
    """``name_section(**overrides) -> ConfigDict`` holding every field of the dataclass ``cls``
    (its defaults, updated with ``overrides``; validated by building ``cls``)."""

    def build(**overrides: Any) -> ml_collections.ConfigDict:
        unknown = sorted(set(overrides) - set(_names(cls)))
        if unknown:
            raise ValueError(f"{name}_section: unknown keys {unknown}; valid: "
                             f"{sorted(_names(cls))}")
        return ml_collections.ConfigDict(dataclasses.asdict(cls(**overrides)))

    build.__name__ = build.__qualname__ = f"{name}_section"
    build.__doc__ = (f"``cfg.{name}``: every field of `{cls.__name__}`, its defaults updated "
                     f"with ``overrides`` (unknown keys or bad values: ValueError).")
    return build


loss_section = section_builder(LossConfig, "loss")
mesh_section = section_builder(MeshConfig, "mesh")
optim_section = section_builder(OptimConfig, "optim")
train_section = section_builder(TrainConfig, "train")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A training run's config, typed: what `bitscale.train.train` reads from a ConfigDict.

    ``data`` stays a mapping: its task keys depend on the task (`bitscale.data.make_task`);
    the loop also reads ``split``, ``max_prompt_len``, ``max_len`` and ``loss_on``.
    """

    model: bnn.ModelConfig
    policy: Any
    seed: int
    data: Mapping[str, Any]
    optim: OptimConfig
    loss: LossConfig
    mesh: MeshConfig
    train: TrainConfig

    @classmethod
    def of(cls, cfg: Any) -> RunConfig:
        """The typed view of ``cfg`` (a ConfigDict with ``model``, ``policy``, ``seed``, ``data``,
        ``optim``, ``train`` and optional ``loss`` and ``mesh``); validates every section."""
        if isinstance(cfg, cls):
            return cfg
        get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        missing = [k for k in ("model", "policy", "data", "optim", "train") if get(k) is None]
        if missing:
            raise ValueError(f"the run config has no {missing} section(s) (see configs/tiny.py)")
        bnn.resolve_policy(get("policy"))
        data = get("data")
        data = dict(data.to_dict() if hasattr(data, "to_dict") else data)
        for k in ("task", "split", "max_prompt_len", "max_len"):
            if k not in data:
                raise ValueError(f"cfg.data has no {k!r} key (see configs/tiny.py)")
        return cls(model=get("model"), policy=get("policy"), seed=int(get("seed", 0)), data=data,
                   optim=read_section(OptimConfig, get("optim"), "optim"),
                   loss=read_section(LossConfig, get("loss"), "loss"),
                   mesh=read_section(MeshConfig, get("mesh"), "mesh"),
                   train=read_section(TrainConfig, get("train"), "train"))
