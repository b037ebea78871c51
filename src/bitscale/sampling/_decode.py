"""Cached autoregressive sampling: one prefill, then a `jax.lax.while_loop` of decode steps.

Keys are explicit and per sample: row ``i`` of `sample` uses ``row_keys(key, B)[i] =
fold_in(key, i)`` (or the caller's own [B] keys), and its ``t``-th new token uses
``fold_in(row_key, t)``. A row's tokens therefore depend only on its prompt and its key, not on
the rest of the batch (up to floating-point differences between batch shapes), which is what
makes best-of-N (`bitscale.sampling.sample_n`) equal to sampling a repeated batch.

The compiled program is cached per (model graph, strategy, batch, prompt length,
max_new_tokens, cache length, number of stop tokens rounded up to a multiple of 4): the model
crosses the `jax.jit` boundary as ``nnx.split`` (graphdef static, state traced), as in
`bitscale.train.evaluate.greedy_decode`. A layer-scanning `Llama` is decoded with its layers
unrolled by default (`merge_for_decode`: the model is called with ``scan=False``).

References:
  Pope et al., "Efficiently Scaling Transformer Inference", arXiv:2211.05102 (prefill / decode
    with a KV cache).
  gemma `gm.text.Sampler` (loop state as a struct dataclass in `lax.while_loop`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitscale.nn import KVCache
from bitscale.sampling._categorical import chosen_log_probs
from bitscale.sampling._strategies import Strategy, parse_strategy


class Samples(NamedTuple):
    """Sampled continuations; leading axes ``[*S]`` are [B] for `sample`, [B, N] for `sample_n`.

    Attributes:
      tokens: int32 [*S, T]: the new tokens, then ``pad_id`` after the stop token.
      log_probs: float32 [*S, T]: ``log_softmax(logits)`` of each chosen token under the model's
        raw distribution (temperature 1, no truncation), the behaviour log-prob an RL loss needs;
        0 after the stop token.
      lengths: int32 [*S]: tokens generated, the stop token included (T if none was emitted).
      finished: bool [*S]: True where a stop token (EOS or one of ``stop_tokens``) ended the row;
        False where it was truncated at ``max_new_tokens``.
    """

    tokens: jax.Array
    log_probs: jax.Array
    lengths: jax.Array
    finished: jax.Array


@flax.struct.dataclass
class DecodeState:
    """Carry of the decode loop; ``[*S]`` are the sample axes (the last one is the model batch)."""

    step: jax.Array        # int32 scalar: output slot of the next token
    tokens: jax.Array      # int32 [*S, T]
    log_probs: jax.Array   # float32 [*S, T]
    lengths: jax.Array     # int32 [*S]
    done: jax.Array        # bool [*S]
    finished: jax.Array    # bool [*S]
    cache: KVCache


@functools.partial(jax.jit, static_argnums=(1,))
def row_keys(key: jax.Array, batch: int) -> jax.Array:
    """[batch] keys ``fold_in(key, i)``: the per-row keys `sample` derives from one key."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch, dtype=jnp.int32))


@functools.partial(jax.jit, static_argnums=(1, 2))
def sample_keys(key: jax.Array, batch: int, n: int) -> jax.Array:
    """[batch, n] keys ``fold_in(fold_in(key, i), j)``: sample j of prompt i in `sample_n`.

    Sample j does not depend on n, so the first 8 of 64 samples are the 8 samples of n=8.
    ``sample(repeat(prompt, n, axis=0), key=sample_keys(key, B, n).reshape(-1))`` draws the same
    tokens as ``sample_n(prompt, n, key=key)``.
    """
    return jax.vmap(lambda k: row_keys(k, n))(row_keys(key, batch))


