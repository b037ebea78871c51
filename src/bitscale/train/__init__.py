"""bitscale.train: losses (CE, DCO, Masked Thought), optax QAT transforms, the train loop,
checkpoints and evaluation. Launch: ``python -m bitscale.train --config=... --workdir=...``."""

from bitscale.train import evaluate, sections
from bitscale.train._driver import StepDriver
from bitscale.train.checkpoint import CheckpointError, Checkpointer
from bitscale.train.losses import *  # noqa: F403
from bitscale.train.losses import __all__ as _losses_all
from bitscale.train.loop import (TrainState, create_train_state, make_optimizer, make_schedule,
                                 make_train_step, train)
from bitscale.train.qat import *  # noqa: F403
from bitscale.train.qat import __all__ as _qat_all

__all__ = list(_losses_all) + list(_qat_all) + [
    "CheckpointError", "Checkpointer", "StepDriver", "TrainState", "create_train_state",
    "evaluate", "make_optimizer", "make_schedule", "make_train_step", "sections", "train"]
