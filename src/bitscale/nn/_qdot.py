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

Rotations (`bitscale.nn.Rotation`): with ``rotation`` both forward operands are rotated by the
same block Hadamard ``M`` along the contraction axis and quantized there (``Q(x M^T) . Q(w
M^T)^T`` equals ``x . w^T`` without quantization); step 3 then masks in the rotated basis and
the rotation's transpose takes dX and dW back. With ``grad_axis="contraction"`` each backward
product has operands of its own: ``dgrad_rotation`` rotates dY and the weight along N before dY
is quantized (``grad``) and the weight re-quantized (``bwd_weight``); ``wgrad_rotation`` rotates
dY and the activation along the tokens before ``grad`` / ``bwd_act``. This is Quartet's
``Q(E)Q(W^T) / Q(E^T)Q(X^T)`` backward and NVIDIA's random Hadamard on the Wgrad inputs.

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
the module path and then a slot number (0: lhs, 1: rhs, 2: g, 3: dX, 4: dW, 5 / 6: the backward
weight / activation, 7 / 8 / 9: the per-call signs of the forward / dgrad / wgrad rotations), so
every quantization point of every layer gets its own deterministic stream. Without a key, stochastic
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
from bitscale.numerics.eden import ms_eden
from bitscale.numerics.estimators import STE
from bitscale.numerics.scaling import grouping
from bitscale.numerics.specs import QuantSpec
from bitscale.numerics.transforms import hadamard_transform
from bitscale.nn._packed import pallas_kernels_module
from bitscale.nn._rule import Rotation, Rule

DimensionNumbers = tuple[tuple[tuple[int, ...], tuple[int, ...]],
                         tuple[tuple[int, ...], tuple[int, ...]]]
_SLOTS = 10
# Key slots: 0 lhs, 1 rhs, 2 g, 3 dX, 4 dW (rounding); 5 bwd weight, 6 bwd act (re-quantization);
# 7 forward, 8 dgrad, 9 wgrad rotation signs.
_ROT_SLOTS = {"rotation": 7, "dgrad_rotation": 8, "wgrad_rotation": 9}


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


def _fq_key(rule: Rule, x, spec, axis, key, estimator=STE(), eden_group: int | None = None):
    """fake_quant rounding stochastically with ``key``, to nearest when it is None; MS-EDEN with
    correction groups of ``eden_group`` when that is set (and there is a key)."""
    if eden_group is not None and key is not None:
        return ms_eden(x, key, axis=axis, spec=spec, group=eden_group)
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


def _sign_key(cfg: _Cfg, kd, field: str) -> jax.Array | None:
    """The random-sign key of the rule's rotation ``field``: None (plain Hadamard), the seed's
    key (``fixed``; ``per_call`` without a model key) or the call's slot key (``per_call``)."""
    rot: Rotation = getattr(cfg.rule, field)
    if rot.signs == "none":
        return None
    if rot.signs == "per_call" and cfg.has_key:
        return kd[_ROT_SLOTS[field]]
    return jax.random.key_data(jax.random.key(rot.seed)).reshape(-1)[:2].astype(jnp.uint32)


def _check_rotation(cfg: _Cfg, field: str, shape: tuple[int, ...], axis: int) -> None:
    """A ValueError naming the layer, the rotation and the axis when the blocks do not tile it."""
    rot: Rotation = getattr(cfg.rule, field)
    n = shape[axis]
    if n % rot.size:
        raise ValueError(f"{cfg.path or 'qdot'}: rule {cfg.rule.pattern!r} {field} "
                         f"{rot.name!r} (Hadamard blocks of {rot.size}) does not divide the axis "
                         f"it rotates, of length {n} (operand shape {tuple(shape)}); use a "
                         f"rotation size in 16..256 that divides {n}")


