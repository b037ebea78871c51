"""Policies with reduction orders, LayerCast, fp16 and the nn hooks they use."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import bitscale.nn as bn
from bitscale import repro
from bitscale.config_file import load_module

_tiny = load_module(pathlib.Path(__file__).resolve().parents[2] / "configs" / "tiny.py")
TINY = _tiny.TINY
SMALL = dataclasses.replace(TINY, hidden_size=64, intermediate_size=128, num_layers=1,
                            vocab_size=128)


@pytest.fixture(scope="module")
def fp32_model():
    return bn.Llama(TINY, "fp32", rngs=nnx.Rngs(0))


def test_layercast_equals_fp32_on_bf16_rounded_weights(fp32_model):
    """LayerCast (bf16 weights, fp32 compute) == the fp32 model on weights rounded to bf16."""
    layercast = repro.with_policy(fp32_model, "layercast")
    rounded = jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32)),
        nnx.state(fp32_model, nnx.Param))
    reference = bn.Llama(TINY, "fp32", rngs=nnx.Rngs(1))
    nnx.update(reference, rounded)
    for a, b in zip(jax.tree.leaves(nnx.state(layercast, nnx.Param)), jax.tree.leaves(rounded)):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))
    toks = jax.random.randint(jax.random.key(0), (2, 16), 0, TINY.vocab_size)
    lc, ref = np.asarray(bn.apply(layercast, toks)), np.asarray(bn.apply(reference, toks))
    np.testing.assert_array_equal(lc, ref)
    assert not np.array_equal(lc, np.asarray(bn.apply(fp32_model, toks)))  # rounding mattered


def test_with_reduction_reaches_every_matmul_and_stays_close():
    small = bn.Llama(SMALL, "fp32", rngs=nnx.Rngs(0))
    policy = repro.with_reduction("fp8", "split_k:4")
    assert policy.rules[-1].pattern == ".*" and policy.rule_for("layers.0.attn.qk").reduction
    emulated = repro.with_policy(small, repro.with_reduction("fp32", "pairwise"))
    attn = emulated.layers[0].attn
    hooks = {attn.qk_rule.reduction, attn.pv_rule.reduction, attn.q_proj.rule.reduction,
             emulated.lm_head.rule.reduction}
    assert hooks == {repro.Reduction("pairwise")}
    toks = jax.random.randint(jax.random.key(1), (2, 8), 0, SMALL.vocab_size)
    a, b = np.asarray(bn.apply(emulated, toks)), np.asarray(bn.apply(small, toks))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert not np.array_equal(a, b)
    # the hook also runs under a quantized (custom-VJP) rule, forward and backward
    rule = bn.Rule(".*", weight="fp8_e4m3", act="fp8_e4m3", reduction=repro.Reduction("pairwise"))
    x = jax.random.normal(jax.random.key(2), (3, 32))
    w = jax.random.normal(jax.random.key(3), (5, 32))
    dims = (((1,), (1,)), ((), ()))
    y, g = jax.jit(jax.value_and_grad(lambda x: bn.qdot(x, w, dims, rule).sum()))(x)
    y0, g0 = jax.jit(jax.value_and_grad(
        lambda x: bn.qdot(x, w, dims, dataclasses.replace(rule, reduction=None)).sum()))(x)
    np.testing.assert_allclose(y, y0, rtol=1e-5)
    np.testing.assert_allclose(g, g0, rtol=1e-5, atol=1e-6)


def test_fp16_policy_and_names():
    fp16 = bn.resolve_policy("fp16")
    assert (fp16.param_dtype, fp16.act_dtype, fp16.rules[0].compute_dtype) == ("float16",) * 3
    model = repro.make_model(SMALL, "fp16", rngs=nnx.Rngs(0))
    logits = bn.apply(model, jnp.ones((1, 4), jnp.int32))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert bn.resolve_policy("layercast") is bn.NAMED_POLICIES["layercast"]
    with pytest.raises(ValueError, match="valid names.*fp16.*_batch_invariant"):
        bn.resolve_policy("fp12")


def test_reduction_hooks_are_validated():
    with pytest.raises(TypeError, match="dot_general"):
        bn.Rule(".*", reduction="pairwise")
    with pytest.raises(TypeError, match="sum"):
        bn.Policy("p", reduction=repro.RowTiledDot())
    with pytest.raises(TypeError, match="hashable"):
        bn.Policy("p", reduction=type("H", (), {"sum": lambda s, x, a: x, "__hash__": None})())
    with pytest.raises(ValueError, match="valid orders"):
        repro.Reduction("tree")
    assert str(repro.Reduction("split_k:2", "bfloat16")) == "split_k:2@bf16"


def test_fixed_order_norm_and_softmax_sums():
    """RMSNorm / softmax with a fixed-order sum agree with the default ones to float32 noise."""
    x = jax.random.normal(jax.random.key(0), (4, 7, 64))
    norm = bn.RMSNorm(64, eps=1e-6)
    fixed_norm = bn.RMSNorm(64, eps=1e-6, reduction=repro.BatchInvariance())

    @jax.jit
    def both(x):
        return (bn.softmax(x, repro.BatchInvariance()), jax.nn.softmax(x, -1), fixed_norm(x),
                norm(x), repro.BatchInvariance().sum(x, -1), x.sum(-1))

    s1, s0, n1, n0, f1, f0 = both(x)
    np.testing.assert_allclose(s1, s0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(n1, n0, rtol=1e-6)
    np.testing.assert_allclose(f1, f0, rtol=1e-5, atol=1e-5)
