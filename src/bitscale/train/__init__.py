"""bitscale.train: losses (CE, DCO, Masked Thought) and optax QAT transforms."""

from bitscale.train.losses import *  # noqa: F401,F403
from bitscale.train.losses import __all__ as _losses_all
from bitscale.train.qat import *  # noqa: F401,F403
from bitscale.train.qat import __all__ as _qat_all

__all__ = list(_losses_all) + list(_qat_all)
