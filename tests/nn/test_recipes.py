"""The 4-bit training recipes as named policies: resolvable by name, structured as their papers
say, and a tiny model trains under each (finite loss, gradients aligned with float32's)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import bitscale.nn as bn
from bitscale.numerics.specs import QuantSpec
# One decoder layer whose every projection's N and K are multiples of 128 (Quartet II rotates
# dX's operands along N in 128-blocks; the tiny config's 64-wide k/v projections are not).
TINY = bn.ModelConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_layers=1,
                      num_heads=4, num_kv_heads=4, max_position_embeddings=256)

RECIPES = ("quest_w4a4", "quartet_mxfp4", "nvfp4_recipe", "quartet2_nvfp4", "nvint4_rotated")


def _proj_rule(name: str) -> bn.Rule:
    return bn.resolve_policy(name).rule_for("layers.0.mlp.up_proj")


def test_recipes_are_named_policies():
    for name in RECIPES:
        assert name in bn.NAMED_POLICIES and name in bn.policy_names()
        assert bn.resolve_policy(name).name == name
        # lm head and attention products stay float32
        assert not bn.resolve_policy(name).rule_for("lm_head").quantized
        assert not bn.resolve_policy(name).rule_for("layers.0.attn.qk").quantized
    with pytest.raises(ValueError, match="quartet2_nvfp4"):
        bn.resolve_policy("quartet3_nvfp4")


def test_recipe_structure():
    quest = _proj_rule("quest_w4a4")
    assert quest.act.clip == "rms" and quest.rotation == bn.Rotation(128, "none")
    assert quest.grad is None  # QuEST quantizes the forward pass only
    quartet = _proj_rule("quartet_mxfp4")
    assert quartet.rotation.size == 32 and quartet.dgrad_rotation.signs == "per_call"
    assert quartet.grad_rounding == quartet.bwd_rounding == "stochastic"
    nv = _proj_rule("nvfp4_recipe")
    assert isinstance(nv.weight, QuantSpec) and nv.weight.granularity == "block2d"
    assert nv.wgrad_rotation == bn.Rotation(16, "fixed") and nv.dgrad_rotation is None
    assert nv.wgrad_act == "original" and nv.bwd_rounding == "nearest"
    q2 = _proj_rule("quartet2_nvfp4")
    assert q2.grad_rounding == q2.bwd_rounding == "eden"
    assert q2.dgrad_rotation.size == q2.wgrad_rotation.size == 128
    assert "int4" in _proj_rule("nvint4_rotated").weight.elem.name


@functools.partial(jax.jit, static_argnums=(0,))
def _loss_and_grads(policy: str, tokens, key):
    model = bn.Llama(TINY, policy, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p):
        logits = nnx.merge(graphdef, p)(tokens[:, :-1], key=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    return jax.value_and_grad(loss)(params)


# The two recipes that use every mechanism between them (forward and backward rotations, RMS
# clip, headroom, SR, 4/6, MS-EDEN); all five lower forward + backward in tests/test_lowering.py
# and train in `python -m bitscale.studies.recipes`.
@pytest.mark.parametrize("name", ["quartet_mxfp4", "quartet2_nvfp4"])
def test_recipe_trains_the_tiny_model(name):
    tokens = jax.random.randint(jax.random.key(0), (2, 65), 0, TINY.vocab_size)
    key = jax.random.key(1)
    loss, grads = _loss_and_grads(name, tokens, key)
    ref_loss, ref_grads = _loss_and_grads("fp32", tokens, key)
    assert np.isfinite(loss) and abs(float(loss) - float(ref_loss)) < 0.1
    g = jnp.concatenate([x.ravel() for x in jax.tree.leaves(grads)])
    r = jnp.concatenate([x.ravel() for x in jax.tree.leaves(ref_grads)])
    assert bool(jnp.all(jnp.isfinite(g)))
    cos = float(g @ r / (jnp.linalg.norm(g) * jnp.linalg.norm(r)))
    assert cos > 0.8, (name, cos)
