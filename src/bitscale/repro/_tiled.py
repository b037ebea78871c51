"""`BatchInvariantLlama`: a Llama that runs any batch as fixed-size row tiles.

The batch is padded to a multiple of ``tile`` rows and the model runs one ``[tile, length]``
slice at a time inside a `lax.fori_loop`, reading and writing its rows of the logits and the KV
cache with dynamic slices. Every operation the backend compiles (GEMMs, reductions, softmax,
elementwise fusions, whichever library they are offloaded to) therefore sees the same shapes
whatever the batch size, so a sample's logits cannot depend on how many other samples share
its batch. With ``tile=1`` nothing depends on its position in the batch either; with larger
tiles position-independence rests on the backend treating the rows of one shape alike (XLA CPU
does; `tests/repro` checks first, middle and last rows).

Measured on XLA CPU (jax 0.10.2) with the plain ``fp32`` policy: batch 1 differs from batch 2
and more (a GEMV instead of a GEMM), row reductions change strategy from 32 rows on, and
softmax's ``exp(x - max)`` fusion is offloaded (to YNNPACK) from batch 2 on, with +-1 ulp
differences; logits differ by up to ~4e-7.

References:
  He et al., "Defeating Nondeterminism in LLM Inference", Thinking Machines Lab, 2025.
  Yuan et al., "Give Me FP32 or Give Me Death? Challenges and Solutions for Reproducible
    Reasoning", arXiv:2506.09501.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from bitscale import nn as bnn
from bitscale.nn.attention import KVCache


class BatchInvariantLlama(bnn.Llama):
    """`bitscale.nn.Llama` computed in fixed row tiles (see the module docstring).

    Same parameters, state layout and call signature as `Llama`. ``init_cache(batch, ...)``
    returns a cache with ``batch`` rounded up to a multiple of ``tile`` rows (the padding rows
    are computed and discarded); a cache of exactly ``batch`` rows is accepted as well.
    Stochastic rounding (``key``) draws the same bits for every tile.
    """

    def __init__(self, cfg: bnn.ModelConfig, policy: "str | bnn.Policy" = "fp32", *,
                 tile: int = 1, param_dtype=None, rngs):
        if not isinstance(tile, int) or tile < 1:
            raise ValueError(f"BatchInvariantLlama: tile must be a positive integer, got {tile!r}")
        super().__init__(cfg, policy, param_dtype=param_dtype, rngs=rngs)
        self.tile = tile

    def padded_rows(self, batch: int) -> int:
        return -(-batch // self.tile) * self.tile

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        return super().init_cache(self.padded_rows(batch), max_len)

    def __call__(self, tokens: jax.Array, *, attention_mask: Optional[jax.Array] = None,
                 positions: Optional[jax.Array] = None, cache: Optional[KVCache] = None,
                 key: Optional[jax.Array] = None):
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got {list(tokens.shape)}")
        b, t = tokens.shape
        bt = self.tile
        bp = self.padded_rows(b)
        mask = (jnp.ones((b, t), jnp.int32) if attention_mask is None
                else jnp.asarray(attention_mask).astype(jnp.int32))

        def pad(a, value=0):
            return jnp.pad(a, ((0, bp - a.shape[0]),) + ((0, 0),) * (a.ndim - 1),
                           constant_values=value)

        tokens, mask = pad(tokens), pad(mask, 1)
        if positions is not None:
            positions = pad(jnp.asarray(positions, jnp.int32))

        def rows(a, i):
            return lax.dynamic_slice_in_dim(a, i * bt, bt, axis=0)

        def put(a, u, i):
            return lax.dynamic_update_slice_in_dim(a, u, i * bt, axis=0)

        def run(i, tile_cache):
            return bnn.Llama.__call__(
                self, rows(tokens, i), attention_mask=rows(mask, i),
                positions=None if positions is None else rows(positions, i), cache=tile_cache,
                key=key)

        logits0 = jnp.zeros((bp, t, self.cfg.vocab_size), jnp.float32)
        if cache is None:
            logits = lax.fori_loop(0, bp // bt, lambda i, acc: put(acc, run(i, None), i),
                                   logits0)
            return logits[:b]
        rows_in = cache.valid.shape[0]
        if rows_in not in (b, bp):
            raise ValueError(f"cache batch {rows_in} != tokens batch {b} (or {bp}, padded)")
        k, v = (tuple(pad(a) for a in cache.k), tuple(pad(a) for a in cache.v))
        valid = pad(cache.valid, False)

        def body(i, carry):
            logits, k, v, valid = carry
            tile = KVCache(tuple(rows(a, i) for a in k), tuple(rows(a, i) for a in v),
                           rows(valid, i), cache.index)
            out, c = run(i, tile)
            return (put(logits, out, i), tuple(put(a, u, i) for a, u in zip(k, c.k)),
                    tuple(put(a, u, i) for a, u in zip(v, c.v)), put(valid, c.valid, i))

        logits, k, v, valid = lax.fori_loop(0, bp // bt, body, (logits0, k, v, valid))
        if rows_in == b:
            k, v, valid = (tuple(a[:b] for a in k), tuple(a[:b] for a in v), valid[:b])
        return logits[:b], KVCache(k, v, valid, cache.index + t)
