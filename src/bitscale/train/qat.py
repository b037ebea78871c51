"""Optax QAT transforms: stochastic-rounded low-precision master weights, LSQ step sizes and
per-precision learning-rate scaling. Factories return `optax.GradientTransformation` with NamedTuple
states and compose with `optax.chain`.

References:
  Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015 (stochastic rounding).
  Zamirai et al., "Revisiting BFloat16 Training", arXiv:2010.06192 (SR for bf16 master weights).
  Esser et al., "Learned Step Size Quantization", arXiv:1902.08153 (LSQ).
  Jeon et al., "L4Q: Parameter Efficient Quantization-Aware Fine-Tuning on Large Language Models",
  arXiv:2402.04902.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bitscale.numerics import fake_quant, lsq_fake_quant, resolve_spec
from bitscale.numerics.formats import IntFormat

__all__ = [
    "LowPrecisionMasterState",
    "init_step_sizes",
    "low_precision_master",
    "lsq_quantize_params",
    "param_path",
    "scale_by_precision",
    "sr_apply_updates",
]

PyTree = Any


# ---------------------------------------------------------------------------------------------
# Stochastic-rounded low-precision master weights


class LowPrecisionMasterState(NamedTuple):
    """State of `low_precision_master`: the int32 step counter that keys the rounding.

    References:
      optax's `ScaleByScheduleState` (a scalar int32 count, stable under jit).
    """

    count: jax.Array


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _sr_targets(params: PyTree, updates: PyTree, spec: str, key: jax.Array,
                axis: int) -> tuple[list, list, list, Any]:
    """Per leaf: (params, updates, float32 SR(p + u) or None for pass-through leaves), treedef."""
    p_leaves, treedef = jax.tree_util.tree_flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    targets = []
    for i, (p, u) in enumerate(zip(p_leaves, u_leaves)):
        if u is None or not _is_float(p):
            targets.append(None)
            continue
        s = p.astype(jnp.float32) + jnp.asarray(u).astype(jnp.float32)
        targets.append(fake_quant(s, spec, axis=axis, rounding="stochastic",
                                  key=jax.random.fold_in(key, i)))
    return p_leaves, u_leaves, targets, treedef


def sr_apply_updates(params: PyTree, updates: PyTree, spec: str = "bf16", key: jax.Array = None,
                     *, axis: int = -1) -> PyTree:
    """Returns ``fake_quant(p + u, spec, rounding="stochastic")`` per leaf, in each param's dtype.

    The sum is taken in float32; leaf ``i`` uses ``fold_in(key, i)`` (flattening order). Leaves
    with a None update keep their value; non-float leaves get a plain ``p + u``.

    References:
      Gupta et al., ICML 2015; Zamirai et al., arXiv:2010.06192.
    """
    if key is None:
        raise ValueError("sr_apply_updates needs a jax.random key")
    resolve_spec(spec)
    p_leaves, u_leaves, targets, treedef = _sr_targets(params, updates, spec, key, axis)
    out = []
    for p, u, q in zip(p_leaves, u_leaves, targets):
        if q is not None:
            out.append(q.astype(p.dtype))
        else:
            out.append(p if u is None else jnp.asarray(p + u).astype(jnp.asarray(p).dtype))
    return treedef.unflatten(out)


def low_precision_master(spec: str = "bf16", seed: int | jax.Array = 0, *,
                         axis: int = -1) -> optax.GradientTransformation:
    """Stochastic-rounded low-precision master weights as the last link of an `optax.chain`.

    ``update`` returns ``fake_quant(p + u, spec, SR, key_t) - p`` (float32), so that
    ``optax.apply_updates`` lands on ``sr_apply_updates(params, updates, spec, key_t)`` with
    ``key_t = fold_in(key(seed), count)``. Caveat: this needs ``p + (q - p) == q`` in float32,
    which holds when ``p`` and ``q`` both lie on the ``spec`` grid (e.g. bf16 values in float32 or
    bfloat16 storage: 8-bit significands, exact for exponent gaps below 16); float32 params off the
    grid may be off by one float32 ulp until their first update. Place it after the learning-rate
    scaling (e.g. after `optax.adamw`); ``update`` needs ``params``.

    References:
      Gupta et al., ICML 2015; Zamirai et al., arXiv:2010.06192.
    """
    resolve_spec(spec)

    def base_key() -> jax.Array:
        if isinstance(seed, int):
            return jax.random.key(seed)
        return seed

    def init_fn(params: PyTree) -> LowPrecisionMasterState:
        del params
        return LowPrecisionMasterState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates: PyTree, state: LowPrecisionMasterState,
                  params: PyTree | None = None) -> tuple[PyTree, LowPrecisionMasterState]:
        if params is None:
            raise ValueError("low_precision_master needs params in update()")
        key = jax.random.fold_in(base_key(), state.count)
        p_leaves, u_leaves, targets, treedef = _sr_targets(params, updates, spec, key, axis)
        new = []
        for p, u, q in zip(p_leaves, u_leaves, targets):
            if q is None:
                new.append(u)
            else:
                dtype = jnp.promote_types(jnp.asarray(u).dtype, jnp.float32)
                new.append((q - p.astype(jnp.float32)).astype(dtype))
        return treedef.unflatten(new), LowPrecisionMasterState(
            count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# LSQ learned step sizes


def _int_format(fmt: str | IntFormat) -> IntFormat:
    f = resolve_spec(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(f, IntFormat):
        raise ValueError(f"LSQ needs an integer format, got {fmt!r}")
    return f


def _default_include(path: str, leaf: jax.Array) -> bool:
    del path
    return _is_float(leaf) and jnp.ndim(leaf) >= 2


def init_step_sizes(params: PyTree, fmt: str | IntFormat = "int4", axis: int | None = -1, *,
                    include: Callable[[str, jax.Array], bool] = _default_include,
                    min_step: float = 1e-8) -> PyTree:
    """LSQ initial step sizes ``2 mean|w| / sqrt(qmax)`` (float32), one per channel.

    ``axis`` is the axis whose elements share a step (bitscale's convention; the contraction axis
    of a kernel, -1 for W [out, in]); None gives one scalar step per tensor. Steps keep the reduced
    dim (they broadcast against the leaf). Leaves for which ``include(path, leaf)`` is False
    (default: float leaves of rank < 2) get None and stay unquantized.

    References:
      Esser et al., arXiv:1902.08153, section 2.1; Jeon et al., arXiv:2402.04902.
    """
    qmax = _int_format(fmt).qmax

    def one(path, w):
        if not include(param_path(path), w):
            return None
        a = jnp.abs(jnp.asarray(w, jnp.float32))
        mean = jnp.mean(a) if axis is None else jnp.mean(a, axis=axis, keepdims=True)
        return jnp.maximum(2.0 * mean / math.sqrt(qmax), min_step)

    return jax.tree_util.tree_map_with_path(one, params)


def lsq_quantize_params(params: PyTree, steps: PyTree, fmt: str | IntFormat = "int4", *,
                        min_step: float = 1e-8) -> PyTree:
    """Fake-quantizes each param that has a step with `bitscale.lsq_fake_quant`.

    Differentiable in both ``params`` (clipped STE) and ``steps`` (LSQ gradient); steps are clamped
    below at ``min_step``. Leaves whose step is None pass through.

    References:
      Esser et al., arXiv:1902.08153.
    """
    f = _int_format(fmt)

    def one(w, s):
        if s is None:
            return w
        return lsq_fake_quant(w, jnp.maximum(s, min_step).astype(jnp.float32), f)

    return jax.tree_util.tree_map(one, params, steps, is_leaf=lambda x: x is None)


# ---------------------------------------------------------------------------------------------
# Per-precision learning-rate scaling


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def param_path(path: tuple) -> str:
    """A pytree key path as a dotted string (``layers.0.mlp.kernel``), as the policy regexes see.

    References:
      `bitscale.nn.Rule` (dotted module paths matched with re.fullmatch).
    """
    return ".".join(_key_name(k) for k in path)


def scale_by_precision(lr_scales: Mapping[str, float] | Callable[[str], float], *,
                       default: float = 1.0) -> optax.GradientTransformation:
    """Multiplies each update by a per-parameter factor chosen from its dotted path.

    ``lr_scales`` is a dict of regex -> factor (first ``re.fullmatch`` wins, else ``default``),
    e.g. ``{".*mlp.*": 0.5}``, or a callable path -> factor. Stateless (`optax.EmptyState`);
    factors are resolved at trace time and keep each update's dtype.

    References:
      optax `scale` / `masked`; per-layer learning rates for quantized layers, Esser et al.,
      arXiv:1902.08153.
    """
    if callable(lr_scales):
        factor_for = lr_scales
    else:
        rules = [(re.compile(pat), float(s)) for pat, s in lr_scales.items()]

        def factor_for(path: str) -> float:
            for rx, s in rules:
                if rx.fullmatch(path):
                    return s
            return default

    def init_fn(params: PyTree) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: PyTree, state: optax.EmptyState,
                  params: PyTree | None = None) -> tuple[PyTree, optax.EmptyState]:
        del params

        def one(path, u):
            s = float(factor_for(param_path(path)))
            return u if s == 1.0 else (u * s).astype(u.dtype)

        return jax.tree_util.tree_map_with_path(one, updates), state

    return optax.GradientTransformation(init_fn, update_fn)