def _rotate(cfg: _Cfg, x, field: str, kd, axis: int):
    """x rotated along ``axis`` by the rule's rotation ``field`` (unchanged when it is None)."""
    rot: Rotation | None = getattr(cfg.rule, field)
    if rot is None:
        return x
    _check_rotation(cfg, field, x.shape, axis)
    r = cfg.rule
    key = _sign_key(cfg, kd, field)
    kernels = pallas_kernels_module() if r.implementation != "xla" else None
    if kernels is not None:
        return kernels.hadamard_transform(x, rot.size, key=key, axis=axis,
                                          implementation=r.implementation, interpret=r.interpret)
    return hadamard_transform(x, rot.size, key=key, axis=axis)


def _quant_operand(cfg: _Cfg, x, spec, axis, kd, slot):
    """(fake-quantized, rotated x, the VJP back to x) or (x, None) when neither applies. The
    estimator masks the gradient in the rotated basis; the rotation's transpose maps it back."""
    r = cfg.rule
    if r.rotation is None and spec is None:
        return x, None
    if spec is None:
        return jax.vjp(lambda a: _rotate(cfg, a, "rotation", kd, axis), x)
    if r.rotation is not None:
        key = kd[slot] if r.fwd_rounding == "stochastic" and cfg.has_key else None
        return jax.vjp(lambda a: _rotated_quant(cfg, a, "rotation", spec, axis, kd, key, None,
                                                r.estimator), x)
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
    lhs_for_dw = lq
    if r.wgrad_act == "original" and r.act is not None:
        lhs_for_dw = _rotate(cfg, lhs, "rotation", kd, cfg.lhs_axis)
    return y, (lhs_for_dw, rq, lvjp, rvjp, kd)


def _qdot_bwd(cfg: _Cfg, res, g):
    lhs_w, rq, lvjp, rvjp, kd = res
    r = cfg.rule
    if not cfg.has_key and (
            (r.grad_rounding != "nearest"
             and any(s is not None for s in (r.grad, r.grad_lhs, r.grad_rhs)))
            or (r.bwd_rounding != "nearest" and (r.bwd_weight, r.bwd_act) != (None, None))):
        _warn_no_key(cfg, "gradients")
    if r.grad_axis == "contraction" and _per_product(r):
        dl, dr = _per_product_grads(cfg, lhs_w, rq, g, kd)
    else:
        _, dot_vjp = jax.vjp(functools.partial(_dot, cfg), lhs_w, rq)
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


def _per_product(rule: Rule) -> bool:
    """True when the backward products get operands of their own (per-product gradient copies,
    rotations or re-quantized forward operands)."""
    return any(getattr(rule, f) is not None for f in (
        "grad", "dgrad_rotation", "wgrad_rotation", "bwd_weight", "bwd_act"))


def _per_product_grads(cfg: _Cfg, lhs_w, rq, g, kd):
    """dX and dW of a projection, each product with its own operands: rotated along the axis it
    contracts (N for dX, the tokens for dW), then quantized along that axis (``grad``, and
    ``bwd_weight`` / ``bwd_act`` re-quantizing the forward's weight / activation)."""
    r = cfg.rule
    k_dx, k_dw = _grad_keys(cfg, kd)
    n_axis = 1 - cfg.rhs_axis  # the weight's N axis (a projection's rhs is 2-D)
    bwd_key = (lambda slot: kd[slot]) if (r.bwd_rounding != "nearest" and cfg.has_key) else (
        lambda slot: None)

    def operand(x, field, spec, axis, key, rounding):
        rot = getattr(r, field)
        eden_group = rot.size if rounding == "eden" and rot is not None else None
        return _rotated_quant(cfg, x, field, spec, axis, kd, key, eden_group)

    # dX = dY . W, contracting N.
    g_dx = operand(g, "dgrad_rotation", r.grad, g.ndim - 1, k_dx, r.grad_rounding)
    w_dx = operand(rq, "dgrad_rotation", r.bwd_weight, n_axis, bwd_key(5), r.bwd_rounding)
    dl = jax.vjp(functools.partial(_dot, cfg), lhs_w, w_dx)[1](g_dx)[0]
    # dW = dY^T . X, contracting the tokens (every leading axis of dY, flattened).
    g_dw = operand(g.reshape(-1, g.shape[-1]), "wgrad_rotation", r.grad, 0, k_dw,
                   r.grad_rounding)
    a_dw = operand(lhs_w.reshape(-1, lhs_w.shape[-1]), "wgrad_rotation", r.bwd_act, 0,
                   bwd_key(6), r.bwd_rounding)
    dr = jax.vjp(functools.partial(_dot, cfg), a_dw.reshape(lhs_w.shape), rq)[1](
        g_dw.reshape(g.shape))[1]
    return dl, dr


