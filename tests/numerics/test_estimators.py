"""Gradient estimators of `fake_quant` (STE, clipped STE, QuEST trust mask), LSQ, Gaussian
pseudo-quantization, and their composition with jit / vmap / grad and the Hadamard transform.

Every expected gradient is built in numpy from its definition (and, for LSQ, from the reference
implementation in Esser et al. 2020 and central finite differences).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitscale as bs


def _rng(seed=0):
    return np.random.default_rng(seed)


def _x(shape=(4, 64), scale=1.0, seed=0) -> np.ndarray:
    return (_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _w(shape, seed=1) -> np.ndarray:
    return _rng(seed).standard_normal(shape).astype(np.float32)


def _fq_grad(spec, x, w, **kw):
    """(fake_quant(x), d/dx sum(w * fake_quant(x))) in one jitted call."""
    def loss(v):
        y = bs.fake_quant(v, spec, **kw)
        return jnp.sum(jnp.asarray(w) * y), y

    g, y = jax.jit(jax.grad(loss, has_aux=True))(jnp.asarray(x))
    return np.asarray(y), np.asarray(g)


# --------------------------------------------------------------------------------------------
# STE


@pytest.mark.parametrize("spec", ["fp8_e4m3", "int8@channel", "mxfp4", "nvfp4", "ternary"])
def test_ste_gradient_is_identity(spec):
    x = _x(scale=3.0)
    x[0, :4] = [1e4, -1e4, 0.0, 1e-8]  # clipped and tiny values pass gradient too
    w = _w(x.shape)
    y, g = _fq_grad(spec, x, w)
    np.testing.assert_array_equal(g, w)
    assert not np.array_equal(y, x)  # the forward really quantized


def test_ste_gradient_with_stochastic_rounding_and_bf16():
    x = _x(scale=3.0).astype(jnp.bfloat16)
    w = _w(x.shape).astype(jnp.bfloat16)
    y, g = _fq_grad("mxfp4", x, w, rounding="stochastic", key=jax.random.key(0))
    assert y.dtype == jnp.bfloat16 and g.dtype == jnp.bfloat16
    np.testing.assert_array_equal(g.astype(np.float32), w.astype(np.float32))


# --------------------------------------------------------------------------------------------
# Clipped STE


@pytest.mark.parametrize("spec,lo,hi", [("fp8_e4m3", -448.0, 448.0), ("fp4_e2m1", -6.0, 6.0),
                                        ("int8", -128.0, 127.0)])
def test_clipped_ste_element_casts(spec, lo, hi):
    span = max(abs(lo), hi)
    x = np.concatenate([
        np.linspace(-1.6 * span, 1.6 * span, 245, dtype=np.float32),
        np.array([lo, hi, np.nextafter(np.float32(lo), np.float32(-np.inf)),
                  np.nextafter(np.float32(hi), np.float32(np.inf)), 0.0, -0.0, hi * 1.03,
                  lo * 1.03, 1e30, -1e30, 0.5], np.float32)]).astype(np.float32)
    w = _w(x.shape)
    y, g = _fq_grad(spec, x, w, estimator="clipped_ste")
    inside = (x >= lo) & (x <= hi)
    assert (~inside).sum() > 50 and inside.sum() > 50
    np.testing.assert_array_equal(g, np.where(inside, w, 0.0).astype(np.float32))
    # STE on the same inputs is the identity.
    np.testing.assert_array_equal(_fq_grad(spec, x, w, estimator="ste")[1], w)


def test_clipped_ste_int4_tensor_mse():
    x = _x((8, 64), seed=4)
    x[0, :6] = [9.0, -8.0, 7.5, -7.0, 12.0, 6.5]  # outliers: the MSE clip cuts them
    w = _w(x.shape)
    spec = "int4@tensor+mse"
    y, g = _fq_grad(spec, x, w, estimator="clipped_ste")
    q = jax.jit(lambda v: bs.quantize(v, spec))(jnp.asarray(x))
    scale = np.float32(np.asarray(q.scales))
    clipped = np.abs(x * (np.float32(1.0) / scale)) > 7
    assert clipped.sum() >= 3 and (~clipped).sum() > 400
    assert scale < np.abs(x).max() / 7  # the MSE search did clip (absmax would not)
    np.testing.assert_array_equal(g, np.where(clipped, 0.0, w).astype(np.float32))
    # The forward is the restricted int4 grid times the stored scale.
    ref = np.clip(np.rint(x * (np.float32(1.0) / scale)), -7, 7).astype(np.float32) * scale
    np.testing.assert_array_equal(y, ref)


# --------------------------------------------------------------------------------------------
# QuEST trust mask


def _int8_channel_case(seed=2):
    x = _x((8, 64), scale=2.0, seed=seed)
    return x, _w(x.shape, seed + 10)


def test_trust_nearest_masks_nothing_in_range():
    x, w = _int8_channel_case()
    y, g = _fq_grad("int8@channel", x, w, estimator="trust")
    scale = np.asarray(jax.jit(lambda v: bs.quantize(v, "int8@channel"))(jnp.asarray(x)).scales)
    masked = np.abs(x - y) > scale / np.float32(2)
    assert masked.sum() == 0
    np.testing.assert_array_equal(g, w)


def test_trust_stochastic_masks_far_roundings():
    x, w = _int8_channel_case()
    key = jax.random.key(17)
    scale = np.asarray(jax.jit(lambda v: bs.quantize(v, "int8@channel"))(jnp.asarray(x)).scales)
    assert scale.shape == (8, 1) and scale.dtype == np.float32

    y1, g1 = _fq_grad("int8@channel", x, w, rounding="stochastic", key=key, estimator="trust")
    masked1 = np.abs(x - y1) > scale / np.float32(2)
    # Rounded to the farther neighbour: expected fraction E[min(f, 1-f)] = 1/4 for uniform f.
    assert 0.15 < masked1.mean() < 0.35, masked1.mean()
    np.testing.assert_array_equal(g1, np.where(masked1, 0.0, w).astype(np.float32))

    y2, g2 = _fq_grad("int8@channel", x, w, rounding="stochastic", key=key,
                      estimator=bs.TrustMask(factor=2.0))
    np.testing.assert_array_equal(y1, y2)  # same key, same forward
    masked2 = np.abs(x - y2) > scale
    assert masked2.sum() < masked1.sum()
    assert masked2.sum() == 0  # SR moves an in-range value by less than one step
    np.testing.assert_array_equal(g2, np.where(masked2, 0.0, w).astype(np.float32))

    # TrustMask(1.0) is the "trust" default.
    _, g3 = _fq_grad("int8@channel", x, w, rounding="stochastic", key=key,
                     estimator=bs.TrustMask(1.0))
    np.testing.assert_array_equal(g3, g1)


def test_trust_fp8_cast_masks_beyond_half_a_step_past_max():
    # fp8_e4m3: top binade step is 32, so values up to 448 + 16 are within half a step of 448.
    x = np.array([0.0, 1.0, -300.0, 448.0, 460.0, 464.0, 464.0001, 465.0, -470.0, 1000.0,
                  -1e6, 0.013], np.float32)
    w = _w(x.shape)
    y, g = _fq_grad("fp8_e4m3", x, w, estimator="trust")
    keep = np.abs(x) <= 464.0
    np.testing.assert_array_equal(g, np.where(keep, w, 0.0).astype(np.float32))


# --------------------------------------------------------------------------------------------
# jit / vmap / grad together


def _vmap_vs_loop(spec, estimator):
    xs = _x((3, 4, 64), scale=2.0, seed=5)
    xs[:, 0, 0] = 1e3  # something to clip / mask
    w = jnp.asarray(_w((4, 64)))
    keys = jax.random.split(jax.random.key(1), 3)

    def loss(v, k):
        y = bs.fake_quant(v, spec, rounding="stochastic", key=k, estimator=estimator)
        return jnp.sum(w * y * y)

    batched = np.asarray(jax.jit(jax.vmap(jax.grad(loss)))(jnp.asarray(xs), keys))
    single = jax.jit(jax.grad(loss))
    # The forward under vmap equals the forward per example, bit for bit.
    fq = jax.jit(lambda v, k: bs.fake_quant(v, spec, rounding="stochastic", key=k))
    yb = np.asarray(jax.jit(jax.vmap(fq))(jnp.asarray(xs), keys))
    for i in range(3):
        yi = np.asarray(fq(jnp.asarray(xs[i]), keys[i]))
        bad = np.argwhere(yb[i] != yi)
        assert bad.size == 0, (
            f"{spec}: vmap forward differs from the per-example forward at {bad[:4].tolist()}: "
            f"{yb[i][tuple(bad[0])]!r} vs {yi[tuple(bad[0])]!r}")
        one = np.asarray(single(jnp.asarray(xs[i]), keys[i]))
        # 2 w y may be evaluated in a different order by the two programs: 1-ulp tolerance, but
        # the masked (zero) entries must agree exactly.
        np.testing.assert_array_equal(batched[i] == 0, one == 0)
        np.testing.assert_allclose(batched[i], one, rtol=3e-7, atol=0)
    return batched


@pytest.mark.parametrize("estimator", ["ste", "clipped_ste", "trust"])
def test_jit_vmap_grad_equals_loop(estimator):
    batched = _vmap_vs_loop("mxfp4", estimator)
    if estimator != "ste":
        assert np.all(batched[:, 0, 0] == 0)


@pytest.mark.parametrize("spec", ["int8@channel", "int4@g32", "int4@g32+mse", "nvfp4"])
def test_jit_vmap_grad_equals_loop_float32_scales(spec):
    _vmap_vs_loop(spec, "clipped_ste")


@pytest.mark.parametrize("spec,qmax", [("int8@channel", 127), ("int4@g32", 7)])
def test_scales_correctly_rounded_under_vmap(spec, qmax):
    """torchao semantics: scale = amax / qmax, a correctly rounded float32 division, with or
    without vmap."""
    xs = _x((3, 4, 64), scale=2.0, seed=5)
    qf = jax.jit(lambda v: bs.quantize(v, spec))
    group = 64 if spec.endswith("channel") else 32
    ref = (np.abs(xs).reshape(3, 4, 64 // group, group).max(-1) / np.float32(qmax))
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(qf(jnp.asarray(xs[i])).scales), ref[i])
    batched = np.asarray(jax.jit(jax.vmap(qf))(jnp.asarray(xs)).scales)
    np.testing.assert_array_equal(batched, ref)


# --------------------------------------------------------------------------------------------
# LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020)

QMIN, QMAX = -8, 7


def _lsq_case(seed=3):
    s = np.float32(0.25)
    x = _x((8, 64), scale=1.0, seed=seed)
    # Exact range ends (inside), just outside, and far outside.
    x[0, :6] = np.array([QMIN, QMAX, QMIN - 0.01, QMAX + 0.01, 100.0, -100.0], np.float32) * s
    return x, s


def _lsq_np(x, s, g, gscale):
    """Forward and gradients from the definition (numpy; float64 for the sums)."""
    v = x / s  # float32 division, correctly rounded
    y = np.clip(np.rint(v), QMIN, QMAX).astype(np.float32) * s
    inside = (v >= QMIN) & (v <= QMAX)
    dx = np.where(inside, g, 0.0).astype(np.float32)
    per = np.where(inside, np.rint(v).astype(np.float64) - v.astype(np.float64),
                   np.where(v < QMIN, QMIN, QMAX)) * g.astype(np.float64) * gscale
    return y, dx, per


def _lsq_grads(x, step, g, **kw):
    def loss(xv, sv):
        return jnp.sum(jnp.asarray(g) * bs.lsq_fake_quant(xv, sv, "int4", **kw))

    y = jax.jit(lambda xv, sv: bs.lsq_fake_quant(xv, sv, "int4", **kw))(jnp.asarray(x),
                                                                          jnp.asarray(step))
    dx, ds = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(step))
    return np.asarray(y), np.asarray(dx), np.asarray(ds)


def test_lsq_forward_and_gradients_scalar_step():
    x, s = _lsq_case()
    g = _w(x.shape)
    y, dx, ds = _lsq_grads(x, s, g)
    gscale = 1.0 / math.sqrt(x.size * QMAX)  # one step shared by every element
    y_ref, dx_ref, per = _lsq_np(x, s, g, gscale)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    assert dx[0, 0] == g[0, 0] and dx[0, 1] == g[0, 1] and np.all(dx[0, 2:6] == 0)
    assert ds.shape == ()
    np.testing.assert_allclose(ds, per.sum(), rtol=1e-5, atol=1e-6 * np.abs(per).sum())


def test_lsq_per_channel_step_and_explicit_grad_scale():
    x, _ = _lsq_case(seed=6)
    s = np.linspace(0.05, 0.4, 8, dtype=np.float32).reshape(8, 1)
    g = _w(x.shape, seed=7)
    y, dx, ds = _lsq_grads(x, s, g)
    gscale = 1.0 / math.sqrt(x.shape[1] * QMAX)  # 64 elements per step
    y_ref, dx_ref, per = _lsq_np(x, s, g, gscale)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    assert ds.shape == (8, 1) and ds.dtype == np.float32
    np.testing.assert_allclose(ds, per.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-5)
    # grad_scale is a plain multiplier of the step gradient only.
    _, dx1, ds1 = _lsq_grads(x, s, g, grad_scale=1.0)
    np.testing.assert_array_equal(dx1, dx_ref)
    np.testing.assert_allclose(ds1, per.sum(axis=1, keepdims=True) / gscale, rtol=1e-5, atol=1e-4)


def test_lsq_matches_paper_reference_implementation():
    """Esser et al. 2020, appendix: grad_scale + round_pass written with stop_gradient."""
    x, _ = _lsq_case(seed=8)
    s = np.array([[0.2], [0.3], [0.25], [0.1], [0.5], [0.15], [0.22], [0.35]], np.float32)
    g = _w(x.shape, seed=9)

    def ref(xv, sv):
        gs = 1.0 / math.sqrt(xv.shape[1] * QMAX)
        sv = jax.lax.stop_gradient(sv - sv * gs) + sv * gs  # grad_scale
        v = jnp.clip(xv / sv, QMIN, QMAX)
        v = jax.lax.stop_gradient(jnp.round(v) - v) + v  # round_pass
        return jnp.sum(jnp.asarray(g) * v * sv)

    dx_r, ds_r = jax.jit(jax.grad(ref, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(s))
    _, dx, ds = _lsq_grads(x, s, g)
    # Away from the range ends (where the clip's tie convention may differ) dx agrees up to the
    # reference's rounding of g * (1 / s) * s; the zero pattern is identical.
    v = x / s
    interior = (v > QMIN + 1e-3) & (v < QMAX - 1e-3) | (v < QMIN - 1e-3) | (v > QMAX + 1e-3)
    dx_r = np.asarray(dx_r)
    np.testing.assert_array_equal(dx[interior] == 0, dx_r[interior] == 0)
    np.testing.assert_allclose(dx[interior], dx_r[interior], rtol=1e-6)
    np.testing.assert_allclose(ds, np.asarray(ds_r), rtol=1e-4, atol=1e-5)


def test_lsq_gradients_match_finite_differences():
    """Central differences of a smooth loss of the LSQ surrogate s * (clip(x/s) + c0), where
    c0 = round(v0) - v0 is frozen at the evaluation point (the straight-through round): this
    surrogate equals the LSQ forward at s0 and its exact derivative is LSQ's eq. 3."""
    rng = _rng(11)
    s0 = 0.3
    v = rng.uniform(-10.0, 9.0, size=(4, 64))
    # Keep v away from rounding boundaries (frac 0.5) and from the clip ends.
    frac = v - np.floor(v)
    v = np.where(np.abs(frac - 0.5) < 0.1, v + 0.3, v)
    v = np.where(np.abs(v - QMAX) < 0.1, v + 0.3, v)
    v = np.where(np.abs(v - QMIN) < 0.1, v - 0.3, v)
    x = (v * s0).astype(np.float32)
    s = np.float32(s0)
    g = _w(x.shape, seed=12)

    def lib_loss(xv, sv):
        y = bs.lsq_fake_quant(xv, sv, "int4", grad_scale=1.0)
        return jnp.sum(jnp.asarray(g) * y + 0.5 * y * y)

    dx, ds = jax.jit(jax.grad(lib_loss, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(s))

    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    v0 = x64 / np.float64(s)
    inside0 = (v0 >= QMIN) & (v0 <= QMAX)
    c0 = np.where(inside0, np.rint(v0) - v0, 0.0)

    def surrogate(xv, sv):
        return sv * (np.clip(xv / sv, QMIN, QMAX) + c0)

    def loss_el(xv, sv):
        y = surrogate(xv, sv)
        return g64 * y + 0.5 * y * y

    y_lib = np.asarray(jax.jit(lambda a, b: bs.lsq_fake_quant(a, b, "int4"))(x, s))
    np.testing.assert_allclose(surrogate(x64, np.float64(s)), y_lib, rtol=1e-6, atol=1e-6)

    h = 1e-6
    s64 = np.float64(s)
    fd_s = (loss_el(x64, s64 + h).sum() - loss_el(x64, s64 - h).sum()) / (2 * h)
    np.testing.assert_allclose(float(ds), fd_s, rtol=2e-4)
    hx = 1e-6
    fd_x = (loss_el(x64 + hx, np.float64(s)) - loss_el(x64 - hx, np.float64(s))) / (2 * hx)
    np.testing.assert_allclose(np.asarray(dx), fd_x, rtol=1e-4, atol=1e-5)
    assert (~inside0).sum() > 10  # both regions exercised
    assert np.all(np.asarray(dx)[~inside0] == 0)


# --------------------------------------------------------------------------------------------
# Gaussian pseudo-quantization (Défossez et al. 2021)


def test_gaussian_pseudo_quant_identity_gradient_and_determinism():
    x = _x((4, 64), seed=13)
    w = _w(x.shape)
    key = jax.random.key(4)

    def loss(v):
        return jnp.sum(jnp.asarray(w) * bs.gaussian_pseudo_quant(v, "int8@tensor", key))

    g = jax.jit(jax.grad(loss))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(g), w)
    f = jax.jit(lambda v, k: bs.gaussian_pseudo_quant(v, "int8@tensor", k))
    a = np.asarray(f(jnp.asarray(x), key))
    b = np.asarray(f(jnp.asarray(x), jax.random.key(4)))
    c = np.asarray(f(jnp.asarray(x), jax.random.key(5)))
    np.testing.assert_array_equal(a, b)
    assert np.sum(a != c) > 200
    assert a.dtype == np.float32 and a.shape == x.shape


