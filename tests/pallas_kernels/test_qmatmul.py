"""qmatmul (the Pallas kernel, interpreted and compiled on a GPU / TPU, and the XLA path) against
bs.fake_quant references.

* forward: float64 numpy matmul of operands fake-quantized outside the kernel;
* in-kernel quantization is bit-identical to `bs.fake_quant` (stochastic gradient rounding
  included): with identity operands the products return the quantized operand itself;
* gradients: `jax.vjp` of the reference written with bs.fake_quant (same keys), and float64 sums.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitscale as bs
from pallas_kernels.qmatmul import QMatmulConfig, qmatmul, qmatmul_reference

RTOL = 1e-5
SPECS = ("mxfp4", "mxfp8_e4m3", "nvfp4_single", "nvfp4", "int8@g32", "int4@g32", "fp8_e4m3")
SMALL = QMatmulConfig(32, 32, 32)  # several tiles on every axis of every product


@functools.partial(jax.jit, static_argnames=("spec", "axis", "stochastic"))
def fq(a, key=None, *, spec, axis, stochastic=False):
    return bs.fake_quant(a, spec, axis=axis, rounding="stochastic" if stochastic else "nearest",
                         key=key)


@functools.partial(jax.jit, static_argnames=("x_spec", "w_spec", "grad_spec", "impl", "config",
                                             "stochastic", "interpret"))
def run(x, w, g, key, *, x_spec, w_spec, grad_spec, impl="pallas", config=SMALL,
        stochastic=True, interpret=True):
    """(y, dx, dw) of qmatmul for the output cotangent g."""
    f = functools.partial(qmatmul, x_spec=x_spec, w_spec=w_spec, grad_spec=grad_spec,
                          key=key if stochastic else None, implementation=impl, interpret=interpret,
                          config=config)
    y, vjp = jax.vjp(f, x, w)
    return (y, *vjp(g))


@functools.partial(jax.jit, static_argnames=("x_spec", "w_spec", "grad_spec"))
def run_reference(x, w, g, key, *, x_spec, w_spec, grad_spec):
    f = functools.partial(qmatmul_reference, x_spec=x_spec, w_spec=w_spec, grad_spec=grad_spec,
                          key=key)
    y, vjp = jax.vjp(f, x, w)
    return (y, *vjp(g))


def normal(shape, seed, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


def assert_matmul_close(y, a, b, rtol=RTOL):
    """y ~ a @ b (float64), to float32-accumulation accuracy."""
    a64 = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
    b64 = np.asarray(jnp.asarray(b, jnp.float32), np.float64)
    ref, bound = a64 @ b64, np.abs(a64) @ np.abs(b64)
    y64 = np.asarray(jnp.asarray(y, jnp.float32), np.float64)
    assert y64.shape == ref.shape
    err = np.abs(y64 - ref)
    assert np.all(err <= rtol * bound + 1e-30), f"max rel err {np.max(err / (bound + 1e-30)):.3g}"


@pytest.mark.parametrize("spec", SPECS)
def test_forward_matches_fake_quant_operands(spec, interpret):
    # bfloat16 operands (float32 ones are covered by the bit-exact and gradient tests); M = 20
    # is not a multiple of block_m, so rows are zero-padded.
    x, w = normal((20, 128), 0, jnp.bfloat16), normal((128, 64), 1, jnp.bfloat16)
    y = jax.jit(lambda a, b: qmatmul(a, b, x_spec=spec, w_spec=spec, implementation="pallas",
                                     interpret=interpret, config=SMALL))(x, w)
    assert y.dtype == jnp.float32 and y.shape == (20, 64)
    assert_matmul_close(y, fq(x, spec=spec, axis=-1), fq(w, spec=spec, axis=0))


def test_forward_mixed_specs_and_default_config(interpret):
    x, w = normal((8, 256), 2, jnp.bfloat16), normal((256, 96), 3)
    y = jax.jit(lambda a, b: qmatmul(a, b, x_spec="mxfp8_e4m3", w_spec="mxfp4",
                                     implementation="pallas", interpret=interpret))(x, w)
    assert_matmul_close(y, fq(x, spec="mxfp8_e4m3", axis=-1), fq(w, spec="mxfp4", axis=0))


@pytest.mark.parametrize("spec", SPECS)
def test_in_kernel_quantization_is_bit_exact(spec, interpret):
    # 96 is padded to 128 by the 64-blocks, so tiles sit at offsets 0 and 64 on every axis.
    n, cfg = 96, QMatmulConfig(64, 64, 64)
    eye = jnp.eye(n, dtype=jnp.float32)
    x, w, g = normal((n, n), 4), normal((n, n), 5), normal((n, n), 6)
    key = jax.random.key(11)
    k_dx, k_dw = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    # x @ I == xq and, in the backward, dx = q_g(g) @ I^T == q_g(g) (blocks along axis -1,
    # stochastic with fold_in(key, 0)).
    y, dx, dw = run(x, eye, g, key, x_spec=spec, w_spec=None, grad_spec=spec, config=cfg,
                    interpret=interpret)
    xq = fq(x, spec=spec, axis=-1)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(xq))
    np.testing.assert_array_equal(
        np.asarray(dx), np.asarray(fq(g, k_dx, spec=spec, axis=-1, stochastic=True)))
    gq_dw = fq(g, k_dw, spec=spec, axis=0, stochastic=True)
    assert_matmul_close(dw, xq.T, gq_dw)
    # I @ w == wq and dw = I^T @ q_g(g) == q_g(g) (blocks along axis 0, fold_in(key, 1)).
    y, dx, dw = run(eye, w, g, key, x_spec=None, w_spec=spec, grad_spec=spec, config=cfg,
                    interpret=interpret)
    wq = fq(w, spec=spec, axis=0)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(wq))
    np.testing.assert_array_equal(np.asarray(dw), np.asarray(gq_dw))
    assert_matmul_close(dx, fq(g, k_dx, spec=spec, axis=-1, stochastic=True), wq.T)


@pytest.mark.parametrize("spec", ("mxfp4", "nvfp4"))
def test_gradients_match_reference_vjp(spec, interpret):
    x, w, g = normal((64, 128), 7), normal((128, 96), 8), normal((64, 96), 9)
    key = jax.random.key(3)
    specs = dict(x_spec=spec, w_spec=spec, grad_spec=spec)
    y, dx, dw = run(x, w, g, key, interpret=interpret, **specs)
    y_r, dx_r, dw_r = run_reference(x, w, g, key, **specs)
    for a, b in ((y, y_r), (dx, dx_r), (dw, dw_r)):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
    # The same products written out with bs.fake_quant, summed in float64.
    xq, wq = fq(x, spec=spec, axis=-1), fq(w, spec=spec, axis=0)
    k_dx, k_dw = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    assert_matmul_close(y, xq, wq)
    assert_matmul_close(dx, fq(g, k_dx, spec=spec, axis=-1, stochastic=True), wq.T)
    assert_matmul_close(dw, xq.T, fq(g, k_dw, spec=spec, axis=0, stochastic=True))


def test_gradients_bf16_and_nearest_grad_rounding(interpret, key):
    x, w, g = normal((64, 64), 10, jnp.bfloat16), normal((64, 64), 11, jnp.bfloat16), normal(
        (64, 64), 12)
    y, dx, dw = run(x, w, g, key, x_spec="mxfp4", w_spec="nvfp4_single", grad_spec="mxfp8_e4m3",
                    stochastic=False, interpret=interpret)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    xq, wq = fq(x, spec="mxfp4", axis=-1), fq(w, spec="nvfp4_single", axis=0)
    dx_ref = np.asarray(fq(g, spec="mxfp8_e4m3", axis=-1), np.float64) @ np.asarray(
        wq, np.float64).T
    dw_ref = np.asarray(xq, np.float64).T @ np.asarray(fq(g, spec="mxfp8_e4m3", axis=0),
                                                        np.float64)
    np.testing.assert_allclose(np.asarray(dx, np.float64), dx_ref, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(dw, np.float64), dw_ref, rtol=1e-2, atol=1e-2)


def test_grad_spec_none_gives_ste_gradients(interpret):
    # M = 20 is not a multiple of 32: fine, since nothing is quantized along M.
    x, w, g = normal((20, 64), 13), normal((64, 32), 14), normal((20, 32), 15)
    _, dx, dw = run(x, w, g, None, x_spec="mxfp4", w_spec="int4@g32", grad_spec=None,
                    stochastic=False, interpret=interpret)
    xq, wq = fq(x, spec="mxfp4", axis=-1), fq(w, spec="int4@g32", axis=0)
    assert_matmul_close(dx, g, wq.T)
    assert_matmul_close(dw, xq.T, g)


def test_stochastic_gradient_is_unbiased(interpret):
    x, w, g = normal((32, 64), 16), normal((64, 32), 17), normal((32, 32), 18)
    n_keys = 32
    dxs = [run(x, w, g, jax.random.key(s), interpret=interpret, x_spec="mxfp4", w_spec="mxfp4",
               grad_spec="int4@g32")[1] for s in range(n_keys)]
    wq = fq(w, spec="mxfp4", axis=0)
    exact = np.asarray(g, np.float64) @ np.asarray(wq, np.float64).T
    single = np.abs(np.asarray(dxs[0]) - exact).mean()
    mean = np.abs(np.mean(np.stack(dxs), axis=0) - exact).mean()
    assert not np.array_equal(np.asarray(dxs[0]), np.asarray(dxs[1]))  # the key matters
    assert mean < 0.3 * single, (mean, single)  # 1/sqrt(32) ~ 0.18 for an unbiased estimate


def test_xla_path_equals_reference():
    x, w, g = normal((32, 64), 19), normal((64, 32), 20), normal((32, 32), 21)
    key = jax.random.key(1)
    specs = dict(x_spec="int8@channel", w_spec="mxfp4", grad_spec="nvfp4")  # channel: XLA only
    got = run(x, w, g, key, impl="xla", **specs)
    want = run_reference(x, w, g, key, **specs)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_errors():
    x, w = normal((32, 64), 22), normal((64, 32), 23)
    kernel = dict(implementation="pallas", interpret=True)
    with pytest.raises(ValueError, match="needs the whole axis"):
        qmatmul(x, w, x_spec="int8@channel", w_spec="mxfp4", **kernel)
    with pytest.raises(ValueError, match="block_k=16 is not a multiple of the quantization block "
                                         "size 32"):
        qmatmul(x, w, x_spec="mxfp4", w_spec="mxfp4", config=QMatmulConfig(32, 32, 16), **kernel)
    with pytest.raises(ValueError, match="must be a positive power of two"):
        QMatmulConfig(48, 32, 32)
    with pytest.raises(ValueError, match="K=64 does not match w's K=32"):
        qmatmul(x, w.T, x_spec="mxfp4", w_spec="mxfp4", **kernel)
    # grad_spec blocks run along M in dw = xq^T @ q_g(g): M = 20 is not a multiple of 32.
    with pytest.raises(ValueError, match="does not divide axis 0 of length 20"):
        qmatmul(x[:20], w, x_spec="mxfp4", w_spec="mxfp4", grad_spec="mxfp4", **kernel)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        qmatmul(x.astype(jnp.int32), w, x_spec="mxfp4", w_spec="mxfp4", **kernel)
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="needs a GPU or TPU backend.*interpret=True"):
            qmatmul(x, w, x_spec="mxfp4", w_spec="mxfp4", implementation="pallas")
    # A backward block that cannot hold the weight's quantization blocks names the product.
    with pytest.raises(ValueError, match="block_n=16 is not a multiple of .* 32 of dx"):
        jax.grad(lambda a: qmatmul(a, w, x_spec="mxfp4", w_spec="mxfp4",
                                   config=QMatmulConfig(32, 16, 32), **kernel).sum())(x)
