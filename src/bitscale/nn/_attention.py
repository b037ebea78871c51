"""Grouped-query attention with rotary embeddings, causal / padding / sliding-window masks and
an explicit KV cache.

The QK and PV products go through `qdot` with the rules of ``<layer>.attn.qk`` and
``<layer>.attn.pv`` (lhs: q or the probabilities; rhs: k or v, each quantized along the
contraction axis); keys and values are fake-quantized with the ``act`` spec of
``<layer>.attn.kv_cache`` before they are cached or used, so that the cached and the full
forward pass see the same values. Scores and softmax are float32; masked scores are set to a
finite -1e30 (a fully masked row, e.g. a left-padding query, becomes uniform, never NaN). When
the policy has a ``reduction`` (a fixed-order sum, `bitscale.nn.Policy`), the softmax
denominator is summed with it instead of ``jnp.sum``.

References:
  Ainslie et al., "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
    Checkpoints", arXiv:2305.13245.
  Vaswani et al., "Attention Is All You Need", arXiv:1706.03762.
  transformers 5 `LlamaAttention` / `eager_attention_forward` / `repeat_kv`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from bitscale.numerics import fake_quant
from bitscale.nn._config import ModelConfig
from bitscale.nn._layers import Linear, key_path
from bitscale.nn._policy import Policy
from bitscale.nn._qdot import qdot
from bitscale.nn._rope import apply_rope
from bitscale.nn._sharding import constrain

MASK_VALUE = -1e30


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Decoding state: keys and values of every layer, which slots hold real tokens, next slot.

    Attributes:
      k: one array per layer, [batch, kv_heads, head_dim, max_len]: keys stored transposed,
        so that the query-key product of a decode step is a plain (non-transposed) matmul.
      v: one array per layer, [batch, kv_heads, max_len, head_dim].
        One array per layer, so that a decode step writes each layer's new slot in place and
        reads the layer without a copy.
      valid: [batch, max_len] bool, True where a slot holds a non-padding token.
      index: int32 scalar, the next slot to write (shared by the batch; rows of different
        lengths are left-padded).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    index: jax.Array

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype="float32") -> KVCache:
    """An empty cache for ``batch`` rows of up to ``max_len`` tokens (prompt included)."""
    k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, max_len)
    v_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    n = cfg.num_layers
    return KVCache(tuple(jnp.zeros(k_shape, dtype) for _ in range(n)),
                   tuple(jnp.zeros(v_shape, dtype) for _ in range(n)),
                   jnp.zeros((batch, max_len), bool), jnp.zeros((), jnp.int32))


class Attention(nnx.Module):
    """Grouped-query self-attention of decoder layer ``layer``."""

    def __init__(self, cfg: ModelConfig, policy: Policy, layer: int, *, param_dtype,
                 implementation: str = "auto", rngs: nnx.Rngs):
        p = f"layers.{layer}.attn"
        h, d, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        std, act = cfg.initializer_range, policy.act_dtype
        kw = dict(param_dtype=param_dtype, out_dtype=act, std=std,
                  implementation=implementation, rngs=rngs)
        self.q_proj = Linear(h, nh * d, rule=policy.rule_for(f"{p}.q_proj"), path=f"{p}.q_proj",
                             axes=("heads", "embed"), bias=cfg.qkv_bias, **kw)
        self.k_proj = Linear(h, nkv * d, rule=policy.rule_for(f"{p}.k_proj"),
                             path=f"{p}.k_proj", axes=("kv_heads", "embed"), bias=cfg.qkv_bias,
                             **kw)
        self.v_proj = Linear(h, nkv * d, rule=policy.rule_for(f"{p}.v_proj"),
                             path=f"{p}.v_proj", axes=("kv_heads", "embed"), bias=cfg.qkv_bias,
                             **kw)
        self.o_proj = Linear(nh * d, h, rule=policy.rule_for(f"{p}.o_proj"), path=f"{p}.o_proj",
                             axes=("embed", "heads"), bias=cfg.o_bias, **kw)
        self.qk_rule = policy.rule_for(f"{p}.qk")
        self.pv_rule = policy.rule_for(f"{p}.pv")
        self.cache_rule = policy.rule_for(f"{p}.kv_cache")
        self.reduction = policy.reduction
        self.path = p
        self.num_heads, self.num_kv_heads, self.head_dim = nh, nkv, d
        self.act_dtype = act
        self.rules = cfg.logical_axis_rules

    def _cacheable(self, x: jax.Array) -> jax.Array:
        spec = self.cache_rule.act
        return x if spec is None else fake_quant(x, spec, axis=-1)

    def project(self, x: jax.Array, cos: jax.Array, sin: jax.Array, *,
                key: Optional[jax.Array] = None):
        """Queries [batch, length, heads, head_dim] and the keys / values of ``x`` [batch,
        length, embed] as the cache holds them (keys [batch, kv_heads, head_dim, length],
        values [batch, kv_heads, length, head_dim]), rotated and fake-quantized by the
        ``kv_cache`` rule.

        Args:
          cos, sin: float32 rope tables [batch, length, head_dim] at the tokens' positions.
          key: the layer's key for stochastic rounding.
        """
        b, t, _ = x.shape
        nh, nkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x, key=key).reshape(b, t, nh, d)
        k = self.k_proj(x, key=key).reshape(b, t, nkv, d)
        v = self.v_proj(x, key=key).reshape(b, t, nkv, d)
        q = constrain(q, ("act_batch", "act_length", "act_heads", "act_head_dim"), self.rules)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = self._cacheable(k), self._cacheable(v)
        return q, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
               key: Optional[jax.Array] = None) -> jax.Array:
        """Output [batch, length, embed] of queries q [batch, length, heads, head_dim] over keys
        k [batch, kv_heads, head_dim, keys] and values v [batch, kv_heads, keys, head_dim];
        ``mask`` bool [batch, length, keys] is True where a query may attend to a key slot."""
        b, t = q.shape[:2]
        nh, nkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        g = nh // nkv
        s = k.shape[3]
        # [b, t, nkv, g, d] -> [b, nkv, g*t, d]; head h = kv_head * g + r (transformers' repeat_kv)
        qg = q.reshape(b, t, nkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, nkv, g * t, d)
        scores = qdot(qg, k.astype(qg.dtype), (((3,), (2,)), ((0, 1), (0, 1))), self.qk_rule,
                      key=key, path=key_path(f"{self.path}.qk"))
        scores = scores.reshape(b, nkv, g, t, s) * jnp.float32(d ** -0.5)
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.float32(MASK_VALUE))
        probs = softmax(scores, self.reduction).astype(self.act_dtype)
        out = qdot(probs.reshape(b, nkv, g * t, s), v.astype(self.act_dtype),
                   (((3,), (2,)), ((0, 1), (0, 1))), self.pv_rule, key=key,
                   path=key_path(f"{self.path}.pv"))
        out = out.reshape(b, nkv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, nh * d)
        out = constrain(out.astype(self.act_dtype), ("act_batch", "act_length", "act_heads"),
                        self.rules)
        return self.o_proj(out, key=key)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, *,
                 key: Optional[jax.Array] = None) -> jax.Array:
        """Attention of x [batch, length, embed] within x (no cache): ``attend(*project(x))``.
        With a cache, `bitscale.nn.DecoderLayer` stores ``project``'s keys / values first and
        attends over the layer's whole cache."""
        q, k, v = self.project(x, cos, sin, key=key)
        return self.attend(q, k, v, mask, key=key)


