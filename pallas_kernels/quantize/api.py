"""Public entry points: `fake_quant` and `quantize` with Pallas / XLA dispatch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import bitscale as bs
from bitscale.numerics import bits as B
from bitscale.numerics import elementwise as E
from bitscale.numerics import packing
from bitscale.numerics import scaling as S
from bitscale.numerics import validate as V
from bitscale.numerics.formats import BinaryFormat, TernaryFormat
from bitscale.numerics.qarray import elem_bits
from bitscale.numerics.specs import QuantSpec, recipe_options, resolve_spec
from pallas_kernels.common import kernel_platform, use_pallas
from pallas_kernels.quantize.config import QuantizeConfig, launch_support
from pallas_kernels.quantize.kernel import quantize_call


def kernel_support(spec, shape: tuple[int, ...], axis: int,
                   platform: str | None = None) -> str | None:
    """None if the kernel handles (spec, shape, axis) on ``platform`` (None: the interpreter;
    "cuda" / "rocm" / "tpu"), else the reason it does not."""
    if isinstance(spec, QuantSpec):
        recipe = recipe_options(spec)
        if recipe:
            return (f"spec {spec.name!r} uses {', '.join(recipe)}, which the kernel (scale groups "
                    "along one axis, absmax rules) does not implement")
        if spec.granularity == "tensor":
            return f"spec {spec.name!r} has a per-tensor scale (a global reduction before the pass)"
        if spec.clip == "mse":
            return f"spec {spec.name!r} uses the MSE clip search"
        if isinstance(spec.elem, (TernaryFormat, BinaryFormat)):
            return f"spec {spec.name!r} uses mean-|x| scales"
    post = shape[axis + 1:] if shape else ()
    if len(post) > 1 and (shape[-1] * elem_bits(spec)) % 8:
        return (f"the codes of a middle axis with a last dimension of {shape[-1]} do not pack "
                "into whole bytes per row")
    return None


def _prepare(x, spec, axis, rounding, key, implementation, interpret, config, op, want_codes):
    spec = resolve_spec(spec)
    x = V.check_input(x)
    axis = V.check_axis(axis, x.ndim)
    V.check_rounding(rounding, key)
    if isinstance(spec, QuantSpec):
        S.grouping(x.shape, spec, axis)
    pallas = use_pallas(implementation, interpret, op)
    platform = kernel_platform(interpret)
    reason = kernel_support(spec, x.shape, axis, platform)
    launch = None
    if pallas and not reason:
        config = config or QuantizeConfig()
        a_len = x.shape[axis] if x.shape else 1
        launch = config.launch(spec, a_len, all(d == 1 for d in x.shape[axis + 1:]), x.dtype,
                               want_codes, platform)
        reason = launch_support(launch, spec, jnp.dtype(x.dtype).itemsize, want_codes)
    if pallas and reason:
        if implementation == "pallas":
            raise ValueError(f"{op}: no Pallas kernel for this case ({reason}); use "
                             "implementation='xla' or 'auto'")
        pallas = False
    return x, spec, axis, pallas, launch


def fake_quant(x: jax.Array, spec, *, axis: int = -1, rounding: str = "nearest",
               key: jax.Array | None = None, implementation: str = "auto",
               interpret: bool = False, config: QuantizeConfig | None = None) -> jax.Array:
    """`bitscale.fake_quant` through the fused Pallas kernel (straight-through gradient).

    Bit-identical to ``bitscale.fake_quant(x, spec, axis=axis, rounding=rounding, key=key)``.
    """
    x, spec, axis, pallas, launch = _prepare(x, spec, axis, rounding, key, implementation,
                                             interpret, config, "pallas_kernels.fake_quant",
                                             False)
    if not pallas:
        return bs.fake_quant(x, spec, axis=axis, rounding=rounding, key=key)
    return _fq_ste(x, key, spec, axis, rounding, launch)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _fq_ste(x, key, spec, axis, rounding, launch):
    return quantize_call(x, key if rounding == "stochastic" else None, spec=spec, axis=axis,
                         rounding=rounding, want_codes=False, launch=launch,
                         interpret=launch.platform is None)


def _fq_ste_fwd(x, key, spec, axis, rounding, launch):
    return _fq_ste(x, key, spec, axis, rounding, launch), None


def _fq_ste_bwd(spec, axis, rounding, launch, _, g):
    return g, None


_fq_ste.defvjp(_fq_ste_fwd, _fq_ste_bwd)


def quantize(x: jax.Array, spec, *, axis: int = -1, rounding: str = "nearest",
             key: jax.Array | None = None, implementation: str = "auto",
             interpret: bool = False, config: QuantizeConfig | None = None) -> bs.QArray:
    """`bitscale.quantize` through the fused Pallas kernel: one pass writes codes and scales."""
    x, spec, axis, pallas, launch = _prepare(x, spec, axis, rounding, key, implementation,
                                             interpret, config, "pallas_kernels.quantize", True)
    if not pallas:
        return bs.quantize(x, spec, axis=axis, rounding=rounding, key=key)
    outs = quantize_call(x, key if rounding == "stochastic" else None, spec=spec, axis=axis,
                         rounding=rounding, want_codes=True, launch=launch,
                         interpret=launch.platform is None)
    shape = x.shape
    nbits = elem_bits(spec)
    a_len = shape[axis] if shape else 1
    axis_last = all(d == 1 for d in shape[axis + 1:])
    last = shape[-1] if shape else 1
    n_packed = packing.packed_length(last, nbits)
    codes, scales, zp, ts = outs[0], None, None, None
    per_group = isinstance(spec, QuantSpec)
    groups = 0
    if per_group:
        groups = 1 if spec.granularity == "channel" else a_len // spec.block_size
    if axis_last:
        codes = codes[:, :packing.packed_length(a_len, nbits)].reshape(shape[:-1] + (n_packed,))
        if per_group:
            gshape = shape[:axis] + (groups,) + shape[axis + 1:]
            scales = outs[1][:, :groups].reshape(gshape)
            zp = outs[2][:, :groups].reshape(gshape) if len(outs) > 2 else None
    else:
        post = 1
        for d in shape[axis + 1:]:
            post *= d
        codes = codes[:, :, :packing.packed_length(post, nbits)].reshape(shape[:-1] + (n_packed,))
        if per_group:
            gshape = shape[:axis] + (groups,) + shape[axis + 1:]
            scales = outs[1][:, :groups, :].reshape(gshape)
            zp = outs[2][:, :groups, :].reshape(gshape) if len(outs) > 2 else None
    if per_group and spec.tensor_scale:
        amax = B.from_bits(S.amax_bits(E.to_f32(x).reshape(1, -1))[0, 0])
        ts = S.tensor_scale(amax, spec)
    return bs.QArray(codes, scales, zp, ts, spec, tuple(shape), jnp.dtype(x.dtype), axis)
