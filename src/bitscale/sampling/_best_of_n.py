"""Best-of-N sampling: one prefill per prompt, the KV cache broadcast to the N samples, and the
N samples of every prompt decoded together as one batch of B * N rows (row ``i * N + j`` is
sample j of prompt i; B * chunk_size rows per chunk), each row drawing its tokens with its own
key.

Sample j of prompt i uses the key ``sample_keys(key, B, N)[i, j] = fold_in(fold_in(key, i), j)``
(or the caller's [B, N] keys), so it equals row ``i * N + j`` of
``sample(repeat(prompt, N, axis=0), key=keys.reshape(-1))`` token for token: the two differ only
in the prefill, done once per prompt here. With ``chunk_size``, the N axis is decoded
``chunk_size`` samples at a time (`jax.lax.map` over chunks inside one compiled program; the
prefill is still done once), bounding the memory of the broadcast cache to ``chunk_size``
copies.

Why one flat batch rather than `jax.vmap` of the decode step over N: the two are the same
computation, but JAX lowers a vmapped cache write (``dynamic_update_slice``) to a scatter, and
XLA:CPU then copies each layer's cache around it; the flat batch writes the new slot in place
(~15% of a 100M-model decode step at N = 64 on CPU). The sampling itself is vmapped over the
rows' keys (`bitscale.sampling.pick`).

References:
  Brown et al., "Large Language Monkeys: Scaling Inference Compute with Repeated Sampling",
    arXiv:2407.21787 (repeated sampling / best-of-N coverage).
  Cobbe et al., "Training Verifiers to Solve Math Word Problems", arXiv:2110.14168 (best-of-N
    with a verifier).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from bitscale.nn import KVCache
from bitscale.sampling._decode import (
    Samples, as_keys, check_inputs, decode_loop, merge_for_decode, model_step, pick, prefill,
    sample_keys)
from bitscale.sampling._strategies import Strategy, parse_strategy

@functools.partial(jax.jit, static_argnames=("graphdef", "strategy", "max_new_tokens",
                                             "max_len", "chunk", "unroll_layers"))
def _sample_n(graphdef, state, prompt, prompt_mask, keys, stop_ids, pad_id, *, strategy,
              max_new_tokens: int, max_len: int, chunk: int, unroll_layers: bool) -> Samples:
    model = merge_for_decode(graphdef, state, unroll_layers)
    cache, logits = prefill(model, prompt, prompt_mask, max_len)
    b, n = keys.shape
    n_chunks = -(-n // chunk)
    padded = n_chunks * chunk
    if padded != n:   # pad the last chunk with repeats; their samples are dropped
        keys = jnp.concatenate([keys, keys[:, : padded - n]], axis=1)
    keys = keys.reshape(b, n_chunks, chunk).swapaxes(0, 1)             # [chunks, B, chunk]

    def repeat(a: jax.Array) -> jax.Array:                             # [B, ...] -> [B * chunk]
        return jnp.repeat(a, chunk, axis=0, total_repeat_length=b * chunk)

    wide = KVCache(tuple(map(repeat, cache.k)), tuple(map(repeat, cache.v)),
                   repeat(cache.valid), cache.index)

    def run_chunk(ck: jax.Array) -> Samples:                           # ck: [B, chunk] keys
        rows = ck.reshape(-1)                                          # row i * chunk + j
        first, first_lp = pick(strategy, repeat(logits), rows, 0)

        def step_fn(prev, c, i):
            return model_step(model, strategy, prev, c, rows, i)

        out = decode_loop(step_fn, first, first_lp, wide, max_new_tokens, stop_ids, pad_id)
        return jax.tree.map(lambda a: a.reshape((b, chunk) + a.shape[1:]), out)

    if n_chunks == 1:
        out = jax.tree.map(lambda a: a[None], run_chunk(keys[0]))
    else:
        out = jax.lax.map(run_chunk, keys)
    # [chunks, B, chunk, ...] -> [B, N, ...]
    return jax.tree.map(
        lambda a: jnp.moveaxis(a, 0, 1).reshape((b, padded) + a.shape[3:])[:, :n], out)


def sample_n(model: nnx.Module, prompt, prompt_mask, n: int, *, strategy: "Strategy | str",
             key, max_new_tokens: int, eos_id: Optional[int], pad_id: int,
             stop_tokens: Sequence[int] = (), chunk_size: Optional[int] = None,
             max_len: Optional[int] = None, unroll_layers: bool = True) -> Samples:
    """N sampled continuations of each left-padded prompt (best-of-N / pass@k generation).

    Args:
      model, prompt, prompt_mask, strategy, max_new_tokens, eos_id, pad_id, stop_tokens,
        max_len, unroll_layers: as in `sample`.
      n: samples per prompt, N >= 1.
      key: one `jax.random` key (sample j of prompt i uses ``sample_keys(key, B, N)[i, j]``) or
        [B, N] keys.
      chunk_size: decode at most this many of the N samples at once (None: all N).
    Returns:
      `Samples` with tokens / log_probs [B, N, T] and lengths / finished [B, N]; identical to
      `sample` on the prompts repeated N times with the same keys.
    Raises:
      ValueError: n < 1, chunk_size < 1, and every error of `sample`.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"sample_n: n must be an integer >= 1, got {n!r}")
    n = int(n)
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) != chunk_size
                                   or chunk_size < 1):
        raise ValueError(f"sample_n: chunk_size must be an integer >= 1 or None, got "
                         f"{chunk_size!r}")
    strategy = parse_strategy(strategy)
    prompt, prompt_mask, max_len, stop_ids = check_inputs(
        model, prompt, prompt_mask, max_new_tokens, max_len, eos_id, stop_tokens, "sample_n")
    b = prompt.shape[0]
    keys = as_keys(key, (b, n), lambda k: sample_keys(k, b, n), "sample_n")
    chunk = n if chunk_size is None else min(int(chunk_size), n)
    graphdef, state = nnx.split(model)
    return _sample_n(graphdef, state, prompt, prompt_mask, keys, stop_ids, jnp.int32(pad_id),
                     strategy=strategy, max_new_tokens=int(max_new_tokens), max_len=max_len,
                     chunk=chunk, unroll_layers=bool(unroll_layers))