def test_gaussian_pseudo_quant_noise_statistics():
    x = _x((4096,), seed=14)
    n_keys = 16
    keys = jax.random.split(jax.random.key(21), n_keys)
    f = jax.jit(jax.vmap(lambda k: bs.gaussian_pseudo_quant(jnp.asarray(x), "int8@tensor", k)))
    y = np.asarray(f(keys)).astype(np.float64)
    step = np.float64(np.asarray(
        jax.jit(lambda v: bs.quantize(v, "int8@tensor"))(jnp.asarray(x)).scales))
    np.testing.assert_allclose(step, np.abs(x).max() / 127, rtol=1e-6)
    z = (y - x[None].astype(np.float64)) / step  # should be N(0, 1/12)
    sd = z.std()
    target = 1 / math.sqrt(12)
    assert abs(sd / target - 1) <= 0.05, (sd, target)
    assert abs(z.mean()) <= 5 * target / math.sqrt(z.size), z.mean()
    # Gaussian, not uniform rounding noise: kurtosis 3 (uniform would be 1.8).
    kurt = np.mean((z - z.mean()) ** 4) / z.var() ** 2
    assert abs(kurt - 3.0) < 0.15, kurt
    # std_factor scales it.
    f2 = jax.jit(lambda k: bs.gaussian_pseudo_quant(jnp.asarray(x), "int8@tensor", k,
                                                     std_factor=0.5))
    z2 = (np.asarray(f2(keys[0])).astype(np.float64) - x) / step
    assert abs(z2.std() / 0.5 - 1) <= 0.05


