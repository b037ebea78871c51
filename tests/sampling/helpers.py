"""Shared helpers for tests/sampling: a tiny random model and left-padded random prompts."""

from __future__ import annotations

import numpy as np

from bitscale import nn as bnn

PAD, BOS, EOS = 0, 1, 2
# A large init range makes the random model's distributions peaked and its argmax untied.
CFG = bnn.ModelConfig(vocab_size=48, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=64,
                      initializer_range=0.5)


def make_model(cfg: bnn.ModelConfig = CFG, seed: int = 0) -> bnn.Llama:
    from flax import nnx
    return bnn.Llama(cfg, "fp32", rngs=nnx.Rngs(seed))


def prompts(lengths, p: int, vocab: int = CFG.vocab_size, seed: int = 0):
    """(prompt, mask) int32 [len(lengths), p]: BOS + random tokens, LEFT-padded with PAD."""
    rng = np.random.default_rng(seed)
    prompt = np.full((len(lengths), p), PAD, np.int32)
    mask = np.zeros((len(lengths), p), np.int32)
    for i, n in enumerate(lengths):
        prompt[i, p - n:] = [BOS] + list(rng.integers(3, vocab, n - 1))
        mask[i, p - n:] = 1
    return prompt, mask


def full_forward_log_probs(model, prompt, mask, tokens, lengths):
    """Cache-free reference: (log_softmax [B, T, V] float64 at the positions that predict each
    new token, argmax [B, T]) from one forward pass over prompt + generated tokens."""
    import jax

    b, p = prompt.shape
    t = tokens.shape[1]
    seq = np.concatenate([prompt, np.asarray(tokens)], axis=1)
    gen_mask = (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    full_mask = np.concatenate([mask, gen_mask], axis=1)
    logits = np.asarray(bnn.apply(model, seq, attention_mask=full_mask), np.float64)
    logits = logits[:, p - 1:p - 1 + t]
    logp = logits - np.asarray(jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True))
    return logp, logits.argmax(-1)
