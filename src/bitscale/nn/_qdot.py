"""The policy-driven quantized ``dot_general`` with its custom VJP.

Forward: ``y = dot(Q_act(lhs), Q_weight(rhs))`` with each operand fake-quantized along its
contraction axis (so MX / NVFP4 / int blocks run along the reduction dimension), cast to the
rule's compute dtype, accumulated and returned in float32.

Backward, for output gradient ``g``:

1. ``gq = Q_grad(g)`` along g's last axis (None: unchanged); with ``grad_axis="contraction"`` two
   copies, along N for dX and along the (flattened) token axes for dW;
2. ``(dX, dW)`` = the VJP of the product at ``(A, Q_weight(rhs))`` applied to ``gq``, with
   ``A = Q_act(lhs)`` when ``wgrad_act == "quantized"`` (plain STE) or ``A = lhs`` when
   ``"original"`` (AQT / Qwix); dX only involves Q_weight(rhs) and dW only A;
3. the forward fake-quant's estimator masks dX and dW (STE: identity);
4. ``dX = Q_grad_lhs(dX)`` and ``dW = Q_grad_rhs(dW)``, along each operand's contraction axis.

A rule's ``reduction`` hook (`bitscale.nn.Rule`), when set, computes the product in place of
`lax.dot_general` (forward, and through its VJP backward): an emulated accumulation order or a
batch-invariant tiling from `bitscale.repro`.

A rule's ``implementation`` picks where it runs (`bitscale.nn.Rule`): on a GPU / TPU under
``auto``, a projection whose rule ``qmatmul`` computes goes through that kernel whole (same
numerics, its own summation order); otherwise each fake quantization runs
``pallas_kernels.fake_quant`` (the fused kernel, bit-identical to `bitscale.fake_quant`) where it
covers the spec and the estimator is the plain STE, and the products stay XLA dots (or the
``reduction`` hook); on a CPU, or with ``xla``, everything is XLA.

Stochastic rounding needs random bits. `qdot` takes one key per model call; it folds in a hash of
the module path and then a slot number (0: lhs, 1: rhs, 2: g, 3: dX, 4: dW), so every
quantization point of every layer gets its own deterministic stream. Without a key, stochastic
rounding falls back to nearest rounding, with a warning when such a forward (``fwd_rounding``) or
backward pass (``grad_rounding``) is traced; inference without a key is silent for rules that
round only gradients stochastically.

References:
  AQT (google/aqt) `aqt_dot_general.py`; Qwix (google/qwix) `dot_general_qt`.
  Bengio et al., "Estimating or Propagating Gradients Through Stochastic Neurons", 2013.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
import zlib
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from bitscale.numerics import fake_quant
from bitscale.numerics.estimators import STE
from bitscale.numerics.scaling import grouping
from bitscale.numerics.specs import QuantSpec
from bitscale.nn._packed import pallas_kernels_module
from bitscale.nn._policy import Rule

DimensionNumbers = tuple[tuple[tuple[int, ...], tuple[int, ...]],
                         tuple[tuple[int, ...], tuple[int, ...]]]
_SLOTS = 5


def path_key(key: jax.Array, path: str) -> jax.Array:
    """``key`` folded with a stable 31-bit hash of the module path."""
    return jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    rule: Rule
    dims: Any
    lhs_axis: int
    rhs_axis: int
    has_key: bool
    path: str


def _product(rule: Rule, lhs: jax.Array, rhs: jax.Array, dims) -> jax.Array:
    """The float32 product of the operands cast to the rule's compute dtype; through the rule's
    ``reduction`` hook (an emulated accumulation order or tiling) when it has one."""
    cd = jnp.dtype(rule.compute_dtype)
    if rule.reduction is not None:
        return rule.reduction.dot_general(lhs.astype(cd), rhs.astype(cd), dims).astype(
            jnp.float32)
    return lax.dot_general(lhs.astype(cd), rhs.astype(cd), dims,
                           preferred_element_type=jnp.float32)


def _dot(cfg: _Cfg, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    return _product(cfg.rule, lhs, rhs, cfg.dims)


def _fq(rule: Rule, x, spec, axis, rounding, kd, slot, has_key, estimator=STE()):
    """fake_quant with the rule's rounding (nearest when no key was given), through the fused
    Pallas kernel where ``rule.implementation`` picks it."""
    stochastic = rounding == "stochastic" and has_key
    return _fq_key(rule, x, spec, axis, kd[slot] if stochastic else None, estimator)


def _fq_key(rule: Rule, x, spec, axis, key, estimator=STE()):
    """fake_quant rounding stochastically with ``key``, to nearest when it is None."""
    kw = dict(axis=axis, rounding="nearest" if key is None else "stochastic", key=key)
    if rule.implementation != "xla":
        kernels = pallas_kernels_module()
        reason = ("the package pallas_kernels is not importable" if kernels is None else
                  None if isinstance(estimator, STE) else
                  f"the kernel's gradient is the plain STE, not {estimator!r}")
        if reason is None:
            return kernels.fake_quant(x, spec, implementation=rule.implementation,
                                      interpret=rule.interpret, **kw)
        if rule.implementation == "pallas":
            raise ValueError(f"rule {rule.pattern!r}: implementation='pallas' but {reason}; "
                             "use implementation='auto' or 'xla'")
    return fake_quant(x, spec, estimator=estimator, **kw)


def _quant_operand(cfg: _Cfg, x, spec, axis, kd, slot):
    """(fake-quantized x, its estimator VJP) or (x, None) when spec is None."""
    if spec is None:
        return x, None
    r = cfg.rule
    return jax.vjp(lambda a: _fq(r, a, spec, axis, r.fwd_rounding, kd, slot, cfg.has_key,
                                 r.estimator), x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _qdot(cfg: _Cfg, lhs, rhs, kd):
    return _qdot_fwd(cfg, lhs, rhs, kd)[0]


def _warn_no_key(cfg: _Cfg, what: str) -> None:
    warnings.warn(f"{cfg.path or 'qdot'}: the rule asks for stochastic rounding of {what} but the "
                  "model was called without key=...; rounding to nearest instead", stacklevel=3)


def _qdot_fwd(cfg: _Cfg, lhs, rhs, kd):
    r = cfg.rule
    if r.fwd_rounding == "stochastic" and not cfg.has_key:
        _warn_no_key(cfg, "the operands")
    lq, lvjp = _quant_operand(cfg, lhs, r.act, cfg.lhs_axis, kd, 0)
    rq, rvjp = _quant_operand(cfg, rhs, r.weight, cfg.rhs_axis, kd, 1)
    y = _dot(cfg, lq, rq)
    lhs_for_dw = lhs if r.wgrad_act == "original" else lq
    return y, (lhs_for_dw, rq, lvjp, rvjp, kd)


def _qdot_bwd(cfg: _Cfg, res, g):
    lhs_w, rq, lvjp, rvjp, kd = res
    r = cfg.rule
    if (r.grad_rounding == "stochastic" and not cfg.has_key
            and any(s is not None for s in (r.grad, r.grad_lhs, r.grad_rhs))):
        _warn_no_key(cfg, "gradients")
    _, dot_vjp = jax.vjp(functools.partial(_dot, cfg), lhs_w, rq)
    if r.grad is not None and r.grad_axis == "contraction":
        k_dx, k_dw = _grad_keys(cfg, kd)
        g_dx = _fq_key(r, g, r.grad, -1, k_dx)
        g_dw = _fq_key(r, g.reshape(-1, g.shape[-1]), r.grad, 0, k_dw).reshape(g.shape)
        dl, dr = dot_vjp(g_dx)[0], dot_vjp(g_dw)[1]
    else:
        if r.grad is not None:
            g = _fq(r, g, r.grad, -1, r.grad_rounding, kd, 2, cfg.has_key)
        dl, dr = dot_vjp(g)
    if lvjp is not None:
        (dl,) = lvjp(dl)
    if rvjp is not None:
        (dr,) = rvjp(dr)
    if r.grad_lhs is not None:
        dl = _fq(r, dl, r.grad_lhs, cfg.lhs_axis, r.grad_rounding, kd, 3, cfg.has_key)
    if r.grad_rhs is not None:
        dr = _fq(r, dr, r.grad_rhs, cfg.rhs_axis, r.grad_rounding, kd, 4, cfg.has_key)
    return dl, dr, None


_qdot.defvjp(_qdot_fwd, _qdot_bwd)


def _grad_keys(cfg: _Cfg, kd) -> tuple[jax.Array | None, jax.Array | None]:
    """The dX and dW keys of ``grad_axis="contraction"``: ``fold_in(k, 0)`` and ``fold_in(k, 1)``
    of the gradient slot's key ``k`` (qmatmul's convention), or None (nearest rounding)."""
    if cfg.rule.grad_rounding != "stochastic" or not cfg.has_key:
        return None, None
    return jax.random.fold_in(kd[2], 0), jax.random.fold_in(kd[2], 1)


def _projection(dims: DimensionNumbers, lhs_ndim: int, rhs_ndim: int) -> int | None:
    """The rhs contraction axis (0: rhs is [K, N], 1: [N, K]) when the product is a projection
    (no batch dimensions, lhs contracts its last axis, 2-D rhs), else None."""
    (lc, rc), (lb, rb) = dims
    if lb or rb or rhs_ndim != 2 or tuple(lc) != (lhs_ndim - 1,) or len(rc) != 1:
        return None
    return int(rc[0]) % 2


def _qmatmul_misfit(rule: Rule) -> str | None:
    """Why ``qmatmul`` does not compute ``rule`` (None: it does)."""
    checks = [
        (rule.grad is not None and rule.grad_axis != "contraction",
         "grad quantized along g's last axis for both products (grad_axis='last')"),
        (rule.grad_lhs is not None or rule.grad_rhs is not None, "grad_lhs / grad_rhs"),
        (not isinstance(rule.estimator, STE), f"estimator {rule.estimator!r}"),
        (rule.wgrad_act != "quantized", f"wgrad_act={rule.wgrad_act!r}"),
        (rule.fwd_rounding != "nearest", "stochastic forward rounding"),
        (rule.compute_dtype != "float32", f"compute_dtype={rule.compute_dtype!r}"),
        (rule.reduction is not None, "a reduction hook"),
    ]
    bad = [why for cond, why in checks if cond]
    return None if not bad else ", ".join(bad)


def _try_qmatmul(rule: Rule, lhs, rhs, dims, key, path):
    """The product through ``pallas_kernels.qmatmul`` when the rule and product fit and the
    kernels run here (GPU / TPU, or the interpreter), else None."""
    if rule.implementation == "xla":
        return None
    kernels = pallas_kernels_module()
    rhs_axis = _projection(dims, lhs.ndim, rhs.ndim)
    if (kernels is None or rhs_axis is None or _qmatmul_misfit(rule) is not None
            or not kernels.use_pallas(rule.implementation, rule.interpret, path or "qdot")):
        return None
    w = rhs if rhs_axis == 0 else rhs.T
    m = math.prod(lhs.shape[:-1])
    if isinstance(rule.grad, QuantSpec):
        try:  # qmatmul checks g's blocks along M eagerly; a decode step's M may not hold them
            grouping((m, w.shape[1]), rule.grad, 0)
        except ValueError:
            return None
    k = None
    if rule.grad is not None and rule.grad_rounding == "stochastic" and key is not None:
        k = slot_key(key, path, 2)
    y = kernels.qmatmul(lhs.reshape(m, lhs.shape[-1]), w, x_spec=rule.act, w_spec=rule.weight,
                        grad_spec=rule.grad, key=k, implementation=rule.implementation,
                        interpret=rule.interpret)
    return y.reshape(lhs.shape[:-1] + (w.shape[1],))


def _single_axis(axes: tuple[int, ...], ndim: int, name: str, path: str) -> int:
    if len(axes) != 1:
        raise ValueError(f"{path or 'qdot'}: a quantized dot needs exactly one contraction axis "
                         f"on the {name} operand, got {tuple(axes)}")
    return int(axes[0]) % ndim


def qdot(lhs: jax.Array, rhs: jax.Array, dimension_numbers: DimensionNumbers, rule: Rule, *,
         key: jax.Array | None = None, path: str = "") -> jax.Array:
    """``lax.dot_general(lhs, rhs, dimension_numbers)`` computed as ``rule`` says; float32 out.

    Args:
      lhs: the activation operand (q or the attention probabilities in attention products).
      rhs: the weight operand (k or v in attention products).
      dimension_numbers: as `jax.lax.dot_general`; quantized rules need one contraction axis
        per operand.
      rule: the `Rule` chosen for this module path.
      key: the per-call `jax.random` key (stochastic rounding); None rounds to nearest.
      path: the module path, folded into ``key`` so that every layer draws different bits.
    """
    if not rule.quantized:
        return _product(rule, lhs, rhs, dimension_numbers)
    (lc, rc), _ = dimension_numbers
    if rule.grad is not None and rule.grad_axis == "contraction" and _projection(
            dimension_numbers, lhs.ndim, rhs.ndim) is None:
        raise ValueError(f"{path or 'qdot'}: grad_axis='contraction' needs a projection (no batch "
                         "dimensions, lhs contracting its last axis, a 2-D weight), got "
                         f"dimension_numbers={dimension_numbers}")
    y = _try_qmatmul(rule, lhs, rhs, dimension_numbers, key, path)
    if y is not None:
        return y
    cfg = _Cfg(rule, _freeze(dimension_numbers), _single_axis(lc, lhs.ndim, "lhs", path),
               _single_axis(rc, rhs.ndim, "rhs", path), key is not None, path)
    zero = jnp.zeros((2,), jnp.uint32)
    used = _stochastic_slots(rule)
    if key is None or not used:
        kd = jnp.zeros((_SLOTS, 2), jnp.uint32)
    else:
        kd = jnp.stack([slot_key(key, path, s) if s in used else zero for s in range(_SLOTS)])
    return _qdot(cfg, lhs, rhs, kd)


def _stochastic_slots(rule: Rule) -> frozenset[int]:
    """The slots (0 lhs, 1 rhs, 2 g, 3 dX, 4 dW) that round stochastically under ``rule``."""
    specs = (rule.act, rule.weight, rule.grad, rule.grad_lhs, rule.grad_rhs)
    rnd = (rule.fwd_rounding,) * 2 + (rule.grad_rounding,) * 3
    return frozenset(i for i, (sp, r) in enumerate(zip(specs, rnd))
                     if sp is not None and r == "stochastic")


def slot_key(key: jax.Array, path: str, slot: int) -> jax.Array:
    """The uint32 key data `qdot` uses for ``slot`` (0 lhs, 1 rhs, 2 g, 3 dX, 4 dW) of ``path``.

    Lets tests and tools reproduce the exact stochastic-rounding bits of a layer.
    """
    k = jax.random.fold_in(path_key(key, path), slot)
    return jax.random.key_data(_as_typed(k)).reshape(-1)[:2].astype(jnp.uint32)


def _as_typed(k: jax.Array) -> jax.Array:
    return k if jnp.issubdtype(k.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(k)


def _freeze(dims: DimensionNumbers):
    (lc, rc), (lb, rb) = dims
    return ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))


def make_dot_general(rule: Rule, *, key: jax.Array | None = None, path: str = ""):
    """A `jax.lax.dot_general`-compatible callable bound to ``rule`` (for injection elsewhere)."""
    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        del precision
        y = qdot(lhs, rhs, dimension_numbers, rule, key=key, path=path)
        return y if preferred_element_type is None else y.astype(preferred_element_type)
    return dot_general
