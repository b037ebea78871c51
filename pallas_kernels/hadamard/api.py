"""Randomized block Hadamard transform, and the transform fused with fake quantization."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

import bitscale as bs
from bitscale.numerics import validate as V
from bitscale.numerics import scaling as S
from bitscale.numerics.specs import QuantSpec, resolve_spec
from bitscale.numerics.transforms import hadamard_matrix, random_signs
from pallas_kernels.common import kernel_platform, use_pallas
from pallas_kernels.hadamard.kernel import hadamard_pallas
from pallas_kernels.quantize.api import kernel_support
from pallas_kernels.quantize.config import Launch, QuantizeConfig, launch_support

#: Triton's smallest dot extent: a program's Hadamard blocks (rows of its 2-D dot) are >= this.
MIN_DOT = 16


def _rotation(block_size: int, key, inverse: bool) -> jax.Array:
    """M = H diag(s) (forward) or diag(s) H (inverse), as `bitscale.hadamard_transform` builds it."""
    h = hadamard_matrix(block_size)
    if key is None:
        return h
    s = random_signs(key, block_size)
    return s[:, None] * h if inverse else h * s[None, :]


def _launch(config, block_size, spec, x, axis, platform) -> tuple[Launch, str | None]:
    """The kernel launch for a rotation along ``axis`` of ``x`` and the reason it cannot run on
    ``platform`` (None if it can). The Hadamard matrix (float32 [h, h]) is one more input block
    in the shared-memory model."""
    cfg = config or QuantizeConfig()
    a_len = x.shape[axis]
    if block_size > a_len:
        raise ValueError(f"Hadamard block size {block_size} exceeds the axis length {a_len}")
    extra = 4 * block_size * block_size
    lc = cfg.launch(spec, a_len, True, x.dtype, False, platform, extra_in=extra)
    if lc.block_axis % block_size:
        if cfg.block_axis is not None or spec is not None:
            raise ValueError(f"Hadamard block size {block_size} must divide the tile extent "
                             f"block_axis={lc.block_axis}")
        lc = lc._replace(block_axis=block_size)
    # Every platform (the interpreter too: XLA:CPU sums a matrix-vector product in another
    # order than a matrix product, and the reference multiplies all rows at once).
    if cfg.block_other is None and lc.block_other * lc.block_axis // block_size < MIN_DOT:
        lc = lc._replace(block_other=-(-MIN_DOT * block_size // lc.block_axis))
    return lc, launch_support(lc, spec, jnp.dtype(x.dtype).itemsize, False, extra)


def _run(x, block_size, key, axis, inverse, spec, rounding_key, launch):
    xt = jnp.moveaxis(x, axis, -1)
    shape = xt.shape
    x2d = xt.reshape(-1, shape[-1]) if shape else xt.reshape(1, 1)
    m = _rotation(block_size, key, inverse)
    post_len = math.prod(x.shape[axis + 1:])
    y = hadamard_pallas(x2d, m, rounding_key, hblock=block_size, spec=spec, launch=launch,
                        out_dtype=jnp.dtype(x.dtype), interpret=launch.platform is None,
                        post_len=post_len)
    return jnp.moveaxis(y.reshape(shape), -1, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 3, 4, 5, 6))
def _transform(x, block_size, key, axis, inverse, spec, launch):
    return _run(x, block_size, key, axis, inverse, spec, None, launch)


def _transform_fwd(x, block_size, key, axis, inverse, spec, launch):
    return _transform(x, block_size, key, axis, inverse, spec, launch), key


def _transform_bwd(block_size, axis, inverse, spec, launch, key, g):
    # The rotation is orthogonal: the VJP applies the transposed (other-direction) rotation.
    return _run(g, block_size, key, axis, not inverse, None, None, launch), None


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
    x = jnp.asarray(x)
    axis = axis % x.ndim
    launch, reason = _launch(config, block_size, None, x, axis, kernel_platform(interpret))
    if reason:
        if implementation == "pallas":
            raise ValueError(f"pallas_kernels.hadamard_transform: no Pallas kernel for this "
                             f"case ({reason}); use implementation='xla' or 'auto'")
        return ref(x)
    y = _transform(x, block_size, key, axis, inverse, None, launch)
    assert y.shape == y_ref_shape.shape
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 3, 4, 5, 7))
def _fused(x, block_size, key, axis, spec, rounding, rounding_key, launch):
    return _run(x, block_size, key, axis, False, spec, rounding_key, launch)


def _fused_fwd(x, block_size, key, axis, spec, rounding, rounding_key, launch):
    y = _fused(x, block_size, key, axis, spec, rounding, rounding_key, launch)
    return y, key


def _fused_bwd(block_size, axis, spec, rounding, launch, key, g):
    # Straight-through the quantizer, then the transposed rotation.
    return _run(g, block_size, key, axis, True, None, None, launch), None, None


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
    platform = kernel_platform(interpret)
    moved = tuple(d for i, d in enumerate(x.shape) if i != axis) + (x.shape[axis],)
    reason = kernel_support(spec, moved, len(moved) - 1, platform)
    if reason is None and isinstance(spec, QuantSpec) and spec.tensor_scale:
        reason = f"spec {spec.name!r} needs the rotated tensor's amax before the pass"
    launch = None
    if pallas and reason is None:
        if isinstance(spec, QuantSpec):
            S.grouping(x.shape, spec, axis)
        launch, reason = _launch(config, block_size, spec, x, axis, platform)
    if pallas and reason:
        if implementation == "pallas":
            raise ValueError(f"pallas_kernels.hadamard_fake_quant: no Pallas kernel for this "
                             f"case ({reason}); use implementation='xla' or 'auto'")
        pallas = False
    if not pallas:
        return reference(x)
    rk = rounding_key if rounding == "stochastic" else None
    return _fused(x, block_size, key, axis, spec, rounding, rk, launch)
