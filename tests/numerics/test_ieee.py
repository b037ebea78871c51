"""`bitscale.numerics.ieee` against float64 numpy arithmetic rounded once to float32 with DAZ / FTZ.

The reference: flush subnormal float32 operands to zero, compute in float64 (products of float32
values are exact there; a float64 quotient or sum rounded to float32 is the correctly rounded
float32 result, since 53 >= 2 * 24 + 2), round to float32 with an unbounded exponent, and flush
results below 2^-126 to zero. That is the float32 arithmetic of XLA:CPU and TPUs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale.numerics import ieee

from tests.numerics import np_reference as ref

TINY = np.float32(2.0**-126)
_EDGE = np.array([
    0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 1.5, 3.0, 0.1, 1e-45, -1e-45,
    1.1754942e-38, 1.1754944e-38, 5.877472e-39, 3.4028235e38, -3.4028235e38, 1.7014118e38,
    2.0**-126, 2.0**-127, 2.0**-149, 2.0**127, 448.0, 6.0, 7.0, 127.0, 2688.0, 1e-5, 1e30,
    2.0**-63, 1.5 * 2.0**-63, 2.0**63, (2 - 2.0**-23) * 2.0**-64,
], np.float32)


_flush = ref.flush
reference = ref.ftz_op


def _patterns(n: int, seed: int) -> np.ndarray:
    """Random float32 bit patterns, 40% of them with an exponent field near the extremes."""
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    fields = rng.choice([0, 0, 1, 2, 3, 0xFF, 0xFE, 0xFD, 127, 126, 64, 190, 63], n)
    pick = rng.random(n) < 0.4
    b[pick] = (b[pick] & np.uint32(0x807FFFFF)) | (fields[pick].astype(np.uint32) << 23)
    return b.view(np.float32)


def _operands(n: int = 400_000):
    a, b = _patterns(n, 0), _patterns(n, 1)
    ea, eb = np.meshgrid(_EDGE, _EDGE)
    # Near-cancelling pairs, and pairs whose product or quotient lands at the 2^-126 boundary.
    rng = np.random.default_rng(2)
    near = (a.view(np.uint32) ^ rng.integers(0, 64, n).astype(np.uint32)).view(np.float32)
    edge_mant = rng.integers(0, 2**23, n).astype(np.uint32)
    half = (edge_mant | np.uint32(63 << 23)).view(np.float32)  # ~2^-64
    other = ((edge_mant ^ np.uint32(0x2AAAAA)) | np.uint32(62 << 23)).view(np.float32)
    return (np.concatenate([a, ea.ravel(), a, half]),
            np.concatenate([b, eb.ravel(), -near, other]))


def _assert_same(got, want):
    got = np.asarray(got)
    ok = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert ok.all(), f"{(~ok).sum()} mismatches, e.g. got {got[~ok][:4]} want {want[~ok][:4]}"
    nan_bits = got[np.isnan(got)].view(np.uint32)
    assert (nan_bits == ieee.QNAN_BITS).all(), "NaN results must be the canonical quiet NaN"


@pytest.mark.parametrize("name", ["mul", "div", "add", "sub"])
def test_binary_ops_equal_the_ftz_reference(name):
    a, b = _operands()
    _assert_same(jax.jit(getattr(ieee, name))(a, b), reference(name, a, b))


@pytest.mark.parametrize("name", ["mul", "div"])
def test_portable_ops_equal_the_reference(name):
    """Pallas kernels, GPUs and TPUs use the emulations (`ieee.portable`); on CPU the XLA path
    uses the hardware. Both must be the same function."""
    a, b = _operands(200_000)

    def portable(u, v):
        with ieee.portable():
            return getattr(ieee, name)(u, v)
    _assert_same(jax.jit(portable)(a, b), reference(name, a, b))


def test_ops_broadcast_and_take_python_scalars():
    x = jnp.asarray(_EDGE)
    _assert_same(ieee.div(1.0, x), reference("div", np.float32(1.0), _EDGE))
    _assert_same(ieee.mul(x[:, None], x[None, :]),
                 reference("mul", _EDGE[:, None], _EDGE[None, :]))


def test_signed_zero_rules():
    pz, nz = np.float32(0.0), np.float32(-0.0)
    sign = lambda v: bool(np.signbit(np.asarray(v)))
    assert not sign(ieee.add(pz, nz)) and sign(ieee.add(nz, nz))
    assert not sign(ieee.sub(np.float32(1.5), np.float32(1.5)))
    assert sign(ieee.mul(nz, np.float32(3.0))) and sign(ieee.div(np.float32(-1.0), np.inf))
    assert sign(ieee.mul(np.float32(-2.0**-70), np.float32(2.0**-70)))  # flushed, signed


def _np_pairwise(x: np.ndarray) -> np.float32:
    """The documented order: pad with +0 to a power of two, add adjacent pairs level by level,
    subnormal inputs and partial sums flushed to zero."""
    x = _flush(x)
    size = 1 << max(len(x) - 1, 0).bit_length()
    x = np.concatenate([x, np.zeros(size - len(x), np.float32)])
    with np.errstate(all="ignore"):
        while len(x) > 1:
            x = _flush(x[0::2] + x[1::2])
    return x[0]


@pytest.mark.parametrize("n", [1, 2, 5, 33, 1000])
def test_pairwise_sum_order(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((3, n)) * np.exp2(rng.integers(-140, 20, (3, n)))).astype(np.float32)
    got = np.asarray(jax.jit(lambda v: ieee.pairwise_sum(v, axis=-1))(jnp.asarray(x)))
    want = np.array([_np_pairwise(r) for r in x], np.float32)
    _assert_same(got, want)
    kept = ieee.pairwise_sum(jnp.asarray(x.T), axis=0, keepdims=True)
    assert kept.shape == (1, 3)
    _assert_same(kept[0], want)


def test_pairwise_sum_of_non_negative_terms_is_the_ieee_sum():
    """Flushing changes nothing once the total is far above the subnormal range."""
    rng = np.random.default_rng(7)
    x = np.abs(rng.standard_normal(777)).astype(np.float32)
    x[::5] = np.float32(3e-39)  # subnormal terms
    level = np.concatenate([x, np.zeros(1024 - len(x), np.float32)])
    while len(level) > 1:
        level = level[0::2] + level[1::2]
    _assert_same(ieee.pairwise_sum(jnp.asarray(x)), np.float32(level[0]))


def test_min_max_exact_on_subnormals_zero_signs_and_nan():
    a = jnp.asarray(np.array([1e-45, -0.0, 0.0, np.nan, -2.0], np.float32))
    b = jnp.asarray(np.array([2e-45, 0.0, -0.0, 1.0, np.nan], np.float32))
    mx, mn = np.asarray(ieee.maximum(a, b)), np.asarray(ieee.minimum(a, b))
    assert mx[0] == np.float32(2e-45) and mn[0] == np.float32(1e-45)
    assert not np.signbit(mx[1]) and not np.signbit(mx[2])
    assert np.signbit(mn[1]) and np.signbit(mn[2])
    assert np.isnan(mx[3:]).all() and np.isnan(mn[3:]).all()
    v = jnp.asarray(np.array([[3e-45, 1e-45, -0.0], [0.0, -1e-45, -0.0]], np.float32))
    np.testing.assert_array_equal(np.asarray(ieee.reduce_max(v, axis=1)).view(np.uint32),
                                  np.array([3e-45, 0.0], np.float32).view(np.uint32))
    np.testing.assert_array_equal(np.asarray(ieee.reduce_min(v, axis=1)).view(np.uint32),
                                  np.array([-0.0, -1e-45], np.float32).view(np.uint32))


def test_less_equal_is_exact():
    a = np.array([1e-45, 2e-45, -0.0, 0.0, np.nan, 1.0, -1e-45], np.float32)
    b = np.array([2e-45, 1e-45, 0.0, -0.0, 1.0, np.nan, 0.0], np.float32)
    with np.errstate(invalid="ignore"):
        want = a <= b
    np.testing.assert_array_equal(np.asarray(ieee.less_equal(a, b)), want)
