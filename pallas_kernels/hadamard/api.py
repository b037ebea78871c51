"""Randomized block Hadamard transform, and the transform fused with fake quantization."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import bitscale as bs
from bitscale.numerics import validate as V
from bitscale.numerics import scaling as S
from bitscale.numerics.specs import QuantSpec, resolve_spec
from bitscale.numerics.transforms import hadamard_matrix, random_signs
from pallas_kernels.common import use_pallas
from pallas_kernels.hadamard.kernel import hadamard_pallas
from pallas_kernels.quantize.api import kernel_support
from pallas_kernels.quantize.config import QuantizeConfig


def _rotation(block_size: int, key, inverse: bool) -> jax.Array:
    """M = H diag(s) (forward) or diag(s) H (inverse), as `bitscale.hadamard_transform` builds it."""
    h = hadamard_matrix(block_size)
    if key is None:
        return h
    s = random_signs(key, block_size)
    return s[:, None] * h if inverse else h * s[None, :]


def _tiles(config, block_size, spec, a_len):
    cfg = config or QuantizeConfig()
    block_axis, other = cfg.resolve(spec, a_len, axis_last=True) if spec is not None else (
        cfg.block_axis or min(512, max(block_size, 1 << (a_len - 1).bit_length())),
        cfg.block_other or 8)
    if block_axis % block_size:
        raise ValueError(f"Hadamard block size {block_size} must divide the tile extent "
                         f"block_axis={block_axis}")
    return block_axis, other


def _run(x, block_size, key, axis, inverse, spec, rounding_key, tiles, interpret):
    xt = jnp.moveaxis(x, axis, -1)
    shape = xt.shape
    x2d = xt.reshape(-1, shape[-1]) if shape else xt.reshape(1, 1)
    m = _rotation(block_size, key, inverse)
    y = hadamard_pallas(x2d, m, block_size, spec, rounding_key, (tiles[1], tiles[0]), x.dtype,
                        interpret)
    return jnp.moveaxis(y.reshape(shape), -1, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 3, 4, 5, 6, 7))
def _transform(x, block_size, key, axis, inverse, spec, tiles, interpret):
    return _run(x, block_size, key, axis, inverse, spec, None, tiles, interpret)


def _transform_fwd(x, block_size, key, axis, inverse, spec, tiles, interpret):
    return _transform(x, block_size, key, axis, inverse, spec, tiles, interpret), key


def _transform_bwd(block_size, axis, inverse, spec, tiles, interpret, key, g):
    # The rotation is orthogonal: the VJP applies the transposed (other-direction) rotation.
    return _run(g, block_size, key, axis, not inverse, None, None, tiles, interpret), None


_transform.defvjp(_transform_fwd, _transform_bwd)


def hadamard_transform(x: jax.Array, block_size: int, *, key: jax.Array | None = None,
                       axis: int = -1, inverse: bool = False, implementation: str = "auto",
                       interpret: bool = False, config: QuantizeConfig | None = None) -> jax.Array:
    """`bitscale.hadamard_transform` through the Pallas kernel (rotation axis moved last)."""
    ref = functools.partial(bs.hadamard_transform, block_size=block_size, key=key, axis=axis,
                            inverse=inverse)
    y_ref_shape = jax.eval_shape(lambda v: ref(v), x)  # validates block size, axis, dtype
    if not use_pallas(implementation, interpret, "pallas_kernels.hadamard_transform"):
        return ref(x)
    axis = axis % x.ndim
    tiles = _tiles(config, block_size, None, x.shape[axis])
    y = _transform(jnp.asarray(x), block_size, key, axis, inverse, None, tiles, interpret)
    assert y.shape == y_ref_shape.shape
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 3, 4, 5, 7, 8))
def _fused(x, block_size, key, axis, spec, rounding, rounding_key, tiles, interpret):
    return _run(x, block_size, key, axis, False, spec, rounding_key, tiles, interpret)


def _fused_fwd(x, block_size, key, axis, spec, rounding, rounding_key, tiles, interpret):
    y = _fused(x, block_size, key, axis, spec, rounding, rounding_key, tiles, interpret)
    return y, key


def _fused_bwd(block_size, axis, spec, rounding, tiles, interpret, key, g):
    # Straight-through the quantizer, then the transposed rotation.
    return _run(g, block_size, key, axis, True, None, None, tiles, interpret), None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def hadamard_fake_quant(x: jax.Array, block_size: int, spec, *, key: jax.Array | None = None,
                        axis: int = -1, rounding: str = "nearest",
                        rounding_key: jax.Array | None = None, implementation: str = "auto",
                        interpret: bool = False, config: QuantizeConfig | None = None) -> jax.Array:
    """fake_quant(hadamard_transform(x), spec) in one pass; straight-through gradient.

    ``key`` draws the rotation's random signs, ``rounding_key`` the stochastic rounding bits.
    Bit-identical to ``bitscale.fake_quant(bitscale.hadamard_transform(x, block_size, key=key,
    axis=axis), spec, axis=axis, rounding=rounding, key=rounding_key)``.
    """
    spec = resolve_spec(spec)
    x = V.check_input(x)
    axis = V.check_axis(axis, x.ndim)
    V.check_rounding(rounding, rounding_key)

    def reference(v):
        r = bs.hadamard_transform(v, block_size, key=key, axis=axis)
        return bs.fake_quant(r, spec, axis=axis, rounding=rounding, key=rounding_key)

    jax.eval_shape(reference, x)  # validates block sizes, spec and axis
    pallas = use_pallas(implementation, interpret, "pallas_kernels.hadamard_fake_quant")
    moved = tuple(d for i, d in enumerate(x.shape) if i != axis) + (x.shape[axis],)
    reason = kernel_support(spec, moved, len(moved) - 1)
    if reason is None and isinstance(spec, QuantSpec) and spec.tensor_scale:
        reason = f"spec {spec.name!r} needs the rotated tensor's amax before the pass"
    if pallas and reason:
        if implementation == "pallas":
            raise ValueError(f"pallas_kernels.hadamard_fake_quant: no Pallas kernel for this "
                             f"case ({reason}); use implementation='xla' or 'auto'")
        pallas = False
    if not pallas:
        return reference(x)
    if isinstance(spec, QuantSpec):
        S.grouping(x.shape, spec, axis)
    tiles = _tiles(config, block_size, spec, x.shape[axis])
    rk = rounding_key if rounding == "stochastic" else None
    return _fused(x, block_size, key, axis, spec, rounding, rk, tiles, interpret)
