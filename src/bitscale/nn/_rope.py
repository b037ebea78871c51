"""Rotary position embeddings (half-split "rotate_half" layout) with linear and Llama-3 scaling.

References:
  Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", arXiv:2104.09864.
  Grattafiori et al., "The Llama 3 Herd of Models", arXiv:2407.21783 (frequency scaling).
  transformers 5 `modeling_rope_utils._compute_llama3_parameters`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.nn._config import ModelConfig


def inv_frequencies(cfg: ModelConfig) -> np.ndarray:
    """float32 inverse frequencies [head_dim // 2], computed as transformers does (in float32)."""
    d = cfg.head_dim
    exps = np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d)
    inv = (np.float32(1.0) / (np.float32(cfg.rope_theta) ** exps)).astype(np.float32)
    s = cfg.rope_scaling
    if s is None:
        return inv
    if s.rope_type == "linear":
        return (inv / np.float32(s.factor)).astype(np.float32)
    old = s.original_max_position_embeddings
    low_wl, high_wl = old / s.low_freq_factor, old / s.high_freq_factor
    wavelen = np.float32(2 * math.pi) / inv
    scaled = np.where(wavelen > low_wl, inv / np.float32(s.factor), inv).astype(np.float32)
    smooth = ((old / wavelen - s.low_freq_factor)
              / (s.high_freq_factor - s.low_freq_factor)).astype(np.float32)
    smoothed = (1 - smooth) * scaled / np.float32(s.factor) + smooth * scaled
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float32 (cos, sin) of shape [batch, length, head_dim] for int positions [batch, length]."""
    inv = jnp.asarray(inv_frequencies(cfg))
    freqs = positions.astype(jnp.float32)[:, :, None] * inv[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [batch, length, heads, head_dim] in float32; returns x's dtype."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return (xf * c + rot * s).astype(x.dtype)
