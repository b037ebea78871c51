"""Gradient estimators of `fake_quant` (STE, clipped STE, QuEST trust mask) and LSQ.

References:
  Bengio et al., "Estimating or Propagating Gradients Through Stochastic Neurons", 2013 (STE).
  Panferov et al., "QuEST: Stable Training of LLMs with 1-Bit Weights and Activations",
    arXiv:2502.05003 (trust mask).
  Esser et al., "Learned Step Size Quantization", ICLR 2020, arXiv:1902.08153 (LSQ).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.numerics import elementwise as E
from bitscale.numerics import ieee
from bitscale.numerics import validate as V
from bitscale.numerics.formats import IntFormat
from bitscale.numerics.specs import resolve_spec


@dataclasses.dataclass(frozen=True)
class STE:
    """Straight-through: d fake_quant(x) / dx = 1 everywhere."""


@dataclasses.dataclass(frozen=True)
class ClippedSTE:
    """Straight-through inside the representable range, zero where the input was clipped."""


@dataclasses.dataclass(frozen=True)
class TrustMask:
    """QuEST trust estimator: gradient 1 where |x - q(x)| <= factor * step / 2, else 0.

    ``step`` is the local grid spacing in x's units (the scale for integers, the scaled ulp of the
    element for floats). ``factor=1`` is QuEST's default (trust = optimal scale / (levels - 1)
    standard deviations, i.e. half a step): with nearest rounding it masks clipped elements only;
    with stochastic rounding it also masks those that were rounded by more than ``factor`` half
    steps.
    """

    factor: float = 1.0

    def __post_init__(self):
        if not self.factor > 0:
            raise ValueError(f"TrustMask factor must be > 0, got {self.factor!r}")


Estimator = Union[STE, ClippedSTE, TrustMask]
ESTIMATORS: dict[str, Estimator] = {
    "ste": STE(), "clipped_ste": ClippedSTE(), "trust": TrustMask()}


def resolve_estimator(estimator: "str | Estimator") -> Estimator:
    if isinstance(estimator, (STE, ClippedSTE, TrustMask)):
        return estimator
    if isinstance(estimator, str) and estimator in ESTIMATORS:
        return ESTIMATORS[estimator]
    raise ValueError(f"unknown estimator {estimator!r}; valid: {sorted(ESTIMATORS)} or an "
                     "STE / ClippedSTE / TrustMask(factor) object")


# ---------------------------------------------------------------------------------------------
# LSQ


def lsq_fake_quant(x: jax.Array, step: jax.Array, fmt: "str | IntFormat" = "int4", *,
                   grad_scale: float | None = None) -> jax.Array:
    """LSQ: ``clip(round(x / step), qmin, qmax) * step`` with a learnable ``step``.

    ``step`` broadcasts against ``x`` (a scalar, or per channel with kept dims). Gradients (Esser et
    al., eq. 3): dx = 1 inside [qmin, qmax] * step, else 0; d step = (round(v) - v) inside,
    qmin or qmax outside, times ``grad_scale`` (default 1 / sqrt(elements per step * qmax)),
    summed over the elements sharing a step.
    """
    fmt = resolve_spec(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(fmt, IntFormat):
        raise ValueError(f"lsq_fake_quant needs an integer format, got {getattr(fmt, 'name', fmt)!r}")
    x = V.check_input(x)
    step_dtype = step.dtype if hasattr(step, "dtype") else np.asarray(step).dtype
    if not jnp.issubdtype(step_dtype, jnp.floating):
        raise TypeError(f"step must be a float array, got dtype {step_dtype}")
    step = jnp.asarray(step, x.dtype)
    try:
        jnp.broadcast_shapes(step.shape, x.shape)
    except ValueError:
        raise ValueError(f"step of shape {step.shape} does not broadcast to x of shape "
                         f"{x.shape}") from None
    if step.ndim > x.ndim or jnp.broadcast_shapes(step.shape, x.shape) != x.shape:
        raise ValueError(f"step of shape {step.shape} must broadcast to x's shape {x.shape}")
    if grad_scale is None:
        grad_scale = 1.0 / math.sqrt(x.size / max(step.size, 1) * fmt.qmax)
    step_full_rank = step.reshape((1,) * (x.ndim - step.ndim) + step.shape)
    return _lsq(x, step_full_rank, fmt, float(grad_scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _lsq(x, step, fmt, gscale):
    return _lsq_fwd(x, step, fmt, gscale)[0]


def _lsq_fwd(x, step, fmt, gscale):
    step32 = E.to_f32(step)
    v = ieee.div(E.to_f32(x), step32)
    vc = jnp.clip(v, float(fmt.qmin), float(fmt.qmax))
    q = E.round_fixed(vc, 0, None).astype(jnp.float32)
    y = E.from_f32(ieee.canonical_nan(ieee.mul(q, step32)), x.dtype)
    return y, (v, q, step)


def _lsq_bwd(fmt, gscale, res, g):
    v, q, step = res
    inside = (v >= fmt.qmin) & (v <= fmt.qmax)
    g32 = g.astype(jnp.float32)
    dx = jnp.where(inside, g32, 0.0).astype(g.dtype)
    dstep_el = jnp.where(inside, q - v, q) * g32 * gscale
    # Sum over the broadcast dimensions back to step's shape.
    extra = dstep_el.ndim - step.ndim
    dstep = jnp.sum(dstep_el, axis=tuple(range(extra))) if extra else dstep_el
    axes = tuple(i for i, d in enumerate(step.shape) if d == 1 and dstep.shape[i] != 1)
    dstep = jnp.sum(dstep, axis=axes, keepdims=True) if axes else dstep
    return dx, dstep.reshape(step.shape).astype(step.dtype)


_lsq.defvjp(_lsq_fwd, _lsq_bwd)