# --------------------------------------------------------------------------------------------
# Hadamard rotation + fake_quant


def _sylvester(n: int) -> np.ndarray:
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    pc = np.vectorize(lambda v: bin(v).count("1"))(i & j)
    return ((-1.0) ** pc) / math.sqrt(n)


def test_hadamard_and_fake_quant_compose_under_jit_and_grad():
    x = _x((4, 64), scale=2.0, seed=15)
    x[1, 3] = 40.0  # an outlier for the rotation to spread
    w = _w(x.shape, seed=16)
    key = jax.random.key(2)

    def rotated_fq(v, estimator="ste", k=key):
        u = bs.hadamard_transform(v, 32, key=k)
        q = bs.fake_quant(u, "mxfp4", estimator=estimator)
        return bs.hadamard_transform(q, 32, key=k, inverse=True)

    def loss(v, estimator):
        return jnp.sum(jnp.asarray(w) * rotated_fq(v, estimator))

    # STE through an orthogonal rotation and its inverse: the gradient is w.
    g = np.asarray(jax.jit(jax.grad(loss), static_argnums=1)(jnp.asarray(x), "ste"))
    np.testing.assert_allclose(g, w, atol=1e-5)
    y_jit = np.asarray(jax.jit(rotated_fq)(jnp.asarray(x)))
    # The rotated quantization error is that of mxfp4 (at most half a step of 2^k * 2 per block)
    # and non-zero.
    assert 1e-3 < np.max(np.abs(y_jit - x)) < 0.5 * np.abs(x).max()

    # Clipped STE without random signs: dL/dx = H^T (mask * H w) per block of 32 (numpy H).
    def loss_plain(v):
        u = bs.hadamard_transform(v, 32)
        q = bs.fake_quant(u, "mxfp4", estimator="clipped_ste")
        return jnp.sum(jnp.asarray(w) * bs.hadamard_transform(q, 32, inverse=True))

    g2 = np.asarray(jax.jit(jax.grad(loss_plain))(jnp.asarray(x)))
    H = _sylvester(32)
    xb = x.astype(np.float64).reshape(4, 2, 32)
    u = np.einsum("ij,rbj->rbi", H, xb).astype(np.float32).reshape(4, 64)
    codes = np.asarray(
        jax.jit(lambda v: bs.quantize(v, "mxfp4"))(jnp.asarray(u)).scales).astype(np.int64)
    scale = np.repeat(np.ldexp(1.0, codes - 127), 32, axis=-1)
    mask = (np.abs(u) / scale <= 6.0).reshape(4, 2, 32)
    hw = np.einsum("ij,rbj->rbi", H, w.astype(np.float64).reshape(4, 2, 32))
    g_ref = np.einsum("ji,rbj->rbi", H, mask * hw).reshape(4, 64)
    assert (~mask).sum() >= 1
    np.testing.assert_allclose(g2, g_ref, atol=1e-5)
