"""The Llama-family decoder (Llama 2/3, Qwen2, Mistral) in Flax NNX with a precision policy.

``model(tokens)`` maps int32 tokens [batch, length] to float32 logits [batch, length, vocab].
With ``cache=`` it also returns the updated `KVCache` (prefill and decode are the same call).

References:
  Touvron et al., "Llama 2", arXiv:2307.09288; Grattafiori et al., "The Llama 3 Herd of Models",
    arXiv:2407.21783; Shazeer, "GLU Variants Improve Transformer", arXiv:2002.05202 (SwiGLU).
  transformers 5 `LlamaForCausalLM`, `Qwen2ForCausalLM`, `MistralForCausalLM`.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from bitscale.nn._attention import Attention, KVCache, init_cache
from bitscale.nn._attention import attention_mask as make_mask
from bitscale.nn._config import ModelConfig
from bitscale.nn._layers import Embed, Linear, RMSNorm
from bitscale.nn._policy import Policy, resolve_policy
from bitscale.nn._rope import rope_tables
from bitscale.nn._sharding import constrain

_MLP = ("gate_proj", "up_proj", "down_proj")
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj", "qk", "pv", "kv_cache")


def module_paths(cfg: ModelConfig) -> list[str]:
    """Every matmul / cache path a policy rule can match, in model order."""
    out = []
    for i in range(cfg.num_layers):
        out += [f"layers.{i}.attn.{n}" for n in _ATTN]
        out += [f"layers.{i}.mlp.{n}" for n in _MLP]
    return out + ["lm_head"]


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: ModelConfig, policy: Policy, layer: int, *, param_dtype,
                 implementation: str = "auto", rngs: nnx.Rngs):
        p = f"layers.{layer}.mlp"
        h, f = cfg.hidden_size, cfg.intermediate_size
        kw = dict(param_dtype=param_dtype, out_dtype=policy.act_dtype,
                  std=cfg.initializer_range, bias=cfg.mlp_bias, implementation=implementation,
                  rngs=rngs)
        self.gate_proj = Linear(h, f, rule=policy.rule_for(f"{p}.gate_proj"),
                                path=f"{p}.gate_proj", axes=("mlp", "embed"), **kw)
        self.up_proj = Linear(h, f, rule=policy.rule_for(f"{p}.up_proj"), path=f"{p}.up_proj",
                              axes=("mlp", "embed"), **kw)
        self.down_proj = Linear(f, h, rule=policy.rule_for(f"{p}.down_proj"),
                                path=f"{p}.down_proj", axes=("embed", "mlp"), **kw)
        self.act_dtype = policy.act_dtype
        self.rules = cfg.logical_axis_rules

    def __call__(self, x: jax.Array, *, key: Optional[jax.Array] = None) -> jax.Array:
        gate = self.gate_proj(x, key=key).astype(jnp.float32)
        up = self.up_proj(x, key=key).astype(jnp.float32)
        hidden = (jax.nn.silu(gate) * up).astype(self.act_dtype)
        hidden = constrain(hidden, ("act_batch", "act_length", "act_mlp"), self.rules)
        return self.down_proj(hidden, key=key)


class DecoderLayer(nnx.Module):
    """Pre-norm block: ``h = x + attn(norm(x)); y = h + mlp(norm(h))``."""

    def __init__(self, cfg: ModelConfig, policy: Policy, layer: int, *, param_dtype,
                 implementation: str = "auto", rngs: nnx.Rngs):
        kw = dict(eps=cfg.rms_norm_eps, param_dtype=param_dtype, out_dtype=policy.act_dtype,
                  reduction=policy.reduction)
        self.input_norm = RMSNorm(cfg.hidden_size, **kw)
        self.attn = Attention(cfg, policy, layer, param_dtype=param_dtype,
                              implementation=implementation, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, **kw)
        self.mlp = MLP(cfg, policy, layer, param_dtype=param_dtype,
                       implementation=implementation, rngs=rngs)
        self.window = cfg.window(layer)

    def __call__(self, x, cos, sin, masks, *, kv=None, index=None, key=None):
        """Returns (y, kv): with ``kv`` = this layer's cached (k, v) (`KVCache` layouts), the
        new tokens' keys / values are written at slot ``index`` before the queries attend over
        every slot (None: attend within x; returns None)."""
        mask = masks[1] if self.window is not None else masks[0]
        q, k, v = self.attn.project(self.input_norm(x), cos, sin, key=key)
        if kv is not None:
            z, i = jnp.zeros((), jnp.int32), jnp.asarray(index, jnp.int32)
            kv = (jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (z, z, z, i)),
                  jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (z, z, i, z)))
            k, v = kv
        h = x + self.attn.attend(q, k, v, mask, key=key)
        return h + self.mlp(self.post_attn_norm(h), key=key), kv


def _layer_signature(cfg: ModelConfig, policy: Policy, i: int) -> tuple:
    rules = tuple(policy.rule_for(f"layers.{i}.attn.{n}") for n in _ATTN)
    rules += tuple(policy.rule_for(f"layers.{i}.mlp.{n}") for n in _MLP)
    return rules + (cfg.window(i),)


class Llama(nnx.Module):
    """Llama-family causal language model.

    Args:
      cfg: the `ModelConfig`.
      policy: a `Policy` or a named policy (``fp32``, ``bf16``, ``layercast``, ``fp8``,
        ``mxfp4``, ``nvfp4``, ``int8``, ``int4@g128``). Every rule must match some module path
        (`module_paths`); a strict policy raises otherwise.
      param_dtype: storage dtype of the parameters (default: the policy's).
      scan: run the layers as one `jax.lax.scan` (None: ``cfg.scan_layers``, else when there
        are 4 layers or more); only possible when every layer has the same rules and window.
        A call can override it (``model(tokens, scan=False)``).
      row_tile: run every call in fixed tiles of this many rows (the batch padded to a
        multiple), so that a sample's logits do not depend on the batch (`bitscale.repro`'s
        batch-invariant policies); None runs the batch as one.
      implementation: ``auto`` / ``xla`` / ``pallas`` for packed (post-training quantized)
        kernels (`bitscale.nn.quantize_weights`).
      rngs: initializers' randomness (weights ~ N(0, initializer_range), as transformers).

    The policy's ``reduction`` (a fixed-order sum, if any) is handed to every RMSNorm and to the
    softmax of every attention layer.

    Stochastic rounding: layer ``i`` uses ``fold_in(key, i)``, and each matmul folds in a hash of
    its module path without the layer index (`bitscale.nn._layers.key_path`).
    """

    def __init__(self, cfg: ModelConfig, policy: "str | Policy" = "fp32", *,
                 param_dtype=None, scan: Optional[bool] = None, row_tile: Optional[int] = None,
                 implementation: str = "auto", rngs: nnx.Rngs):
        policy = resolve_policy(policy)
        policy.check(module_paths(cfg))
        if row_tile is not None and (isinstance(row_tile, bool) or not isinstance(row_tile, int)
                                     or row_tile < 1):
            raise ValueError(f"Llama: row_tile must be None or a positive integer, got "
                             f"{row_tile!r}")
        pd = jnp.dtype(param_dtype or policy.param_dtype).name
        self.cfg = cfg
        self.policy = policy
        self.row_tile = row_tile
        self.implementation = implementation
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=pd,
                           out_dtype=policy.act_dtype, std=cfg.initializer_range,
                           head_rule=policy.rule_for("lm_head") if cfg.tie_word_embeddings
                           else None, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, policy, i, param_dtype=pd,
                                             implementation=implementation, rngs=rngs)
                                for i in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pd,
                            out_dtype=policy.act_dtype, reduction=policy.reduction)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(
            cfg.hidden_size, cfg.vocab_size, rule=policy.rule_for("lm_head"), path="lm_head",
            axes=("vocab", "embed"), param_dtype=pd, out_dtype="float32",
            std=cfg.initializer_range, implementation=implementation, rngs=rngs)
        sigs = {_layer_signature(cfg, policy, i) for i in range(cfg.num_layers)}
        if scan is None:
            scan = cfg.scan_layers if cfg.scan_layers is not None else cfg.num_layers >= 4
        self.scan = bool(scan and len(sigs) == 1 and cfg.num_layers > 1)

    def padded_rows(self, batch: int) -> int:
        """``batch`` rounded up to a multiple of ``row_tile`` (unchanged without tiling)."""
        return batch if self.row_tile is None else -(-batch // self.row_tile) * self.row_tile

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty `KVCache` in the policy's activation dtype (``padded_rows(batch)`` rows; a
        cache of exactly ``batch`` rows is accepted too)."""
        return init_cache(self.cfg, self.padded_rows(batch), max_len, self.policy.act_dtype)

    def __call__(self, tokens: jax.Array, *, attention_mask: Optional[jax.Array] = None,
                 positions: Optional[jax.Array] = None, cache: Optional[KVCache] = None,
                 key: Optional[jax.Array] = None, scan: Optional[bool] = None):
        """Logits for ``tokens`` (in ``row_tile`` row tiles if the model has one).

        Args: see `forward`; ``scan`` overrides the model's layer scan for this call (False
        runs the layers as a Python loop; True is honoured only if the model can scan).
        """
        scan = self.scan if scan is None else bool(scan and self.scan)
        if self.row_tile is None:
            return self.forward(tokens, attention_mask=attention_mask, positions=positions,
                                cache=cache, key=key, scan=scan)
        return self._tiled(tokens, attention_mask, positions, cache, key, scan)

    def forward(self, tokens: jax.Array, *, attention_mask: Optional[jax.Array] = None,
                positions: Optional[jax.Array] = None, cache: Optional[KVCache] = None,
                key: Optional[jax.Array] = None, scan: bool = False):
        """Logits for ``tokens``, the whole batch at once.

        Args:
          tokens: int32 [batch, length].
          attention_mask: [batch, length], 1 for real tokens and 0 for (left) padding.
          positions: int32 [batch, length]; default: the running count of real tokens (cache
            included), so a left-padded row gets the same positions as the unpadded one.
          cache: a `KVCache`; the tokens are written at ``cache.index`` and the call returns
            ``(logits, new_cache)``.
          key: `jax.random` key for stochastic rounding in the policy (None: nearest).
          scan: run the layers as one `jax.lax.scan` (the model must be able to: ``self.scan``).
        Returns:
          float32 logits [batch, length, vocab] (and the new cache when ``cache`` is given).
        """
        cfg = self.cfg
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be an int array [batch, length], got {tokens.dtype}"
                             f"{list(tokens.shape)}")
        b, t = tokens.shape
        real = (jnp.ones((b, t), bool) if attention_mask is None
                else jnp.asarray(attention_mask).astype(bool))
        if real.shape != (b, t):
            raise ValueError(f"attention_mask shape {real.shape} != tokens shape {(b, t)}")
        if cache is not None:
            if cache.valid.shape[0] != b:
                raise ValueError(f"cache batch {cache.valid.shape[0]} != tokens batch {b}")
            prev = jnp.sum(cache.valid.astype(jnp.int32), axis=-1)
            index = cache.index
            k_valid = jax.lax.dynamic_update_slice(cache.valid, real, (jnp.int32(0), index))
            q_slots = index + jnp.arange(t, dtype=jnp.int32)
        else:
            prev = jnp.zeros((b,), jnp.int32)
            index, k_valid = None, real
            q_slots = jnp.arange(t, dtype=jnp.int32)
        if positions is None:
            positions = prev[:, None] + jnp.cumsum(real.astype(jnp.int32), axis=-1) - 1
            positions = jnp.maximum(positions, 0)
        positions = jnp.asarray(positions, jnp.int32)
        cos, sin = rope_tables(cfg, positions)
        full = make_mask(q_slots, k_valid, positions, None)
        windowed = (make_mask(q_slots, k_valid, positions, cfg.sliding_window)
                    if cfg.sliding_window is not None else full)
        x = self.embed(tokens)
        x = self._act(x)
        run = self._scanned if scan else self._looped
        x, ck, cv = run(x, cos, sin, (full, windowed), cache, index, key)
        x = self.norm(x)
        if self.lm_head is not None:
            logits = self.lm_head(x, key=key)
        else:
            logits = self.embed.attend(x, key=key)
        logits = constrain(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"),
                           cfg.logical_axis_rules)
        if cache is None:
            return logits
        return logits, KVCache(ck, cv, k_valid, index + t)

    def _tiled(self, tokens, attention_mask, positions, cache, key, scan):
        """`forward` over fixed ``[row_tile, length]`` slices of the batch (padded to a multiple
        of the tile) inside a `lax.fori_loop`, reading and writing its rows of the logits and
        of the KV cache with dynamic slices. Every operation the backend compiles (GEMMs,
        reductions, softmax, whichever library they are offloaded to) sees the same shapes
        whatever the batch size, so a sample's logits cannot depend on how many others share
        its batch; with ``row_tile=1`` nor on its position in it. Stochastic rounding draws the
        same bits for every tile.

        References:
          He et al., "Defeating Nondeterminism in LLM Inference", Thinking Machines Lab, 2025.
        """
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got {list(tokens.shape)}")
        b, t = tokens.shape
        bt = self.row_tile
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
            return self.forward(rows(tokens, i), attention_mask=rows(mask, i),
                                positions=None if positions is None else rows(positions, i),
                                cache=tile_cache, key=key, scan=scan)

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

    def _act(self, x):
        return constrain(x, ("act_batch", "act_length", "act_embed"), self.cfg.logical_axis_rules)

    def _looped(self, x, cos, sin, masks, cache, index, key):
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            lkey = None if key is None else jax.random.fold_in(key, i)
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, kv = layer(x, cos, sin, masks, kv=kv, index=index, key=lkey)
            x = self._act(x)
            if cache is not None:
                ks.append(kv[0])
                vs.append(kv[1])
        return x, tuple(ks), tuple(vs)

    def _scanned(self, x, cos, sin, masks, cache, index, key):
        """The layers as one `jax.lax.scan`; a cache is stacked into the scan's inputs and
        unstacked from its outputs (one copy each way per call)."""
        graphdef, _ = nnx.split(self.layers[0])
        stacked = jax.tree.map(lambda *a: jnp.stack(a),
                               *[nnx.state(layer) for layer in self.layers])
        kv_in = None if cache is None else (jnp.stack(cache.k), jnp.stack(cache.v))

        def body(y, xs):
            state, i, kv = xs
            layer = nnx.merge(graphdef, state)
            lkey = None if key is None else jax.random.fold_in(key, i)
            y, kv = layer(y, cos, sin, masks, kv=kv, index=index, key=lkey)
            return self._act(y), kv

        x, kv = jax.lax.scan(body, x, (stacked, jnp.arange(self.cfg.num_layers), kv_in))
        if cache is None:
            return x, (), ()
        n = self.cfg.num_layers
        return x, tuple(kv[0][i] for i in range(n)), tuple(kv[1][i] for i in range(n))


