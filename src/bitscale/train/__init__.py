"""bitscale.train: losses (CE, DCO, Masked Thought), optax QAT transforms, the train state and
step, the resumable loop, checkpoints and evaluation.
Launch: ``python -m bitscale.train --config=... --workdir=...``.

Public modules (namespaces other packages import): `sections` (the typed config sections),
`checkpoint`, `metrics`, `evaluate`, `losses`, `qat`. Private ones, reached through this
``__init__``: `_state` (`TrainState`, the optimizer), `_step` (the jitted supervised step),
`_loop` (`train`), `_resume` (config-change check, `restore_model`), `_driver`.
"""

from bitscale.train import evaluate, sections
from bitscale.train._driver import StepDriver
from bitscale.train._loop import train
from bitscale.train._resume import check_resume_config, restore_model, saved_config
from bitscale.train._state import TrainState, create_train_state, make_optimizer, make_schedule
from bitscale.train._step import BATCH_FIELDS, make_train_step
from bitscale.train.checkpoint import CheckpointError, Checkpointer
from bitscale.train.losses import *  # noqa: F403
from bitscale.train.losses import __all__ as _losses_all
from bitscale.train.qat import *  # noqa: F403
from bitscale.train.qat import __all__ as _qat_all
from bitscale.train.sections import (LossConfig, MeshConfig, OptimConfig, RunConfig,
                                     TrainConfig)

__all__ = list(_losses_all) + list(_qat_all) + [
    "BATCH_FIELDS", "CheckpointError", "Checkpointer", "LossConfig", "MeshConfig", "OptimConfig", "RunConfig",
    "StepDriver", "TrainConfig", "TrainState", "check_resume_config", "create_train_state",
    "evaluate", "make_optimizer", "make_schedule", "make_train_step", "restore_model", "saved_config",
    "sections", "train"]
