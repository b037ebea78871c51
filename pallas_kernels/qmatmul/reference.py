"""jnp reference of the quantized-operand matmul, written with `bitscale.fake_quant`.

Forward: ``y = fq(x, x_spec, axis=-1) @ fq(w, w_spec, axis=0)`` accumulated in float32.
Backward for the output gradient g (straight-through estimator for both operands):

* ``dx = fq(g, grad_spec, axis=-1, key=fold_in(key, 0)) @ wq^T``
* ``dw = xq^T @ fq(g, grad_spec, axis=0, key=fold_in(key, 1))``

so the weight gradient is formed from the quantized activation ``xq``, and each gradient copy is
quantized in blocks along the contraction axis of its product, stochastically when ``key`` is
given. This is also the XLA implementation `qmatmul` dispatches to.

References:
  Castro et al., "Quartet: Native FP4 Training Can Be Optimal for Large Language Models",
  arXiv:2505.14669.
  Chmiel et al., "Elucidating the Design Space of FP4 Training", arXiv:2509.17791.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

import bitscale as bs
from bitscale.numerics.specs import Spec


def grad_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys of the two gradient quantizations: fold_in(key, 0) for dx, fold_in(key, 1) for dw."""
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def _fq(a: jax.Array, spec: Spec | None, axis: int, key: jax.Array | None = None) -> jax.Array:
    if spec is None:
        return a
    rounding = "nearest" if key is None else "stochastic"
    return bs.fake_quant(a, spec, axis=axis, rounding=rounding, key=key)


def _dot(a: jax.Array, b: jax.Array, dims) -> jax.Array:
    cd = jnp.promote_types(a.dtype, b.dtype)
    precision = lax.Precision.HIGHEST if cd == jnp.float32 else None
    return lax.dot_general(a.astype(cd), b.astype(cd), (dims, ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _qmm(x, w, keys, x_spec, w_spec, grad_spec):
    return _dot(_fq(x, x_spec, 1), _fq(w, w_spec, 0), ((1,), (0,)))


def _qmm_fwd(x, w, keys, x_spec, w_spec, grad_spec):
    xq, wq = _fq(x, x_spec, 1), _fq(w, w_spec, 0)
    return _dot(xq, wq, ((1,), (0,))), (xq, wq, keys)


def _qmm_bwd(x_spec, w_spec, grad_spec, res, g):
    xq, wq, keys = res
    k_dx, k_dw = (None, None) if keys is None else keys
    dx = _dot(_fq(g, grad_spec, 1, k_dx), wq, ((1,), (1,)))
    dw = _dot(xq, _fq(g, grad_spec, 0, k_dw), ((0,), (0,)))
    return dx.astype(xq.dtype), dw.astype(wq.dtype), None


_qmm.defvjp(_qmm_fwd, _qmm_bwd)


def qmatmul_reference(x: jax.Array, w: jax.Array, *, x_spec: "str | Spec | None",
                      w_spec: "str | Spec | None", grad_spec: "str | Spec | None" = None,
                      key: jax.Array | None = None) -> jax.Array:
    """float32 ``fq(x) @ fq(w)`` with the quantized-gradient VJP described in the module docstring.

    ``None`` specs leave that operand (or the gradient) unquantized; ``key`` without a
    ``grad_spec`` is unused.
    """
    specs = [None if s is None else bs.resolve_spec(s) for s in (x_spec, w_spec, grad_spec)]
    keys = None
    if key is not None and specs[2] is not None:
        keys = tuple(jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key)
                     else k for k in grad_keys(key))
    return _qmm(x, w, keys, *specs)
