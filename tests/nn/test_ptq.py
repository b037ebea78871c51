"""Post-training weight quantization: packed QArray kernels, packed-weight matmul."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import bitscale as bs
import bitscale.nn as bn
from tests.nn.helpers import load_config_module

TINY = load_config_module("tiny").TINY
TOKS = jax.random.randint(jax.random.key(0), (2, 16), 0, TINY.vocab_size)


@pytest.fixture(scope="module")
def model():
    return bn.Llama(TINY, "fp32", rngs=nnx.Rngs(3))


def test_int4_ptq_matches_fake_quantized_weights(model):
    q = bn.quantize_weights(model, "int4@g128", implementation="xla")
    k = q.layers[1].mlp.down_proj.kernel.get_value()
    assert isinstance(k, bs.QArray) and k.spec.name == "int4@g128" and k.axis == 0
    assert k.shape == (TINY.intermediate_size, TINY.hidden_size)  # [K, N] = [in, out]
    assert k.codes.dtype == jnp.uint8 and k.codes.size * 2 == np.prod(k.shape)
    assert not isinstance(q.lm_head.kernel.get_value(), bs.QArray)  # lm head kept in float
    assert isinstance(model.layers[1].mlp.down_proj.kernel.get_value(), jax.Array)  # a copy
    bits = bn.weight_bits(q)
    assert len(bits) == 7 * TINY.num_layers and all(4 < b < 4.3 for b, _ in bits.values())
    assert bn.mean_weight_bits(q) == pytest.approx(bn.mean_weight_bits(
        bn.Llama(TINY, "int4@g128", rngs=nnx.Rngs(3))))  # packed == what packing would store
    assert bn.mean_weight_bits(model) == 32.0
    # reference: the float model with every projection W [out, in] replaced by fake_quant(W)
    # along its contraction axis
    ref = nnx.clone(model)
    fq = jax.jit(bs.fake_quant, static_argnames=("spec", "axis"))
    for _, m in nnx.iter_modules(ref):
        if isinstance(m, bn.Linear) and m.path != "lm_head":
            m.kernel.set_value(fq(m.kernel.get_value(), "int4@g128", axis=1))
    y_ptq = np.asarray(bn.apply(q, TOKS))
    y_ref = np.asarray(bn.apply(ref, TOKS))
    y_fp = np.asarray(bn.apply(model, TOKS))
    np.testing.assert_allclose(y_ptq, y_ref, rtol=0, atol=1e-5)
    assert np.abs(y_ptq - y_fp).max() > 1e-4
    # the fake-quant weight-only policy computes the same thing without packing
    fq = bn.Llama(TINY, "int4@g128", rngs=nnx.Rngs(3))
    np.testing.assert_allclose(np.asarray(bn.apply(fq, TOKS)), y_ref, rtol=0, atol=1e-5)


def test_ptq_decode_and_auto_implementation(model):
    q = bn.quantize_weights(model, "int4@g128")
    assert q.layers[0].attn.q_proj.implementation == "auto"
    full = np.asarray(bn.apply(q, TOKS))
    cache = q.init_cache(2, 16)
    y0, cache = bn.apply(q, TOKS[:, :10], cache=cache)
    y1, cache = bn.apply(q, TOKS[:, 10:], cache=cache)
    np.testing.assert_allclose(np.concatenate([y0, y1], 1), full, rtol=0, atol=1e-5)


def test_packed_matmul_implementations():
    w = jax.random.normal(jax.random.key(1), (256, 64))
    x = jax.random.normal(jax.random.key(2), (3, 256))
    q = bs.quantize(w, "int8@channel", axis=0)
    ref = np.asarray(x) @ np.asarray(bs.dequantize(q))
    np.testing.assert_allclose(np.asarray(bn.packed_matmul(x, q, implementation="xla")), ref,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.packed_matmul(x, q)), ref, rtol=1e-5, atol=1e-4)
    from bitscale.nn._packed import pallas_packed_matmul
    if pallas_packed_matmul() is None:
        with pytest.raises(RuntimeError, match="pallas_kernels.packed_matmul is not available"):
            bn.packed_matmul(x, q, implementation="pallas")
    elif jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="GPU or TPU"):  # pallas_kernels' own dispatch
            bn.packed_matmul(x, q, implementation="pallas")
    with pytest.raises(ValueError, match="implementation"):
        bn.packed_matmul(x, q, implementation="cuda")


def test_ptq_rejects_non_weight_only_policies(model, tmp_path):
    with pytest.raises(ValueError, match="not weight-only"):
        bn.quantize_weights(model, "int8")
    with pytest.raises(ValueError, match="packed QArray"):
        bn.to_hf(bn.quantize_weights(model, "int4@g128"), str(tmp_path / "never_written"))
