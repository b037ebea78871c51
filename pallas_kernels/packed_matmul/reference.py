"""jnp reference of the packed-weight matmul: ``x @ bitscale.dequantize(w)`` in float32.

This is also the XLA implementation that `packed_matmul` dispatches to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

import bitscale as bs


def packed_matmul_reference(x: jax.Array, w: bs.QArray, *, compute_dtype=None) -> jax.Array:
    """``x @ dequantize(w)`` accumulated and returned in float32.

    ``compute_dtype`` (optional) casts x and the dequantized weights before the product; by
    default x keeps its dtype and the weights keep `dequantize`'s dtype (w.dtype), and the
    product is taken in their promoted dtype at full precision.
    """
    wd = bs.dequantize(w)
    if compute_dtype is not None:
        x, wd = x.astype(compute_dtype), wd.astype(compute_dtype)
    dt = jnp.promote_types(x.dtype, wd.dtype)
    precision = lax.Precision.HIGHEST if dt == jnp.float32 else None
    return lax.dot_general(x.astype(dt), wd.astype(dt), (((x.ndim - 1,), (0,)), ((), ())),
                           precision=precision, preferred_element_type=jnp.float32)
