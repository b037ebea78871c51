"""Matmul against packed `QArray` weights (post-training quantized inference).

Packed weights are stored ``[K, N] = [in, out]`` and quantized along axis 0 (groups along the
contraction axis K, codes packed along N): the layout of ``pallas_kernels.packed_matmul``.
(Float kernels are [out, in]; `bitscale.nn._ptq` transposes when it packs.)

``implementation``: ``"xla"`` dequantizes the codes and runs an XLA dot; ``"auto"`` and
``"pallas"`` call ``pallas_kernels.packed_matmul`` with the same choice (``auto``: the Pallas kernel
on GPU/TPU, its jnp reference on CPU) when the ``pallas_kernels`` package is importable, and the
XLA path otherwise (``pallas`` then raises).

References:
  Frantar et al., "Marlin: Mixed-Precision Auto-Regressive Parallel Inference", arXiv:2408.11743
  (packed weight-only kernels); JAX Pallas documentation.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from bitscale.numerics import QArray, dequantize
from bitscale.numerics.validate import check_implementation


def pallas_kernels_module() -> Optional[ModuleType]:
    """The ``pallas_kernels`` package (a sibling of ``bitscale`` in a source checkout, optional
    in an install) when importable, else None."""
    try:
        import pallas_kernels  # noqa: PLC0415
    except ImportError:
        return None
    return pallas_kernels


def pallas_packed_matmul() -> Optional[Callable]:
    """``pallas_kernels.packed_matmul`` when importable, else None."""
    return getattr(pallas_kernels_module(), "packed_matmul", None)


def packed_matmul(x: jax.Array, w: QArray, *, compute_dtype="float32",
                  implementation: str = "auto") -> jax.Array:
    """``x @ dequantize(w)`` for a [in, out] `QArray` quantized along axis 0; float32 out."""
    check_implementation(implementation)
    if not isinstance(w, QArray) or len(w.shape) != 2:
        raise TypeError("packed_matmul needs a 2-D QArray weight [in, out] (quantized with axis=0)")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"x's last axis {x.shape[-1]} does not match the weight's {w.shape}")
    cd = jnp.dtype(compute_dtype)
    if implementation != "xla":
        kernel = pallas_packed_matmul()
        if kernel is not None:
            return kernel(x, w, compute_dtype=cd, implementation=implementation)
        if implementation == "pallas":
            raise RuntimeError("implementation='pallas' but pallas_kernels.packed_matmul is not "
                               "available; use 'auto' or 'xla'")
    return lax.dot_general(x.astype(cd), dequantize(w).astype(cd),
                           (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