def softmax(scores: jax.Array, reduction=None) -> jax.Array:
    """float32 softmax over the last axis; the denominator summed by ``reduction.sum`` if given
    (a fixed-order sum; None: `jax.nn.softmax`)."""
    if reduction is None:
        return jax.nn.softmax(scores, axis=-1)
    e = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
    return e / reduction.sum(e, -1).astype(jnp.float32)[..., None]


def attention_mask(q_slots: jax.Array, k_valid: jax.Array, q_pos: jax.Array,
                   window: Optional[int]) -> jax.Array:
    """bool [batch, queries, keys]: causal over slots, valid keys only, optional window.

    Args:
      q_slots: int32 [length] slot of each query (keys occupy slots 0 .. keys-1).
      k_valid: bool [batch, keys].
      q_pos: int32 [batch, length] positions of the queries; key positions are the running
        count of valid slots, so left padding does not shift them.
      window: keys with position <= query position - window are masked (None: no window).
    """
    n_keys = k_valid.shape[1]
    k_slots = jnp.arange(n_keys, dtype=jnp.int32)
    m = (k_slots[None, :] <= q_slots[:, None])[None, :, :] & k_valid[:, None, :]
    if window is not None:
        k_pos = jnp.cumsum(k_valid.astype(jnp.int32), axis=-1) - 1
        m = m & (k_pos[:, None, :] > q_pos[:, :, None] - window)
    return m
