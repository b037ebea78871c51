"""bitscale.train: losses (CE, DCO, Masked Thought), optax QAT transforms, the train state and
step, the resumable loop, checkpoints and evaluation.
Launch: ``python -m bitscale.train --config=... --workdir=...``.

Modules: `sections` (the typed config sections), `state` (`TrainState`, the optimizer), `step`
(the jitted supervised step), `loop` (`train`), `resume` (config-change check, `restore_model`),
`checkpoint`, `metrics`, `evaluate`, `losses`, `qat`.
"""

from bitscale.train import evaluate, sections
from bitscale.train._driver import StepDriver
from bitscale.train.checkpoint import CheckpointError, Checkpointer
from bitscale.train.loop import train
from bitscale.train.losses import *  # noqa: F403
from bitscale.train.losses import __all__ as _losses_all
from bitscale.train.qat import *  # noqa: F403
from bitscale.train.qat import __all__ as _qat_all
from bitscale.train.resume import check_resume_config, restore_model
from bitscale.train.sections import (LossConfig, MeshConfig, OptimConfig, RunConfig,
                                     TrainConfig)
from bitscale.train.state import TrainState, create_train_state, make_optimizer, make_schedule
from bitscale.train.step import make_train_step

__all__ = list(_losses_all) + list(_qat_all) + [
    "CheckpointError", "Checkpointer", "LossConfig", "MeshConfig", "OptimConfig", "RunConfig",
    "StepDriver", "TrainConfig", "TrainState", "check_resume_config", "create_train_state",
    "evaluate", "make_optimizer", "make_schedule", "make_train_step", "restore_model", "sections",
    "train"]