@functools.partial(jax.jit, static_argnums=(0,))
def _apply(graphdef, state, tokens, attention_mask, positions, cache, key):
    model = nnx.merge(graphdef, state)
    return model(tokens, attention_mask=attention_mask, positions=positions, cache=cache, key=key)


def apply(model: Llama, tokens: jax.Array, *, attention_mask=None, positions=None, cache=None,
          key=None):
    """``model(tokens, ...)`` compiled with `jax.jit` (split / merge at the boundary)."""
    graphdef, state = nnx.split(model)
    return _apply(graphdef, state, tokens, attention_mask, positions, cache, key)


_KEEP = object()


def with_policy(model: Llama, policy: "str | Policy", *, param_dtype=None,
                scan: Optional[bool] = None, row_tile=_KEEP,
                implementation: Optional[str] = None) -> Llama:
    """A new `Llama` under ``policy`` holding ``model``'s parameters, cast to the new model's
    storage dtypes (rounded to nearest even: bf16 weights for ``bf16`` / ``layercast``).

    The copy never shares buffers with ``model``. ``scan`` / ``implementation`` default to
    ``model``'s, ``row_tile`` too (pass None to drop tiling); ``param_dtype`` to the policy's.

    Raises:
      ValueError: ``model`` holds packed (post-training quantized) weights, whose state no
        freshly built model has.
    """
    policy = resolve_policy(policy)
    row_tile = model.row_tile if row_tile is _KEEP else row_tile
    abstract = nnx.eval_shape(lambda: Llama(
        model.cfg, policy, param_dtype=param_dtype, scan=model.scan if scan is None else scan,
        row_tile=row_tile, implementation=implementation or model.implementation,
        rngs=nnx.Rngs(0)))
    graphdef, like = nnx.split(abstract)
    params = nnx.state(model)
    if jax.tree.structure(params) != jax.tree.structure(like):
        raise ValueError("with_policy: the model's state does not match a freshly built "
                         f"{policy.name!r} model of the same config (packed weights?)")
    state = jax.tree.map(lambda x, s: jnp.array(x, dtype=s.dtype, copy=True), params, like)
    return nnx.merge(graphdef, state)