def as_keys(key, shape: tuple[int, ...], derive: Callable[[jax.Array], jax.Array],
            what: str) -> jax.Array:
    """Typed keys of ``shape``: ``derive(key)`` for one key, else ``key`` itself (raw uint32
    keys are wrapped)."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32:
            raise ValueError(f"{what}: key must be a jax.random key, got dtype {key.dtype}")
        key = jax.random.wrap_key_data(key)
    if key.shape == ():
        return derive(key)
    if key.shape != shape:
        raise ValueError(f"{what}: key must be one key or keys of shape {shape}, got shape "
                         f"{key.shape}")
    return key


def check_inputs(model, prompt, prompt_mask, max_new_tokens: int, max_len: Optional[int],
                 eos_id: Optional[int], stop_tokens: Sequence[int], what: str):
    """Validated (prompt int32, mask int32, cache length, stop ids int32 [K])."""
    prompt = jnp.asarray(prompt)
    prompt_mask = jnp.asarray(prompt_mask)
    if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"{what}: prompt must be an int array [batch, length], got "
                         f"{prompt.dtype}{list(prompt.shape)}")
    if prompt_mask.shape != prompt.shape:
        raise ValueError(f"{what}: prompt_mask shape {prompt_mask.shape} != prompt shape "
                         f"{prompt.shape}")
    b, p = prompt.shape
    if b < 1 or p < 1:
        raise ValueError(f"{what}: empty prompt batch {prompt.shape}")
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens \
            or max_new_tokens < 1:
        raise ValueError(f"{what}: max_new_tokens must be an integer >= 1, got "
                         f"{max_new_tokens!r}")
    need = p + int(max_new_tokens) - 1   # the last new token is never fed back
    if max_len is None:
        max_len = need
    elif p > max_len:
        raise ValueError(f"{what}: prompt length {p} is longer than the cache (max_len="
                         f"{max_len})")
    elif need > max_len:
        raise ValueError(f"{what}: prompt length {p} + max_new_tokens {max_new_tokens} - 1 = "
                         f"{need} slots exceed the cache (max_len={max_len})")
    cfg = getattr(model, "cfg", None)
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos is not None and need > max_pos:
        raise ValueError(f"{what}: prompt length {p} + max_new_tokens {max_new_tokens} - 1 = "
                         f"{need} exceeds the model's max_position_embeddings={max_pos}")
    if not isinstance(prompt_mask, jax.core.Tracer):
        m = np.asarray(prompt_mask) != 0
        if not m[:, -1].all():
            rows = np.flatnonzero(~m[:, -1]).tolist()
            raise ValueError(f"{what}: prompts must be LEFT-padded (last column real); rows "
                             f"{rows[:8]} end with padding")
    vocab = getattr(cfg, "vocab_size", None)
    ids = ([] if eos_id is None else [eos_id]) + list(stop_tokens)
    for t in ids:
        if isinstance(t, bool) or int(t) != t or (vocab is not None and not 0 <= t < vocab):
            raise ValueError(f"{what}: stop token / eos_id {t!r} is not a token id"
                             + (f" in [0, {vocab})" if vocab is not None else ""))
    # Padded with -1 (never a token) to a multiple of 4, so that runs with 0..4 stop tokens
    # share one compiled program.
    ids = [int(t) for t in ids] + [-1] * ((-len(ids) % 4) if ids else 4)
    stop_ids = jnp.asarray(np.asarray(ids, np.int32))
    return prompt.astype(jnp.int32), prompt_mask.astype(jnp.int32), int(max_len), stop_ids


class DecodeModel:
    """A model as the decode loop calls it: ``model(tokens, ..., scan=scan)`` and
    ``init_cache``; ``scan=False`` runs a layer-scanning `Llama`'s layers as a Python loop."""

    def __init__(self, model, scan: Optional[bool]):
        self.model, self.scan = model, scan
        self.cfg = getattr(model, "cfg", None)

    def __call__(self, tokens, **kw):
        if self.scan is None:
            return self.model(tokens, **kw)
        return self.model(tokens, scan=self.scan, **kw)

    def init_cache(self, batch: int, max_len: int):
        return self.model.init_cache(batch, max_len)


def merge_for_decode(graphdef, state, unroll_layers: bool) -> DecodeModel:
    """``nnx.merge`` inside the jitted sampler; with ``unroll_layers`` a `Llama` that scans its
    layers is called with ``scan=False`` (same weights and numerics up to rounding).

    `Llama`'s scan stacks the per-layer weights on every call; inside the decode loop that is a
    copy of every layer weight per generated token, which XLA does not hoist out of the
    `while_loop` (2-3x slower decoding of the 100M benchmark model on CPU).
    """
    model = nnx.merge(graphdef, state)
    unroll = unroll_layers and getattr(model, "scan", False)
    return DecodeModel(model, False if unroll else None)


def prefill(model, prompt: jax.Array, prompt_mask: jax.Array, max_len: int):
    """(cache after the prompt, float32 next-token logits [B, V] of the last prompt position)."""
    cache = model.init_cache(prompt.shape[0], max_len)
    logits, cache = model(prompt, attention_mask=prompt_mask, cache=cache)
    return cache, logits[:, -1].astype(jnp.float32)


def pick(strategy: Strategy, logits: jax.Array, keys: jax.Array, step) -> tuple:
    """(tokens int32 [R], raw log-probs float32 [R]) for logits [R, V]; row r samples with
    ``fold_in(keys[r], step)``."""
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    tokens = jax.vmap(strategy.get_next_tokens)(logits, step_keys)
    return tokens, chosen_log_probs(logits, tokens)


def model_step(model, strategy: Strategy, prev: jax.Array, cache: KVCache, keys: jax.Array,
               step: jax.Array):
    """One decode step of a flat batch: feed ``prev`` [R], sample the next tokens."""
    ones = jnp.ones((prev.shape[0], 1), jnp.int32)
    logits, cache = model(prev[:, None], attention_mask=ones, cache=cache)
    tokens, lp = pick(strategy, logits[:, -1], keys, step)
    return tokens, lp, cache


