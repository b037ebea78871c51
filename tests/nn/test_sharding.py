"""Sharding: logical axis rules, and on 8 virtual CPU devices a sharded forward pass equal to the
single-device one with parameters placed as the rules say (run in a subprocess: the device count
must be set before jax is imported)."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest
from jax.sharding import PartitionSpec as P

import bitscale.nn as bn
from tests.nn.helpers import ROOT

RULES = bn.DEFAULT_AXIS_RULES


def test_logical_to_spec():
    assert bn.logical_to_spec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
    assert bn.logical_to_spec(("act_batch", "act_length", "act_embed"), RULES) == P(
        ("data", "fsdp"), None, None)
    # a mesh axis is used once; axes missing from the mesh are dropped
    assert bn.logical_to_spec(("heads", "kv_heads"), RULES) == P("tensor", None)
    assert bn.logical_to_spec(("act_batch", "mlp"), RULES, ("data", "tensor")) == P(
        "data", "tensor")
    with pytest.raises(ValueError, match="logical axis 'rows' has no sharding rule"):
        bn.logical_to_spec(("rows",), RULES)


def test_constrain_is_a_no_op_without_mesh():
    x = jax.numpy.ones((4, 8))
    assert bn.constrain(x, ("act_batch", "act_embed"), RULES) is x


SCRIPT = textwrap.dedent("""
    import os, dataclasses, json
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    import bitscale.nn as bn
    assert len(jax.devices()) == 8, jax.devices()
    cfg = bn.ModelConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=2,
                         num_heads=4, num_kv_heads=2, initializer_range=0.1)
    toks = jax.random.randint(jax.random.key(0), (4, 16), 0, 256)
    mask = jnp.ones((4, 16), jnp.int32).at[1, :5].set(0)
    out = {}
    for policy in ("fp32", "fp8"):
        model = bn.Llama(cfg, policy, rngs=nnx.Rngs(0))
        single = np.asarray(bn.apply(model, toks, attention_mask=mask))
        mesh = bn.make_mesh(data=2, fsdp=2, tensor=2)
        bn.shard_model(model, mesh)
        specs = {
            "q": model.layers[0].attn.q_proj.kernel.get_value().sharding.spec,
            "o": model.layers[1].attn.o_proj.kernel.get_value().sharding.spec,
            "down": model.layers[0].mlp.down_proj.kernel.get_value().sharding.spec,
            "embed": model.embed.embedding.get_value().sharding.spec,
            "head": model.lm_head.kernel.get_value().sharding.spec,
            "norm": model.norm.scale.get_value().sharding.spec,
        }
        up = model.layers[0].mlp.up_proj.kernel.get_value()
        shard_shape = up.addressable_shards[0].data.shape
        with jax.set_mesh(mesh):
            sharded = bn.apply(model, toks, attention_mask=mask)
        out[policy] = dict(
            diff=float(np.abs(np.asarray(sharded) - single).max()),
            scale=float(np.abs(single).max()),
            specs={k: str(v) for k, v in specs.items()},
            shard_shape=list(shard_shape),
            out_spec=str(sharded.sharding.spec),
        )
    print("RESULT", json.dumps(out))
""")


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    script = tmp_path_factory.mktemp("shard") / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("policy", ["fp32", "fp8"])
def test_sharded_forward_equals_single_device(sharded_run, policy):
    r = sharded_run[policy]
    assert r["scale"] > 0.1
    # fp32: only the summation order of the sharded contractions differs. fp8: such a last-bit
    # difference can move an activation across an E4M3 rounding boundary (one fp8 step).
    tol = 1e-5 if policy == "fp32" else 1e-3
    assert r["diff"] <= tol * max(1.0, r["scale"]), r


def test_parameters_are_sharded_as_the_rules_say(sharded_run):
    r = sharded_run["fp32"]
    # kernels are [out, in]: q (heads, embed), o (embed, heads), down (embed, mlp), head (vocab,
    # embed); default rules: heads/mlp/vocab -> tensor, embed -> fsdp
    want = {"q": P("tensor", "fsdp"), "o": P("fsdp", "tensor"), "down": P("fsdp", "tensor"),
            "embed": P("tensor", "fsdp"), "head": P("tensor", "fsdp"), "norm": P(None)}
    for k, v in want.items():
        assert r["specs"][k] in (str(v), str(P(*[a for a in v if a is not None]))), (k, r)
    assert r["shard_shape"] == [128, 64]  # [mlp/tensor, embed/fsdp] of a [256, 128] kernel
    assert "data" in r["out_spec"] and "fsdp" in r["out_spec"]


def test_param_specs_and_indivisible_dimensions():
    from flax import nnx
    cfg = bn.ModelConfig(vocab_size=250, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2)
    model = bn.Llama(cfg, "fp32", rngs=nnx.Rngs(0))
    specs = bn.param_specs(model)
    assert specs["layers.0.mlp.up_proj.kernel"] == P("tensor", "fsdp")
    assert specs["layers.1.attn.o_proj.kernel"] == P("fsdp", "tensor")
    assert specs["embed.embedding"] == P("tensor", "fsdp")
    assert specs["norm.scale"] == P(None)
    mesh = jax.sharding.AbstractMesh((1, 2, 4), bn.MESH_AXES)
    with pytest.raises(ValueError, match=r"cannot shard parameter embed\.embedding of shape "
                                         r"\(250, 64\).*'vocab'.*does not divide 250"):
        bn.param_specs(model, mesh)
    custom = dict(bn.DEFAULT_AXIS_RULES, vocab=None)
    assert bn.param_specs(model, mesh, tuple(custom.items()))["embed.embedding"] == P(None, "fsdp")
