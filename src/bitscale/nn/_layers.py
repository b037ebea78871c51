"""Flax NNX layers whose matmuls go through the policy's quantized `dot_general`.

Kernels are stored ``[out, in]`` as in PyTorch / Hugging Face, so that the contraction axis is
the last axis of both operands: block quantization along the reduction dimension then runs on
contiguous memory (XLA's fake-quant of a transposed layout is several times slower on CPU).
Every parameter carries ``logical_axes`` metadata for `bitscale.nn._sharding`.

References:
  Zhang & Sennrich, "Root Mean Square Layer Normalization", arXiv:1910.07467.
  Flax NNX `nnx.Linear` / `nnx.Embed`; transformers `LlamaRMSNorm`.
"""

from __future__ import annotations

import re
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from bitscale.numerics import QArray
from bitscale.nn._packed import packed_matmul
from bitscale.nn._policy import Rule
from bitscale.numerics.validate import check_implementation
from bitscale.nn._qdot import qdot


class PackedWeight(nnx.Variable):
    """A post-training-quantized kernel: its value is a `QArray` (not trained)."""


def key_path(path: str) -> str:
    """The path `qdot` hashes into the key: the layer index is dropped (``layers.3.mlp.up_proj``
    -> ``layers.mlp.up_proj``) because the model folds the index into each layer's key, so that
    the looped and the scanned layer stacks draw the same random bits."""
    return re.sub(r"^layers\.\d+\.", "layers.", path)


def _init(rngs: nnx.Rngs, shape, std: float, dtype) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
    """``y = x @ W^T (+ b)``, W [out, in], through `qdot` with this layer's `Rule`.

    ``axes`` are the logical names of (out, in); the output is cast to ``out_dtype``.
    ``implementation`` (``auto`` / ``xla`` / ``pallas``) is `packed_matmul`'s for a packed
    (post-training quantized) kernel.
    """

    def __init__(self, d_in: int, d_out: int, *, rule: Rule, path: str, axes: tuple[str, str],
                 bias: bool = False, param_dtype="float32", out_dtype="float32",
                 std: float = 0.02, implementation: str = "auto", rngs: nnx.Rngs):
        self.kernel = nnx.Param(_init(rngs, (d_out, d_in), std, param_dtype), logical_axes=axes)
        self.bias = (nnx.Param(jnp.zeros((d_out,), param_dtype), logical_axes=axes[:1])
                     if bias else None)
        self.rule = rule
        self.path = path
        self.out_dtype = jnp.dtype(out_dtype).name
        self.implementation = check_implementation(implementation)

    def __call__(self, x: jax.Array, *, key: Optional[jax.Array] = None) -> jax.Array:
        w = self.kernel.get_value()
        if isinstance(w, QArray):
            y = packed_matmul(x, w, compute_dtype=self.rule.compute_dtype,
                              implementation=self.implementation)
        else:
            y = qdot(x, w, (((x.ndim - 1,), (1,)), ((), ())), self.rule, key=key,
                     path=key_path(self.path))
        if self.bias is not None:
            b = self.bias.get_value().astype(jnp.float32)
            y = y + b.reshape((1,) * (y.ndim - 1) + b.shape)
        return y.astype(self.out_dtype)


class Embed(nnx.Module):
    """Token embedding table [vocab, embed]; `attend` is the tied lm head ``x @ E^T``."""

    def __init__(self, vocab: int, dim: int, *, param_dtype="float32", out_dtype="float32",
                 std: float = 0.02, head_rule: Optional[Rule] = None, rngs: nnx.Rngs):
        self.embedding = nnx.Param(_init(rngs, (vocab, dim), std, param_dtype),
                                   logical_axes=("vocab", "embed"))
        self.out_dtype = jnp.dtype(out_dtype).name
        self.head_rule = head_rule

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding.get_value(), tokens, axis=0).astype(self.out_dtype)

    def attend(self, x: jax.Array, *, key: Optional[jax.Array] = None,
               path: str = "lm_head") -> jax.Array:
        """float32 logits ``x @ E^T`` (weight quantized along its embed axis, the contraction)."""
        table = self.embedding.get_value()
        return qdot(x, table, (((x.ndim - 1,), (1,)), ((), ())), self.head_rule, key=key,
                    path=path)


class RMSNorm(nnx.Module):
    """``scale * x / rms(x)``, computed in float32 (as transformers' LlamaRMSNorm).

    ``reduction``: None (``jnp.mean``), or a `SumReduction` whose ``sum(x, axis)`` sums the
    squares in a fixed order (the policy's ``reduction``, which `Llama` hands to its norms).
    """

    def __init__(self, dim: int, *, eps: float, param_dtype="float32", out_dtype="float32",
                 reduction=None):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.eps = float(eps)
        self.out_dtype = jnp.dtype(out_dtype).name
        self.reduction = reduction

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        if self.reduction is None:
            var = jnp.mean(xf * xf, axis=-1, keepdims=True)
        else:
            var = (self.reduction.sum(xf * xf, -1).astype(jnp.float32)
                   / jnp.float32(x.shape[-1]))[..., None]
        y = (xf * jax.lax.rsqrt(var + jnp.float32(self.eps))).astype(x.dtype)
        s = self.scale.get_value().astype(jnp.float32)
        return (s.reshape((1,) * (y.ndim - 1) + s.shape) * y.astype(jnp.float32)).astype(
            self.out_dtype)