def decode_loop(step_fn, first: jax.Array, first_lp: jax.Array, cache: KVCache,
                max_new_tokens: int, stop_ids: jax.Array, pad_id: jax.Array) -> Samples:
    """Runs ``step_fn(prev [*S], cache, step) -> (tokens, log_probs, cache)`` until every sample
    has stopped or ``max_new_tokens`` tokens exist; ``first`` [*S] is the prefill's token."""
    n = max_new_tokens
    shape = first.shape

    def is_stop(tok):
        ids = stop_ids.reshape((1,) * tok.ndim + stop_ids.shape)
        return jnp.any(tok[..., None] == ids, axis=-1)

    hit = is_stop(first)
    state = DecodeState(
        step=jnp.int32(1),
        tokens=jnp.full(shape + (n,), pad_id, jnp.int32).at[..., 0].set(first),
        log_probs=jnp.zeros(shape + (n,), jnp.float32).at[..., 0].set(first_lp),
        lengths=jnp.ones(shape, jnp.int32), done=hit, finished=hit, cache=cache)

    def cond(s: DecodeState):
        return (s.step < n) & ~jnp.all(s.done)

    def body(s: DecodeState):
        prev = jax.lax.dynamic_index_in_dim(s.tokens, s.step - 1, axis=-1, keepdims=False)
        tok, lp, cache = step_fn(prev, s.cache, s.step)
        tok = jnp.where(s.done, pad_id, tok)
        lp = jnp.where(s.done, jnp.float32(0), lp)
        hit = is_stop(tok) & ~s.done
        return DecodeState(
            step=s.step + 1,
            tokens=jax.lax.dynamic_update_index_in_dim(s.tokens, tok, s.step, axis=-1),
            log_probs=jax.lax.dynamic_update_index_in_dim(s.log_probs, lp, s.step, axis=-1),
            lengths=s.lengths + (~s.done).astype(jnp.int32),
            done=s.done | hit, finished=s.finished | hit, cache=cache)

    s = jax.lax.while_loop(cond, body, state)
    return Samples(s.tokens, s.log_probs, s.lengths, s.finished)


@functools.partial(jax.jit, static_argnames=("graphdef", "strategy", "max_new_tokens",
                                             "max_len", "unroll_layers"))
def _sample(graphdef, state, prompt, prompt_mask, keys, stop_ids, pad_id, *, strategy,
            max_new_tokens: int, max_len: int, unroll_layers: bool) -> Samples:
    model = merge_for_decode(graphdef, state, unroll_layers)
    cache, logits = prefill(model, prompt, prompt_mask, max_len)
    first, first_lp = pick(strategy, logits, keys, 0)

    def step_fn(prev, cache, step):
        return model_step(model, strategy, prev, cache, keys, step)

    return decode_loop(step_fn, first, first_lp, cache, max_new_tokens, stop_ids, pad_id)


def sample(model: nnx.Module, prompt, prompt_mask, *, strategy: "Strategy | str", key,
           max_new_tokens: int, eos_id: Optional[int], pad_id: int,
           stop_tokens: Sequence[int] = (), max_len: Optional[int] = None,
           unroll_layers: bool = True) -> Samples:
    """Samples continuations of left-padded prompts with a KV cache.

    Args:
      model: a `bitscale.nn.Llama` (anything with ``__call__(tokens, attention_mask=, cache=)``
        returning ``(float32 logits, cache)`` and ``init_cache(batch, max_len)``).
      prompt: int [B, P], LEFT-padded (`bitscale.data.make_batch`'s ``prompt``).
      prompt_mask: [B, P], 1 on real prompt tokens; every row must end with a real token.
      strategy: a `Strategy` or a `parse_strategy` string (``"top_p:0.9"``).
      key: one `jax.random` key (row i uses ``fold_in(key, i)``, see `row_keys`) or [B] keys.
      max_new_tokens: T >= 1 tokens to generate at most.
      eos_id: stop token (None: none besides ``stop_tokens``); pad_id fills the slots after it.
      stop_tokens: further token ids that end a row (kept in the output, like EOS).
      max_len: cache slots (default and minimum: P + T - 1); a larger value only costs memory.
      unroll_layers: decode a layer-scanning `Llama` with its layers unrolled (faster steps,
        longer compiles; see `merge_for_decode`); False keeps the model's own choice.
    Returns:
      `Samples` with tokens / log_probs [B, T] and lengths / finished [B]. Decoding stops as soon
      as every row has emitted a stop token.
    Raises:
      ValueError: bad shapes, a right-padded prompt, max_new_tokens < 1, a prompt longer than the
        cache or than ``max_position_embeddings``, a bad key shape or an unknown strategy.
    """
    strategy = parse_strategy(strategy)
    prompt, prompt_mask, max_len, stop_ids = check_inputs(
        model, prompt, prompt_mask, max_new_tokens, max_len, eos_id, stop_tokens, "sample")
    b = prompt.shape[0]
    keys = as_keys(key, (b,), lambda k: row_keys(k, b), "sample")
    graphdef, state = nnx.split(model)
    return _sample(graphdef, state, prompt, prompt_mask, keys, stop_ids, jnp.int32(pad_id),
                   strategy=strategy, max_new_tokens=int(max_new_tokens), max_len=max_len,
                   unroll_layers=bool(unroll_layers))
