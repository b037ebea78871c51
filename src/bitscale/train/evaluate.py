"""Held-out evaluation: cached greedy decoding, task accuracy and teacher-forced perplexity.

``greedy_decode`` is `bitscale.sampling.sample` with the `Greedy` strategy: one prefill over
left-padded prompts into a `KVCache`, then single-token decode steps inside a
`jax.lax.while_loop` that stops as soon as every row has emitted EOS (the model's own layer scan
is kept, as training ran it).

``accuracy`` batches examples to a fixed shape (the last batch is padded with copies of a real
example and those rows are dropped), decodes greedily and scores with ``task.check``.
``perplexity`` is ``exp(mean NLL)`` over the masked next-token targets of `make_batch` dicts.

References:
  Pope et al., "Efficiently Scaling Transformer Inference", arXiv:2211.05102 (prefill / decode
    with a KV cache).
  Cobbe et al., "Training Verifiers to Solve Math Word Problems", arXiv:2110.14168 (answer
    checking after ``####``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitscale import sampling
from bitscale.data import Example, Tokenizer, prompt_batches
from bitscale.train.losses import token_log_probs

__all__ = ["accuracy", "greedy_decode", "perplexity"]


def greedy_decode(model: nnx.Module, prompt, prompt_mask, max_new_tokens: int,
                  eos_id: int | None, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Greedy continuation of left-padded prompts with a KV cache (`bitscale.sampling.sample`
    with `Greedy`, layers kept as the model has them).

    Args:
      model: a `bitscale.nn.Llama` (anything with ``__call__(tokens, attention_mask=, cache=)``
        returning ``(logits, cache)`` and ``init_cache(batch, max_len)``).
      prompt: int32 [B, P], LEFT-padded (``make_batch``'s ``prompt``); every row must end with a
        real token.
      prompt_mask: [B, P], 1 on real prompt tokens.
      max_new_tokens: N >= 1 tokens to generate at most.
      eos_id, pad_id: a row stops after its first EOS (kept in the output); later slots are PAD.
        A negative ``eos_id`` (or None) never stops a row.
    Returns:
      (tokens int32 [B, N], lengths int32 [B]): ``lengths`` counts the generated tokens up to and
      including the first EOS (N when a row never emits EOS). Argmax is over float32 logits
      (ties: lowest id). Decoding stops early once every row has emitted EOS.
    """
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) < 1:
        raise ValueError(f"greedy_decode: max_new_tokens must be >= 1, got {max_new_tokens}")
    out = sampling.sample(model, prompt, prompt_mask, strategy=sampling.Greedy(),
                          key=jax.random.key(0), max_new_tokens=int(max_new_tokens),
                          eos_id=None if eos_id is None or int(eos_id) < 0 else int(eos_id), pad_id=int(pad_id), unroll_layers=False)
    return out.tokens, out.lengths


def accuracy(model: nnx.Module, examples: Sequence[Example], task: Any, tokenizer: Tokenizer, *,
             batch_size: int, max_prompt_len: int, max_new_tokens: int,
             truncate_prompts: bool = False) -> dict[str, Any]:
    """Greedy-decoding accuracy of ``model`` on held-out ``examples``, scored by ``task.check``.

    Every batch has the fixed shape [batch_size, max_prompt_len] (one compilation); the last one
    is filled with copies of its first example whose outputs are dropped.

    Args:
      task: anything with ``check(completion: str, example: Example) -> bool``.
      truncate_prompts: passed to `make_batch` as ``truncate`` (False: a prompt longer than
        ``max_prompt_len``, BOS included, raises ValueError).
    Returns:
      dict with ``accuracy`` (float, fraction of examples accepted), ``n`` (number of examples),
      ``completions`` (decoded text per example, cut at EOS) and ``correct`` (bool per example).
    """
    examples = list(examples)
    if not examples:
        raise ValueError("accuracy: empty list of examples")
    if batch_size < 1:
        raise ValueError(f"accuracy: batch_size must be >= 1, got {batch_size}")
    completions: list[str] = []
    for pb in prompt_batches(examples, tokenizer, batch_size, max_prompt_len,
                             truncate=truncate_prompts):
        toks, lengths = greedy_decode(model, pb.prompt, pb.prompt_mask, max_new_tokens,
                                      tokenizer.eos_id, tokenizer.pad_id)
        toks, lengths = np.asarray(toks), np.asarray(lengths)
        completions += [tokenizer.decode(toks[i, :lengths[i]].tolist(), errors="replace")
                        for i in range(pb.real)]
    correct = [bool(task.check(c, ex)) for c, ex in zip(completions, examples)]
    return {"accuracy": sum(correct) / len(correct), "n": len(examples),
            "completions": completions, "correct": correct}


@functools.partial(jax.jit, static_argnums=(0,))
def _nll_sum(graphdef, state, tokens, attention_mask, mask):
    model = nnx.merge(graphdef, state)
    logits = model(tokens, attention_mask=attention_mask)
    lp = token_log_probs(logits[:, :-1], tokens[:, 1:])
    m = mask[:, 1:] != 0
    return jnp.where(m, -lp, 0.0), m  # summed on the host in float64


def perplexity(model: nnx.Module, batches: Iterable[Any], mask: str = "answer") -> float:
    """``exp(mean NLL)`` of the next-token targets selected by ``mask``.

    Args:
      batches: `make_batch` dicts (or `bitscale.data.Batch` objects); ``logits[:, t]`` predicts
        ``tokens[:, t + 1]``, counted where ``<mask>_mask[:, t + 1]`` is 1.
      mask: ``answer`` (target + EOS), ``full`` (every real token after BOS) or ``loss``
        (the batch's ``loss_mask``).
    Returns:
      float perplexity: per-token NLLs are float32, their sum is float64 on the host.
    """
    if mask not in ("answer", "full", "loss"):
        raise ValueError(f"perplexity: mask must be 'answer', 'full' or 'loss', got {mask!r}")
    graphdef, state = nnx.split(model)
    total, count = 0.0, 0.0
    for batch in batches:
        arrays: Mapping[str, Any] = getattr(batch, "arrays", batch)
        tokens = jnp.asarray(arrays["tokens"], jnp.int32)
        s, c = _nll_sum(graphdef, state, tokens, jnp.asarray(arrays["full_mask"], jnp.int32),
                        jnp.asarray(arrays[f"{mask}_mask"], jnp.int32))
        total += float(np.sum(np.asarray(s, np.float64)))
        count += float(np.sum(np.asarray(c)))
    if count == 0:
        raise ValueError("perplexity: no masked target tokens in the batches")
    return math.exp(total / count)
