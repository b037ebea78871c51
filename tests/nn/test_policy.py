"""Precision policies: forward and backward of the quantized dot against references built directly
from the numerics core (`bitscale.fake_quant` and `jax.vjp`), named policies, LayerCast."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import bitscale as bs
import bitscale.nn as bn
from tests.nn.helpers import load_config_module

DIMS = (((2,), (0,)), ((), ()))
fake_quant = jax.jit(bs.fake_quant, static_argnames=("spec", "axis", "rounding", "estimator"))
PATH = "layers.0.mlp.up_proj"
KEY = jax.random.key(42)

RULES = {
    "fp8": bn.Rule(PATH, weight="fp8_e4m3@channel", act="fp8_e4m3@channel",
                   grad="fp8_e5m2@channel"),
    "mxfp4_sr": bn.Rule(PATH, weight="mxfp4", act="mxfp4", grad="mxfp4",
                        grad_rounding="stochastic"),
    "nvfp4_all": bn.Rule(PATH, weight="nvfp4", act="nvfp4", grad="nvfp4", grad_lhs="mxfp8_e4m3",
                         grad_rhs="int8@channel", grad_rounding="stochastic",
                         wgrad_act="original"),
    "int8_trust_bf16": bn.Rule(PATH, weight="int8@channel", act="int8@channel",
                               estimator="trust", compute_dtype="bfloat16",
                               fwd_rounding="stochastic"),
    "e4m3_clipped": bn.Rule(PATH, weight="fp8_e4m3", act="fp8_e4m3", grad="fp8_e5m2",
                            estimator="clipped_ste"),
    "int4_weight_only": bn.Rule(PATH, weight="int4@g128"),
}


def _data(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k1, (3, 8, 128)) * 300.0  # large enough to clip an unscaled E4M3 cast
    w = jax.random.normal(k2, (128, 64)) * 0.05
    g = jax.random.normal(k3, (3, 8, 64))
    return x, w, g


def _reference(x, w, g, rule, key):
    """Forward and gradients of the rule, hand-built with bs.fake_quant and jax.vjp."""
    def rnd(r):
        return r if key is not None else "nearest"
    kd = (lambda s: bn.slot_key(key, PATH, s)) if key is not None else (lambda s: None)

    def fq(a, spec, axis, rounding, slot, est="ste"):
        if spec is None:
            return a
        r = rnd(rounding)
        return bs.fake_quant(a, spec, axis=axis, rounding=r,
                             key=kd(slot) if r == "stochastic" else None, estimator=est)

    xq, x_vjp = jax.vjp(lambda a: fq(a, rule.act, -1, rule.fwd_rounding, 0, rule.estimator), x)
    wq, w_vjp = jax.vjp(lambda b: fq(b, rule.weight, 0, rule.fwd_rounding, 1, rule.estimator), w)
    cd = jnp.dtype(rule.compute_dtype)

    def dot(a, b):
        return jnp.einsum("bti,io->bto", a.astype(cd), b.astype(cd),
                          preferred_element_type=jnp.float32)

    y = dot(xq, wq)
    gq = fq(g, rule.grad, -1, rule.grad_rounding, 2)
    a = x if rule.wgrad_act == "original" else xq
    _, dot_vjp = jax.vjp(dot, a, wq)
    dx, dw = dot_vjp(gq)
    (dx,), (dw,) = x_vjp(dx), w_vjp(dw)
    dx = fq(dx, rule.grad_lhs, -1, rule.grad_rounding, 3)
    dw = fq(dw, rule.grad_rhs, 0, rule.grad_rounding, 4)
    return y, dx, dw


@functools.partial(jax.jit, static_argnames=("rule", "with_key"))
def _ours(x, w, g, key, rule, with_key):
    y, vjp = jax.vjp(lambda a, b: bn.qdot(a, b, DIMS, rule, key=key if with_key else None,
                                           path=PATH), x, w)
    return (y, *vjp(g))


@functools.partial(jax.jit, static_argnames=("rule", "with_key"))
def _ref(x, w, g, key, rule, with_key):
    return _reference(x, w, g, rule, key if with_key else None)


@pytest.mark.parametrize("name", sorted(RULES))
def test_forward_and_backward_match_hand_built_vjp(name):
    rule = RULES[name]
    x, w, g = _data()
    ours = _ours(x, w, g, KEY, rule=rule, with_key=True)
    ref = _ref(x, w, g, KEY, rule=rule, with_key=True)
    for a, b, what in zip(ours, ref, ("y", "dx", "dw")):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6,
                                   err_msg=f"{name}: {what}")
    # ...and quantization really happened: unlike the plain float32 dot
    y32, vjp32 = jax.vjp(lambda a, b: jnp.einsum("bti,io->bto", a, b), x, w)
    dx32, dw32 = vjp32(g)
    assert not np.allclose(ours[0], y32, rtol=1e-4, atol=1e-4)
    if rule.act is not None or rule.grad is not None:
        assert not np.allclose(ours[2], dw32, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:.*without key")
def test_forward_is_the_matmul_of_fake_quantized_operands():
    """Independent of any VJP: y = fake_quant(x) @ fake_quant(w) along the contraction axes."""
    x, w, _ = _data(1)
    for name in ("fp8", "mxfp4_sr", "int4_weight_only"):
        rule = RULES[name]
        xq = fake_quant(x, rule.act, axis=-1) if rule.act is not None else x
        wq = fake_quant(w, rule.weight, axis=0)
        want = np.einsum("bti,io->bto", np.asarray(xq, np.float64), np.asarray(wq, np.float64))
        got = np.asarray(_ours(x, w, x[..., :64], KEY, rule=rule, with_key=False)[0])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_ste_backward_closed_form():
    """Plain STE with a quantized output gradient: dX = Q(g) Wq^T, dW = Xq^T Q(g)."""
    rule = RULES["fp8"]
    x, w, g = _data(2)
    _, dx, dw = _ours(x, w, g, KEY, rule=rule, with_key=False)
    xq = np.asarray(fake_quant(x, "fp8_e4m3@channel", axis=-1), np.float64)
    wq = np.asarray(fake_quant(w, "fp8_e4m3@channel", axis=0), np.float64)
    gq = np.asarray(fake_quant(g, "fp8_e5m2@channel", axis=-1), np.float64)
    np.testing.assert_allclose(np.asarray(dx), np.einsum("bto,io->bti", gq, wq), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(dw), np.einsum("bti,bto->io", xq, gq), rtol=1e-5,
                               atol=1e-2)


def test_wgrad_activation_choice_is_explicit():
    x, w, g = _data(3)
    q = bn.Rule(PATH, weight="mxfp4", act="mxfp4")
    o = bn.Rule(PATH, weight="mxfp4", act="mxfp4", wgrad_act="original")
    _, dxq, dwq = _ours(x, w, g, KEY, rule=q, with_key=False)
    _, dxo, dwo = _ours(x, w, g, KEY, rule=o, with_key=False)
    np.testing.assert_array_equal(np.asarray(dxq), np.asarray(dxo))
    np.testing.assert_allclose(np.asarray(dwo), np.einsum("bti,bto->io", np.asarray(x, np.float64),
                                                          np.asarray(g, np.float64)),
                               rtol=1e-5, atol=1e-2)
    assert not np.allclose(np.asarray(dwq), np.asarray(dwo), rtol=1e-3)


def test_clipped_ste_masks_clipped_elements():
    x, w, g = _data(4)
    _, dx, _ = _ours(x, w, g, KEY, rule=RULES["e4m3_clipped"], with_key=False)
    clipped = np.abs(np.asarray(x)) > 448
    assert clipped.any() and (~clipped).any()
    assert (np.asarray(dx)[clipped] == 0).all()
    assert (np.asarray(dx)[~clipped] != 0).mean() > 0.99


def test_stochastic_rounding_needs_a_key_else_nearest():
    rule = RULES["mxfp4_sr"]
    nearest = bn.Rule(PATH, weight="mxfp4", act="mxfp4", grad="mxfp4")
    x, w, g = _data(5)
    with pytest.warns(UserWarning, match="without key"):  # warned when the backward is traced
        jax.jit(jax.grad(lambda a, b: bn.qdot(a, b, DIMS, rule, path=PATH).sum())).lower(x, w)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inference: only gradients round stochastically
        jax.jit(lambda a, b: bn.qdot(a, b, DIMS, rule, path=PATH)).lower(x, w)
    no_key = _ours(x, w, g, KEY, rule=rule, with_key=False)
    ref = _ours(x, w, g, KEY, rule=nearest, with_key=False)
    for a, b in zip(no_key, ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    k1 = _ours(x, w, g, jax.random.key(1), rule=rule, with_key=True)
    k1b = _ours(x, w, g, jax.random.key(1), rule=rule, with_key=True)
    k2 = _ours(x, w, g, jax.random.key(2), rule=rule, with_key=True)
    np.testing.assert_array_equal(np.asarray(k1[1]), np.asarray(k1b[1]))
    assert not np.array_equal(np.asarray(k1[1]), np.asarray(k2[1]))
    np.testing.assert_array_equal(np.asarray(k1[0]), np.asarray(k2[0]))  # forward is nearest


def test_named_policies():
    assert set(bn.NAMED_POLICIES) == {"fp32", "bf16", "bf16_mixed", "fp16", "layercast", "fp8",
                                      "mxfp4", "nvfp4", "int8", "int4@g128", "quest_w4a4",
                                      "quartet_mxfp4", "nvfp4_recipe", "quartet2_nvfp4",
                                      "nvint4_rotated"}
    mixed = bn.resolve_policy("bf16_mixed")
    assert (mixed.param_dtype, mixed.act_dtype) == ("float32", "bfloat16")
    assert mixed.rule_for("layers.0.mlp.up_proj").compute_dtype == "bfloat16"
    fp8 = bn.resolve_policy("fp8")
    r = fp8.rule_for("layers.3.attn.q_proj")
    assert r.weight.name == "fp8_e4m3@channel" and r.grad.name == "fp8_e5m2@channel"
    assert not fp8.rule_for("lm_head").quantized
    assert not fp8.rule_for("layers.0.attn.qk").quantized
    mx = bn.resolve_policy("mxfp4")
    assert mx.rule_for("layers.0.mlp.down_proj").grad_rounding == "stochastic"
    assert bn.resolve_policy("int4@g128").rule_for("layers.1.mlp.up_proj").weight_only
    lc = bn.resolve_policy("layercast")
    assert (lc.param_dtype, lc.act_dtype, lc.rules[0].compute_dtype) == (
        "bfloat16", "float32", "float32")
    assert hash(fp8) == hash(bn.resolve_policy("fp8"))


@pytest.fixture(scope="module")
def tiny():
    return load_config_module("tiny")


def _model(cfg, policy, seed=0):
    m = bn.Llama(cfg, policy, rngs=nnx.Rngs(seed))
    # larger weights so that bf16 rounding is visible in the logits
    for _, v in nnx.to_flat_state(nnx.state(m, nnx.Param)):
        a = v.get_value()
        if a.ndim == 2:
            v.set_value((a.astype(jnp.float32) * 5.0).astype(a.dtype))
    return m


def test_layercast_is_f32_compute_on_bf16_weights(tiny):
    cfg = tiny.TINY
    toks = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    lc = _model(cfg, "layercast")
    assert lc.layers[0].mlp.up_proj.kernel.get_value().dtype == jnp.bfloat16
    # reference: the fp32 policy on the same weights, rounded to bf16 and widened back
    ref = bn.Llama(cfg, "fp32", rngs=nnx.Rngs(1))
    nnx.update(ref, jax.tree.map(lambda a: a.astype(jnp.float32), nnx.state(lc, nnx.Param)))
    bf = bn.Llama(cfg, "bf16", rngs=nnx.Rngs(1))
    nnx.update(bf, nnx.state(lc, nnx.Param))
    y_lc = np.asarray(bn.apply(lc, toks))
    y_ref = np.asarray(bn.apply(ref, toks))
    y_bf = np.asarray(bn.apply(bf, toks))
    np.testing.assert_allclose(y_lc, y_ref, rtol=0, atol=1e-6)
    assert np.abs(y_bf - y_lc).max() > 100 * max(np.abs(y_lc - y_ref).max(), 1e-6)


def test_policy_from_config_file_trains(tiny):
    """A user policy written in configs/tiny.py drives the model with no model-code change."""
    pol = tiny.W4A4_MLP_FP8_ATTN
    cfg = tiny.get_config()
    m = bn.Llama(cfg.model, pol, rngs=nnx.Rngs(cfg.seed))
    assert m.layers[1].mlp.down_proj.rule.weight.name == "mxfp4"
    assert m.layers[1].attn.o_proj.rule.act.name == "fp8_e4m3@channel"
    assert not m.lm_head.rule.quantized
    graphdef, state = nnx.split(m, nnx.Param)
    toks = jnp.zeros((2, 32), jnp.int32)

    def loss(p, key):
        return jnp.mean(nnx.merge(graphdef, p)(toks, key=key) ** 2)

    grad = jax.jit(jax.grad(loss))
    g1 = grad(state, jax.random.key(0))
    g2 = grad(state, jax.random.key(1))
    a = g1["layers"][0]["mlp"]["up_proj"]["kernel"].get_value()
    b = g2["layers"][0]["mlp"]["up_proj"]["kernel"].get_value()
    assert np.isfinite(np.asarray(a)).all()
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # stochastic gradient rounding


def test_attention_products_and_kv_cache_rules(tiny):
    """qk / pv / kv_cache rules take effect, and decoding stays equal to the full forward."""
    cfg = tiny.TINY
    pol = bn.Policy("attn8", (bn.Rule(r".*\.qk", act="int8@channel", weight="int8@channel"),
                              bn.Rule(r".*\.pv", act="fp8_e4m3", weight="fp8_e4m3"),
                              bn.Rule(r".*\.kv_cache", act="int8@channel")))
    q = bn.Llama(cfg, pol, rngs=nnx.Rngs(0))
    f = bn.Llama(cfg, "fp32", rngs=nnx.Rngs(0))
    toks = jax.random.randint(jax.random.key(3), (2, 12), 0, cfg.vocab_size)
    yq, yf = np.asarray(bn.apply(q, toks)), np.asarray(bn.apply(f, toks))
    assert 0 < np.abs(yq - yf).max() < 0.1 * np.abs(yf).max()
    cache = q.init_cache(2, 12)
    y0, cache = bn.apply(q, toks[:, :9], cache=cache)
    y1, cache = bn.apply(q, toks[:, 9:], cache=cache)
    np.testing.assert_allclose(np.concatenate([y0, y1], 1), yq, rtol=0, atol=1e-5)


def test_linear_layer_of_a_named_policy(tiny):
    """A projection of the `mxfp4` model: W [out, in] quantized along `in`, x along its last
    axis, dY stochastically rounded with the key folded with the index-free module path."""
    m = bn.Llama(tiny.TINY, "mxfp4", rngs=nnx.Rngs(0))
    lin = m.layers[1].mlp.up_proj
    assert lin.path == "layers.1.mlp.up_proj"
    w = lin.kernel.get_value()
    assert w.shape == (tiny.TINY.intermediate_size, tiny.TINY.hidden_size)
    x, _, _ = _data(6)
    g = jax.random.normal(jax.random.key(9), (3, 8, w.shape[0]))
    key = jax.random.key(4)
    graphdef, state = nnx.split(lin)

    @jax.jit
    def ours(x, state):
        return jax.vjp(lambda a, s: nnx.merge(graphdef, s)(a, key=key), x, state)[1](g)

    dx, dstate = ours(x, state)
    kd = lambda s: bn.slot_key(key, "layers.mlp.up_proj", s)  # noqa: E731
    xq = fake_quant(x, "mxfp4", axis=-1)
    wq = fake_quant(w, "mxfp4", axis=1)
    gq = jax.jit(lambda a: bs.fake_quant(a, "mxfp4", rounding="stochastic", key=kd(2)))(g)
    dx_ref = np.einsum("bto,oi->bti", np.asarray(gq, np.float64), np.asarray(wq, np.float64))
    dw_ref = np.einsum("bto,bti->oi", np.asarray(gq, np.float64), np.asarray(xq, np.float64))
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dstate["kernel"].get_value()), dw_ref, rtol=1e-5,
                               atol=1e-3)


def test_register_policy():
    pol = bn.Policy("test_registered_w8", (bn.Rule(bn.PROJ, weight="int8@channel"),
                                           bn.Rule("lm_head")))
    assert bn.register_policy(pol) is pol
    assert bn.register_policy(bn.Policy(pol.name, pol.rules)) is not None  # equal: no-op
    assert bn.resolve_policy("test_registered_w8") is not None
    assert "test_registered_w8" in bn.policy_names()
    assert "test_registered_w8" not in bn.NAMED_POLICIES
    other = bn.Policy("test_registered_w8", (bn.Rule(".*"),))
    with pytest.raises(ValueError, match="different policy named 'test_registered_w8'"):
        bn.register_policy(other)
    bn.register_policy(other, replace=True)
    assert bn.resolve_policy("test_registered_w8") == other
    with pytest.raises(ValueError, match="built-in policy name"):
        bn.register_policy(bn.Policy("fp8", (bn.Rule(".*"),)))
    with pytest.raises(TypeError, match="expected a bitscale.nn.Policy"):
        bn.register_policy("fp8")
    with pytest.raises(ValueError, match=r"unknown precision policy 'fp9'.*register_policy"):
        bn.resolve_policy("fp9")


def _logits_loss_grads(cfg, policy, toks, key) -> list:
    """[logits, loss, *parameter gradients] of `_model` under ``policy`` (one jitted step)."""
    graphdef, params = nnx.split(_model(cfg, policy), nnx.Param)

    def loss(p):
        logits = nnx.merge(graphdef, p)(toks, key=key)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return [logits, value, *jax.tree.leaves(grads)]


@pytest.mark.parametrize("name", ["fp8", "mxfp4"])
def test_pallas_fake_quant_kernels_give_the_xla_model(tiny, name):
    """implementation='pallas' (the fused fake-quant kernels, interpreted on the CPU) gives the
    XLA path's logits bit for bit and its gradients up to the order of a dot's sum, stochastic
    gradient rounding included."""
    cfg = tiny.TINY
    toks = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    key = jax.random.key(7)
    xla = bn.resolve_policy(name).with_implementation("xla")
    kernels = bn.resolve_policy(name).with_implementation("pallas", interpret=True)
    assert {r.implementation for r in kernels.rules} == {"pallas"}

    got, want = (_logits_loss_grads(cfg, p, toks, key) for p in (kernels, xla))
    for a, b in zip(got[:2], want[:2]):  # logits and loss: bit for bit
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Gradients: every fake-quantized operand and gradient is bit-identical (the kernels equal
    # bs.fake_quant), but XLA:CPU may order a backward dot's sum differently when its operand
    # comes from the kernel's custom call instead of a fused XLA expression.
    for a, b in zip(got[2:], want[2:], strict=True):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-6 * np.abs(b).max())


def test_rule_implementation_is_checked():
    with pytest.raises(ValueError, match="implementation must be one of"):
        bn.Rule(PATH, weight="mxfp4", implementation="triton")
    with pytest.raises(TypeError, match="interpret must be a bool"):
        bn.Rule(PATH, weight="mxfp4", interpret="yes")
    rule = bn.Rule(PATH, weight="fp8_e4m3", act="fp8_e4m3", estimator="clipped_ste",
                   implementation="pallas", interpret=True)
    x, w = jnp.ones((2, 4, 64)), jnp.ones((64, 8))
    with pytest.raises(ValueError, match="not ClippedSTE"):
        bn.qdot(x, w, DIMS, rule)


def test_contraction_axis_gradient_quantization():
    """grad_axis='contraction': dX from g quantized along N with key fold_in(k, 0), dW from g
    quantized along the flattened tokens with fold_in(k, 1) — written out with bs.fake_quant."""
    rule = bn.Rule(PATH, weight="mxfp4", act="mxfp4", grad="mxfp4", grad_rounding="stochastic",
                   grad_axis="contraction", implementation="xla")
    x = jax.random.normal(jax.random.key(1), (2, 16, 64))
    w = jax.random.normal(jax.random.key(2), (64, 32))
    g = jax.random.normal(jax.random.key(3), (2, 16, 32))
    @jax.jit  # one compilation instead of op-by-op dispatch of the bit-level quantizers
    def product_and_grads(x, w, g):
        y, vjp = jax.vjp(lambda a, b: bn.qdot(a, b, DIMS, rule, key=KEY, path=PATH), x, w)
        return (y, *vjp(g))

    @jax.jit
    def reference(x, w, g):
        k = bn.slot_key(KEY, PATH, 2)
        xq, wq = fake_quant(x, "mxfp4", axis=-1), fake_quant(w, "mxfp4", axis=0)
        g_dx = bs.fake_quant(g, "mxfp4", axis=-1, rounding="stochastic",
                             key=jax.random.fold_in(k, 0))
        g_dw = bs.fake_quant(g.reshape(32, 32), "mxfp4", axis=0, rounding="stochastic",
                             key=jax.random.fold_in(k, 1))
        return xq, wq, g_dx, g_dw

    y, dx, dw = product_and_grads(x, w, g)
    xq, wq, g_dx, g_dw = reference(x, w, g)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jnp.einsum("btk,kn->btn", xq, wq)))
    np.testing.assert_allclose(np.asarray(dx), np.asarray(jnp.einsum("btn,kn->btk", g_dx, wq)),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(xq.reshape(32, 64).T @ g_dw),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="grad_axis must be one of"):
        bn.Rule(PATH, grad="mxfp4", grad_axis="tokens")
    attn = bn.Rule(PATH, grad="mxfp4", grad_axis="contraction")
    with pytest.raises(ValueError, match="grad_axis='contraction' needs a projection"):
        bn.qdot(jnp.ones((2, 4, 8, 32)), jnp.ones((2, 4, 8, 32)),
                (((3,), (3,)), ((0, 1), (0, 1))), attn)


def test_qmatmul_runs_the_projections_of_a_contraction_axis_policy(tiny):
    """A Quartet-style rule (MXFP4 operands, MXFP4 gradients along each product's contraction
    axis, stochastic) runs every projection through pallas_kernels.qmatmul (interpreted):
    logits and gradients equal the XLA path's up to the order of the products' sums."""
    from unittest import mock

    import pallas_kernels

    cfg = tiny.TINY
    rule = bn.Rule(bn.PROJ, weight="mxfp4", act="mxfp4", grad="mxfp4",
                   grad_rounding="stochastic", grad_axis="contraction")
    policy = bn.Policy("quartet_like", (bn.Rule("lm_head"), rule))
    toks = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    key = jax.random.key(5)

    calls = []
    real = pallas_kernels.qmatmul
    with mock.patch.object(pallas_kernels, "qmatmul",
                           side_effect=lambda *a, **k: calls.append(k) or real(*a, **k)):
        got = _logits_loss_grads(cfg, policy.with_implementation("pallas", interpret=True),
                                 toks, key)
    n_proj = 7 * cfg.num_layers
    assert len(calls) == n_proj and all(c["grad_spec"] is not None for c in calls)
    want = _logits_loss_grads(cfg, policy.with_implementation("xla"), toks, key)
    for a, b in zip(got, want, strict=True):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=2e-5 * np.abs(b).max())
