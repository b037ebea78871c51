"""Model mechanics: scanned vs looped layers, stochastic-rounding keys, masks, cache state."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import bitscale.nn as bn
from bitscale.nn._attention import attention_mask
from tests.nn.helpers import load_config_module

TINY = load_config_module("tiny").TINY


def _pair(policy, **cfg_kw):
    """The same weights, once with looped and once with scanned layers."""
    loop = bn.Llama(dataclasses.replace(TINY, scan_layers=False, **cfg_kw), policy,
                    rngs=nnx.Rngs(0))
    scan = bn.Llama(dataclasses.replace(TINY, scan_layers=True, **cfg_kw), policy,
                    rngs=nnx.Rngs(0))
    assert not loop.scan and scan.scan
    return loop, scan


def test_scanned_layers_equal_looped_layers_with_stochastic_rounding():
    sr = bn.Policy("sr", (bn.Rule(bn.PROJ, act="fp8_e4m3", grad="fp8_e5m2",
                                  grad_rounding="stochastic"),))
    loop, scan = _pair(sr)
    toks = jax.random.randint(jax.random.key(0), (2, 32), 0, TINY.vocab_size)

    def grads(model, key):
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(p):
            return jnp.mean(nnx.merge(graphdef, p)(toks, key=key) ** 2)
        return jax.jit(jax.value_and_grad(loss))(params)

    key = jax.random.key(5)
    (l1, g1), (l2, g2) = grads(loop, key), grads(scan, key)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
    for (p, a), (_, b) in zip(nnx.to_flat_state(g1), nnx.to_flat_state(g2)):
        np.testing.assert_allclose(np.asarray(a.get_value()), np.asarray(b.get_value()),
                                   rtol=1e-5, atol=1e-7, err_msg=str(p))


def test_scanned_decode_equals_full_forward():
    _, scan = _pair("fp32")
    toks = jax.random.randint(jax.random.key(1), (2, 10), 0, TINY.vocab_size)
    full = np.asarray(bn.apply(scan, toks))
    cache = scan.init_cache(2, 12)
    y0, cache = bn.apply(scan, toks[:, :6], cache=cache)
    y1, cache = bn.apply(scan, toks[:, 6:], cache=cache)
    np.testing.assert_allclose(np.concatenate([y0, y1], 1), full, rtol=0, atol=1e-5)
    assert len(cache.k) == len(cache.v) == TINY.num_layers
    assert all(a.shape == (2, TINY.num_kv_heads, TINY.head_dim, 12) for a in cache.k)
    assert all(a.shape == (2, TINY.num_kv_heads, 12, TINY.head_dim) for a in cache.v)
    assert int(cache.index) == 10


def test_layers_with_different_rules_are_looped():
    pol = bn.Policy("first", (bn.Rule(r"layers\.0\.mlp\..*", weight="int8@channel"),))
    m = bn.Llama(dataclasses.replace(TINY, scan_layers=True), pol, rngs=nnx.Rngs(0))
    assert not m.scan
    assert m.layers[0].mlp.up_proj.rule.weight is not None
    assert m.layers[1].mlp.up_proj.rule.weight is None


def test_stochastic_rounding_key_changes_only_gradients():
    m = bn.Llama(TINY, "mxfp4", rngs=nnx.Rngs(0))
    toks = jax.random.randint(jax.random.key(2), (2, 32), 0, TINY.vocab_size)
    y1 = bn.apply(m, toks, key=jax.random.key(1))
    y2 = bn.apply(m, toks, key=jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))  # forward rounds to nearest


def test_attention_mask():
    valid = jnp.array([[True] * 6, [False, False, True, True, True, True]])
    pos = jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), -1) - 1, 0)
    m = np.asarray(attention_mask(jnp.arange(6, dtype=jnp.int32), valid, pos, None))
    np.testing.assert_array_equal(m[0], np.tril(np.ones((6, 6), bool)))
    assert not m[1, :, :2].any() and m[1, 5, 2:].all() and not m[1, 2, 3:].any()
    w = np.asarray(attention_mask(jnp.arange(6, dtype=jnp.int32), valid, pos, 2))
    assert w[0, 5].tolist() == [False] * 4 + [True] * 2
    assert w[1, 5].tolist() == [False] * 4 + [True] * 2  # window counts real tokens


def test_bf16_policy_dtypes():
    m = bn.Llama(TINY, "bf16", rngs=nnx.Rngs(0))
    assert m.layers[0].attn.q_proj.kernel.get_value().dtype == jnp.bfloat16
    y = bn.apply(m, jnp.zeros((1, 4), jnp.int32))
    assert y.dtype == jnp.float32
    assert m.init_cache(1, 8).k[0].dtype == jnp.bfloat16


def test_model_paths_cover_every_matmul():
    paths = bn.module_paths(TINY)
    assert len(paths) == TINY.num_layers * 10 + 1
    m = bn.Llama(TINY, "fp32", rngs=nnx.Rngs(0))
    linear_paths = {mod.path for _, mod in nnx.iter_modules(m) if isinstance(mod, bn.Linear)}
    assert linear_paths <= set(paths) and "lm_head" in linear_paths


def test_policy_is_a_static_hashable_attribute():
    m = bn.Llama(TINY, "fp8", rngs=nnx.Rngs(0))
    graphdef, _ = nnx.split(m)
    hash(graphdef)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.policy.name = "x"
