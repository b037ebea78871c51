"""bitscale: precision-aware LLM training and test-time scaling in JAX."""

from bitscale.numerics import *  # noqa: F401,F403
from bitscale.numerics import __all__ as _numerics_all

__version__ = "0.1.0"
__all__ = list(_numerics_all)
