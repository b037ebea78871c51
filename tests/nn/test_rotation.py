"""Hadamard rotations inside a Rule: forward operands, per-product backward operands, keys, errors.

References: QuaRot (arXiv:2404.00456), QuEST (arXiv:2502.05003), Quartet (arXiv:2505.14669),
NVIDIA's NVFP4 recipe (arXiv:2509.25149), Quartet II (arXiv:2601.22813).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import bitscale as bs
from bitscale.nn import Rotation, Rule, qdot, slot_key
from bitscale.nn._rule import resolve_rotation

DIMS = (((2,), (1,)), ((), ()))  # x [B, T, K] . w [N, K]^T


def _data(b=2, t=16, k=128, n=64, seed=0):
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (b, t, k))
    x = x.at[..., 3].multiply(20.0)  # an outlier channel: what rotations are for
    w = jax.random.normal(kw, (n, k)) / np.sqrt(k)
    g = jax.random.normal(kg, (b, t, n))
    return x, w, g


@functools.partial(jax.jit, static_argnames=("rule", "path"))
def _grads(rule, x, w, g, key=None, path="p"):
    y, vjp = jax.vjp(lambda a, b: qdot(a, b, DIMS, rule, key=key, path=path), x, w)
    return (y,) + vjp(g)


def _block_hadamard(n: int, size: int, signs=None) -> np.ndarray:
    """kron(I, H_size diag(s)) / sqrt(size) from scipy's Sylvester matrix: rotated = M @ b."""
    h = scipy.linalg.hadamard(size).astype(np.float64) / np.sqrt(size)
    if signs is not None:
        h = h * np.asarray(signs, np.float64)[None, :]
    return np.kron(np.eye(n // size), h)


# ---------------------------------------------------------------------------------------------
# Names and validation


def test_rotation_names():
    assert resolve_rotation("h32") == Rotation(32, "none")
    assert resolve_rotation("rh16") == Rotation(16, "fixed", 0)
    assert resolve_rotation("rh128:call") == Rotation(128, "per_call")
    assert resolve_rotation("rh16@7") == Rotation(16, "fixed", 7)
    for r in (Rotation(32), Rotation(16, "fixed", 7), Rotation(128, "per_call")):
        assert resolve_rotation(r.name) == r


@pytest.mark.parametrize("bad", ["x16", "h24", "h32:call", "rh", "h512", 16])
def test_rotation_name_errors(bad):
    with pytest.raises((ValueError, TypeError)):
        resolve_rotation(bad)


def test_rotation_field_errors():
    with pytest.raises(ValueError, match="rotation size must be one of"):
        Rotation(24)
    with pytest.raises(ValueError, match="signs must be one of"):
        Rotation(16, "random")
    with pytest.raises(ValueError, match="need grad_axis='contraction'"):
        Rule("p", grad="nvfp4", wgrad_rotation="rh16")
    with pytest.raises(ValueError, match="need grad_axis='contraction'"):
        Rule("p", bwd_act="nvfp4")
    with pytest.raises(ValueError, match=r"MS-EDEN.*dgrad_rotation"):
        Rule("p", grad="nvfp4", grad_rounding="eden", grad_axis="contraction")
    with pytest.raises(ValueError, match="fwd_rounding must be one of"):
        Rule("p", act="nvfp4", fwd_rounding="eden")
    with pytest.raises(ValueError, match="needs a grad spec"):
        Rule("p", grad_rounding="eden", grad_axis="contraction", dgrad_rotation="rh128",
             wgrad_rotation="rh128")


def test_rotation_size_must_divide_the_axis():
    x, w, _ = _data(k=64)
    rule = Rule("p", weight="mxfp4", act="mxfp4", rotation="h128")
    with pytest.raises(ValueError, match=r"layers\.0\.q_proj.*h128.*does not divide.*64"):
        qdot(x, w, DIMS, rule, path="layers.0.q_proj")


# ---------------------------------------------------------------------------------------------
# Forward rotation


def test_rotation_without_quantization_leaves_the_product_and_gradients_unchanged():
    """A lossless element format (e8m23 = float32) isolates the rotation: the product and both
    gradients equal the plain product's (the inverse rotation is applied on the way back)."""
    x, w, g = _data()
    rule = Rule("p", weight="e8m23", act="e8m23", rotation="rh32:call")
    y, dx, dw = _grads(rule, x, w, g, key=jax.random.key(3))
    y0, dx0, dw0 = _grads(Rule("p"), x, w, g)
    np.testing.assert_allclose(y, y0, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dx, dx0, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dw, dw0, rtol=2e-5, atol=2e-5)


def test_forward_rotation_matches_the_rotated_quantized_product():
    """Q(x M^T) . Q(w M^T)^T with M = block-diag(H_32 diag(s)) built from scipy's Hadamard."""
    x, w, _ = _data()
    rule = Rule("p", weight="mxfp4", act="mxfp4", rotation="rh32@5")
    signs = np.asarray(jax.random.rademacher(jax.random.key(5), (32,), jnp.float32))
    m = _block_hadamard(128, 32, signs)
    xr = (np.asarray(x, np.float64) @ m.T).astype(np.float32)
    wr = (np.asarray(w, np.float64) @ m.T).astype(np.float32)
    fq = jax.jit(lambda v: bs.fake_quant(v, "mxfp4"))
    want = np.asarray(fq(jnp.asarray(xr)), np.float64) @ np.asarray(
        fq(jnp.asarray(wr)), np.float64).T
    got = np.asarray(_grads(rule, x, w, jnp.zeros((2, 16, 64)))[0])
    # A float32 rotation may land an element one ulp off float64's, on the other side of an
    # MXFP4 rounding boundary: compare the products, not the bits.
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-3
    # ... and the rotation matters: without it the outlier channel's block is crushed.
    plain = np.asarray(_grads(Rule("p", weight="mxfp4", act="mxfp4"), x, w,
                              jnp.zeros((2, 16, 64)))[0])
    exact = np.asarray(x @ w.T)
    assert np.linalg.norm(got - exact) < 0.8 * np.linalg.norm(plain - exact)


def test_forward_estimator_masks_in_the_rotated_basis():
    """dX = ((dY . Wq) * mask) M: the clipped-STE mask of the rotated activation, then the
    transposed rotation (written out with jax.vjp of the composed public functions)."""
    x, w, g = _data()
    rule = Rule("p", weight="mxfp4+rms", act="mxfp4+rms", rotation="h32",
                estimator="clipped_ste")
    _, dx, _ = _grads(rule, x, w, g)

    def act(a):
        return bs.fake_quant(bs.hadamard_transform(a, 32), "mxfp4+rms", estimator="clipped_ste")

    @jax.jit
    def written_out(x, w, g):
        wq = bs.fake_quant(bs.hadamard_transform(w, 32), "mxfp4+rms")
        _, vjp = jax.vjp(act, x)
        return vjp(jnp.einsum("btn,nk->btk", g, wq))[0], wq

    want, wq = written_out(x, w, g)
    np.testing.assert_allclose(dx, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(dx, jnp.einsum("btn,nk->btk", g, wq) @ jnp.asarray(
        _block_hadamard(128, 32), jnp.float32), atol=1e-3)  # the mask did something


# ---------------------------------------------------------------------------------------------
# Backward products


def test_per_product_backward_matches_the_written_out_products():
    """Quartet's backward with nearest rounding and fixed signs: dX = Q(R_N dY) . Q(R_N Wq) and
    dW = Q(R_T dY)^T . Q(R_T X), each quantized along the axis its product contracts."""
    x, w, g = _data(t=32)
    rule = Rule("p", weight="mxfp4", grad="mxfp4", grad_axis="contraction",
                dgrad_rotation="rh32@1", wgrad_rotation="rh16@2", bwd_weight="mxfp8_e4m3",
                bwd_act="mxfp8_e4m3")
    _, dx, dw = _grads(rule, x, w, g)

    @jax.jit
    def operands(x, w, g):
        s1 = jax.random.key(1)
        s2 = jax.random.key(2)
        wq = bs.fake_quant(w, "mxfp4")                       # forward weight, along K
        g_n = bs.fake_quant(bs.hadamard_transform(g, 32, key=s1), "mxfp4")
        w_n = bs.fake_quant(bs.hadamard_transform(wq, 32, key=s1, axis=0), "mxfp8_e4m3", axis=0)
        g2 = g.reshape(-1, g.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        g_t = bs.fake_quant(bs.hadamard_transform(g2, 16, key=s2, axis=0), "mxfp4", axis=0)
        x_t = bs.fake_quant(bs.hadamard_transform(x2, 16, key=s2, axis=0), "mxfp8_e4m3", axis=0)
        return g_n, w_n, g_t, x_t

    g_n, w_n, g_t, x_t = (np.asarray(a, np.float64) for a in operands(x, w, g))
    want_dx = np.einsum("btn,nk->btk", g_n, w_n)
    want_dw = g_t.T @ x_t
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=2e-4)


def _mean_grads(rule, x, w, g, n_keys):
    @jax.jit
    def one(k):
        return _grads(rule, x, w, g, key=jax.random.wrap_key_data(k))[1:]

    keys = jax.random.key_data(jax.random.split(jax.random.key(11), n_keys))
    dxs, dws = jax.lax.map(one, keys)
    return dxs, dws


@pytest.mark.parametrize("rounding,rotation", [("stochastic", "rh16:call"),
                                               ("eden", "rh128:call")])
def test_rotated_backward_is_unbiased(rounding, rotation):
    """With an exact forward, E_key[dX] = dY . W and E_key[dW] = dY^T . X: stochastic rounding
    with headroom (NVIDIA / Quartet) and MS-EDEN (Quartet II) after per-call random rotations.
    The mean over keys converges like 1/sqrt(keys); round-to-nearest with the same rotations
    does not."""
    x, w, g = _data(b=1, t=128, k=128, n=128, seed=4)
    kw = dict(grad="nvfp4+headroom" if rounding == "stochastic" else "nvfp4",
              grad_axis="contraction", dgrad_rotation=rotation, wgrad_rotation=rotation,
              grad_rounding=rounding)
    exact_dx = np.asarray(jnp.einsum("btn,nk->btk", g, w), np.float64)
    exact_dw = np.asarray(jnp.einsum("btn,btk->nk", g, x), np.float64)
    n = 256
    dxs, dws = _mean_grads(Rule("p", **kw), x, w, g, n)
    for draws, exact in ((dxs, exact_dx), (dws, exact_dw)):
        d = np.asarray(draws, np.float64)
        per_draw = np.sqrt(((d - exact) ** 2).sum(axis=tuple(range(1, d.ndim)))).mean()
        bias = np.linalg.norm(d.mean(0) - exact)
        # An unbiased mean of n draws errs by ~per_draw / sqrt(n) (here 1/16); allow 2x.
        assert bias < 2.0 * per_draw / np.sqrt(n), (rounding, bias, per_draw)
        assert abs(_shrinkage_z(d, exact)) < 4.0, rounding
    # Round-to-nearest under the same random rotations is biased along the gradient:
    # E[<Q(g), g>] != ||g||^2, the bias EDEN's correction removes.
    rtn = Rule("p", **{**kw, "grad_rounding": "nearest"})
    dxs, dws = _mean_grads(rtn, x, w, g, 64)
    assert abs(_shrinkage_z(np.asarray(dxs, np.float64), exact_dx)) > 4.0


def _shrinkage_z(draws: np.ndarray, exact: np.ndarray) -> float:
    """z-score of the mean of <draw - exact, exact> / ||exact||^2 over draws (0 if unbiased)."""
    axes = tuple(range(1, draws.ndim))
    proj = ((draws - exact) * exact).sum(axis=axes) / (exact ** 2).sum()
    return float(proj.mean() / (proj.std(ddof=1) / np.sqrt(len(proj))))


def test_rotation_keys():
    """Per-call signs change with the model key (and with the layer); fixed signs do not; with no
    key per-call signs fall back to the seed's."""
    x, w, g = _data(t=32)
    kw = dict(weight="mxfp4", grad="mxfp4", grad_axis="contraction")
    per_call = Rule("p", dgrad_rotation="rh32:call", **kw)
    fixed = Rule("p", dgrad_rotation="rh32", **kw)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    dx = {name: [_grads(r, x, w, g, key=k)[1] for k in (k1, k2)]
          for name, r in (("per_call", per_call), ("fixed", fixed))}
    assert not np.array_equal(dx["per_call"][0], dx["per_call"][1])
    np.testing.assert_array_equal(dx["fixed"][0], dx["fixed"][1])
    np.testing.assert_array_equal(_grads(per_call, x, w, g)[1], _grads(fixed, x, w, g)[1])

    # The per-call signs are those of the documented slot key (8: the dgrad rotation), so they
    # differ between layers too.
    @jax.jit
    def written_out(s):
        g_n = bs.fake_quant(bs.hadamard_transform(g, 32, key=s), "mxfp4")
        w_n = bs.hadamard_transform(bs.fake_quant(w, "mxfp4"), 32, key=s, axis=0)
        return jnp.einsum("btn,nk->btk", g_n, w_n)

    np.testing.assert_allclose(dx["per_call"][0], written_out(slot_key(k1, "p", 8)),
                               rtol=1e-4, atol=1e-4)
    assert not np.allclose(dx["per_call"][0], written_out(slot_key(k1, "q", 8)), atol=1e-3)


def test_rotated_rule_through_the_fused_kernel_matches_xla():
    """implementation='pallas' (interpreted): the fused rotation + fake-quant kernels (forward
    operands and every backward operand) give the XLA path's forward bit for bit and its
    gradients up to the rotations' summation order."""
    x, w, g = _data(t=32)
    rule = Rule("p", weight="mxfp4", act="mxfp4", rotation="rh32:call", grad="mxfp4",
                grad_rounding="stochastic", grad_axis="contraction",
                dgrad_rotation="rh32:call", wgrad_rotation="rh32:call", bwd_weight="mxfp4",
                bwd_act="mxfp4", bwd_rounding="stochastic", implementation="xla")
    key = jax.random.key(9)
    ref = _grads(rule, x, w, g, key=key)
    kernel_rule = dataclasses.replace(rule, implementation="pallas", interpret=True)
    got = _grads(kernel_rule, x, w, g, key=key)
    np.testing.assert_array_equal(got[0], ref[0])
    for a, b in zip(got[1:], ref[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_eden_on_one_backward_product_only():
    """MS-EDEN for dW's activation with a wgrad rotation only: dX's product has no rotation and
    keeps the forward weight; the gradients are finite and dX is the plain dY . W."""
    x, w, g = _data(b=1, t=128)
    rule = Rule("p", grad_axis="contraction", wgrad_rotation="rh128:call", bwd_act="nvfp4",
                bwd_rounding="eden")
    _, dx, dw = _grads(rule, x, w, g, key=jax.random.key(2))
    np.testing.assert_allclose(dx, jnp.einsum("btn,nk->btk", g, w), rtol=1e-5, atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(dw)))
    exact = jnp.einsum("btn,btk->nk", g, x)
    assert float(jnp.linalg.norm(dw - exact) / jnp.linalg.norm(exact)) < 0.2
