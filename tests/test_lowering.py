"""Lowering for CUDA and TPU on a CPU host (`jax.export`), with no float convert round trip.

XLA:GPU's default ``--xla_allow_excess_precision=true`` deletes ``convert(f32 -> narrow) ->
convert(narrow -> f32)``: a simulated rounding written that way is the identity on a GPU (it
was, for fp8 / bf16 / fp16 fake-quant, before the casts moved to the bit level). These tests
export every spec and a model forward + backward under every named policy, and fail on any such
pair in the module; they also fail if a case does not lower for a backend.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import bitscale as bs
from bitscale import nn as bn
from bitscale.selfcheck import ALL_SPECS
from bitscale.selfcheck.hlo import export_text, float_round_trips

KEY = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)


def test_scanner_finds_round_trips_also_through_layout_ops():
    x = jax.ShapeDtypeStruct((8, 64), jnp.float32)
    direct = export_text(lambda a: a.astype(jnp.float8_e4m3fn).astype(jnp.float32), [x])
    assert [(r.source, r.narrow, r.result) for r in float_round_trips(direct)] == [
        ("f32", "f8E4M3FN", "f32")]
    via = export_text(lambda a: a.astype(jnp.bfloat16).reshape(64, 8).T.astype(jnp.float32), [x])
    assert len(float_round_trips(via)) == 1
    widening_only = export_text(lambda a: a.astype(jnp.float32) * 2, [
        jax.ShapeDtypeStruct((8, 64), jnp.bfloat16)])
    assert float_round_trips(widening_only) == []
    rp = export_text(lambda a: jax.lax.reduce_precision(a, 5, 2), [x])
    assert float_round_trips(rp) == []


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_every_spec_lowers_for_cuda_and_tpu_without_round_trips(spec):
    def f(a, b, k):
        out = []
        for x in (a, b):
            for rounding in ("nearest", "stochastic"):
                kk = k if rounding == "stochastic" else None
                out.append(bs.fake_quant(x, spec, rounding=rounding, key=kk))
                out.append(bs.dequantize(bs.quantize(x, spec, rounding=rounding, key=kk)))
        return out
    args = [jax.ShapeDtypeStruct((16, 256), jnp.float32),  # 16 rows: 16x16 2-D blocks tile
            jax.ShapeDtypeStruct((16, 256), jnp.bfloat16), KEY]
    found = float_round_trips(export_text(f, args))
    assert not found, "\n".join(map(str, found))


def _tiny_cfg():
    from tests.nn.helpers import load_config_module
    return load_config_module("tiny").TINY


@pytest.mark.parametrize("policy", sorted(bn.NAMED_POLICIES))
def test_model_forward_and_backward_lower_without_simulated_round_trips(policy):
    """Quantized policies compute in float32: no narrowing may be undone. The bf16 and fp16
    policies compute in their dtype, a real cast that XLA may keep wider; only those casts are
    allowed there."""
    cfg, toks = _tiny_cfg(), jax.ShapeDtypeStruct((2, 16), jnp.int32)
    if policy in bn.RECIPE_POLICIES:
        # The recipes rotate dX's operands along N and dW's along the tokens in blocks of up to
        # 128: one layer whose projections are all 128-wide, 128 tokens.
        cfg = bn.ModelConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_layers=1,
                             num_heads=4, num_kv_heads=4, max_position_embeddings=256)
        toks = jax.ShapeDtypeStruct((2, 64), jnp.int32)
    model = bn.Llama(cfg, policy, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)

    def loss(p, t, k):
        return jnp.mean(nnx.merge(graphdef, p)(t, key=k) ** 2)

    def f(p, t, k):
        return jax.value_and_grad(loss)(p, t, k)

    p_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    found = float_round_trips(export_text(f, [p_spec, toks, KEY]))
    compute = {"bf16": "bf16", "bf16_mixed": "bf16", "fp16": "f16"}.get(policy)
    found = [r for r in found if r.narrow != compute]
    assert not found, "\n".join(map(str, found[:5]))


@pytest.mark.parametrize("order", ["sequential", "pairwise", "split_k:4"])
@pytest.mark.parametrize("acc", ["bfloat16", "float16"])
def test_emulated_low_precision_accumulation_keeps_its_roundings(order, acc):
    """`bitscale.repro` rounds every partial sum to bf16 / fp16; written as converts, XLA:GPU
    would drop those roundings and accumulate in float32."""
    from bitscale import repro

    def f(a, b, v):
        return (repro.matmul(a, b, order=order, acc_dtype=acc),
                repro.reduce_sum(v, axis=-1, order=order, acc_dtype=acc))
    args = [jax.ShapeDtypeStruct((4, 32), jnp.float32),
            jax.ShapeDtypeStruct((32, 8), jnp.bfloat16),
            jax.ShapeDtypeStruct((4, 64), jnp.float32)]
    found = float_round_trips(export_text(f, args))
    assert not found, "\n".join(map(str, found[:5]))


@pytest.mark.parametrize("spec", ["fp8_e4m3", "int8@channel", "nvfp4", "mxfp4", "int4@g128"])
def test_quantize_kernel_body_lowers_with_triton(spec):
    """The numerics inside a kernel must not switch on the platform (Triton has no lowering for
    it): kernel bodies trace `ieee.portable`. A lowering that succeeds fails only at
    serialization, which the disabled checks allow."""
    from jax import export
    from pallas_kernels.quantize.kernel import quantize_pallas

    s = bs.resolve_spec(spec)
    block = 256 if spec == "int8@channel" else 128
    fn = lambda a: quantize_pallas(a, s, 1, "nearest", None, False, block, 8, False)
    checks = [export.DisabledSafetyCheck.custom_call(n)
              for n in ("triton_kernel_call", "__gpu$xla.gpu.triton")]
    before = jax.config.jax_pallas_use_mosaic_gpu
    jax.config.update("jax_pallas_use_mosaic_gpu", False)  # Triton (JAX 0.10 defaults to Mosaic)
    try:
        export_text(fn, [jax.ShapeDtypeStruct((64, 256), jnp.float32)], ("cuda",), checks)
    finally:
        jax.config.update("jax_pallas_use_mosaic_gpu", before)


KERNEL_CALLS = ("__gpu$xla.gpu.triton", "triton_kernel_call", "tpu_custom_call")


QUARTET_LIKE = bn.Policy("quartet_like", (bn.Rule("lm_head"), bn.Rule(
    bn.PROJ, weight="mxfp4", act="mxfp4", grad="mxfp4", grad_rounding="stochastic",
    grad_axis="contraction")))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("policy", ["fp8", "mxfp4", "nvfp4", QUARTET_LIKE],
                         ids=lambda p: getattr(p, "name", p))
def test_model_with_kernels_lowers_for_the_accelerator(policy, platform):
    """Traced for a GPU / TPU (`pallas_kernels.lowering_target`), the rules' default
    implementation="auto" runs the kernels inside the model (the fused fake-quant kernel; whole
    projections through qmatmul for the quartet-like rule), forward and backward, and the whole
    step lowers for that platform with no simulated round trip."""
    from jax import export

    import pallas_kernels as pk

    cfg = _tiny_cfg()
    model = bn.Llama(cfg, policy, rngs=nnx.Rngs(0))
    assert {r.implementation for r in model.policy.rules} == {"auto"}
    graphdef, state = nnx.split(model, nnx.Param)
    toks = jax.ShapeDtypeStruct((2, 16), jnp.int32)

    def f(p, t, k):
        return jax.value_and_grad(
            lambda q: jnp.mean(nnx.merge(graphdef, q)(t, key=k) ** 2))(p)

    p_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    checks = [export.DisabledSafetyCheck.custom_call(c) for c in KERNEL_CALLS]
    with pk.lowering_target(platform):
        text = export_text(f, [p_spec, toks, KEY], platforms=(platform,), disabled_checks=checks)
    assert any(c in text for c in KERNEL_CALLS), "no Pallas kernel in the lowered model"
    found = float_round_trips(text)
    assert not found, "\n".join(map(str, found[:5]))