def _rotated_quant(cfg: _Cfg, x, field: str, spec, axis: int, kd, key, eden_group,
                   estimator=STE()):
    """An operand rotated by the rule's ``field`` along ``axis``, then quantized with ``spec``
    along it (stochastically with ``key``, MS-EDEN with ``eden_group``, gradient through
    ``estimator``). One fused rotation + fake-quant kernel where the rule runs kernels, the
    rounding is not MS-EDEN and the estimator is the plain STE."""
    r = cfg.rule
    rot: Rotation | None = getattr(r, field)
    fused = (spec is not None and rot is not None and eden_group is None
             and isinstance(estimator, STE) and r.implementation != "xla"
             and pallas_kernels_module() is not None)
    if not fused:
        x = _rotate(cfg, x, field, kd, axis)
        return x if spec is None else _fq_key(r, x, spec, axis, key, estimator,
                                              eden_group=eden_group)
    _check_rotation(cfg, field, x.shape, axis)
    return pallas_kernels_module().hadamard_fake_quant(
        x, rot.size, spec, key=_sign_key(cfg, kd, field), axis=axis,
        rounding="nearest" if key is None else "stochastic", rounding_key=key,
        implementation=r.implementation, interpret=r.interpret)


def _grad_keys(cfg: _Cfg, kd) -> tuple[jax.Array | None, jax.Array | None]:
    """The dX and dW keys of ``grad_axis="contraction"``: ``fold_in(k, 0)`` and ``fold_in(k, 1)``
    of the gradient slot's key ``k`` (qmatmul's convention), or None (nearest rounding)."""
    if cfg.rule.grad_rounding == "nearest" or not cfg.has_key:
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
        (rule.rotated, "Hadamard rotations"),
        (rule.bwd_weight is not None or rule.bwd_act is not None,
         "re-quantized backward operands (bwd_weight / bwd_act)"),
        (rule.grad_rounding == "eden", "MS-EDEN gradient rounding"),
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
    """The key slots `qdot` draws from under ``rule``: those that round stochastically (0 lhs,
    1 rhs, 2 g, 3 dX, 4 dW, 5 bwd weight, 6 bwd act) and the per-call rotation signs (7-9)."""
    specs = (rule.act, rule.weight, rule.grad, rule.grad_lhs, rule.grad_rhs, rule.bwd_weight,
             rule.bwd_act)
    rnd = (rule.fwd_rounding,) * 2 + (rule.grad_rounding,) * 3 + (rule.bwd_rounding,) * 2
    used = {i for i, (sp, r) in enumerate(zip(specs, rnd)) if sp is not None and r != "nearest"}
    used |= {slot for field, slot in _ROT_SLOTS.items()
             if getattr(rule, field) is not None and getattr(rule, field).signs == "per_call"}
    return frozenset(used)


def slot_key(key: jax.Array, path: str, slot: int) -> jax.Array:
    """The uint32 key data `qdot` uses for ``slot`` (0 lhs, 1 rhs, 2 g, 3 dX, 4 dW, 5 / 6 the
    re-quantized backward weight / activation, 7 / 8 / 9 the forward / dgrad / wgrad rotation
    signs) of ``path``.

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
