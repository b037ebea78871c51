"""MS-EDEN: unbiased NVFP4 fake quantization with the randomness moved to the block scales.

`ms_eden` quantizes data that the caller has already rotated with a randomized Hadamard transform
(`transforms.hadamard_transform`, block ``group``) along ``axis``:

1. Tensor scale (two-level specs): ``s_t = amax_t / (256 * 6)`` (1 where ``amax_t == 0``): block
   scales stay at or below 256, a factor 1.75 below E4M3's 448, so that corrected ones can grow (the
   authors' kernel: ``scales_max = 255.99``, "eden needs space to rescale up"). Single-level
   specs: ``s_t = 1``.
2. Block scales exactly as `fake_quant` computes NVFP4's (`scaling.float_scales`):
   ``s_b = ue4m3_rtn(clamp(amax_b / 6 / s_t, 2^-6, 448))``; elements ``v = x * ((1 / s_t) / s_b)``
   (reciprocal multiplication, as torchao and bitscale's NVFP4) rounded to nearest-even on the
   FP4 E2M1 grid, saturating at +-6: ``q``; the RTN value is ``yhat = q * (s_t * s_b)``.
3. Per correction group of ``group`` consecutive elements (``group / 16`` blocks):
   ``S = sum(x^2) / sum(x * yhat)``, float32 products summed in `ieee.pairwise_sum`'s fixed order;
   ``S = 1`` where the denominator is 0 or the ratio is not finite. This is EDEN's unbiasing
   factor ``||x||^2 / <x, Q(x)>`` in the original units. The authors' Triton kernel
   (``eden_1x16s_fp4_kernel``) sums ``x / (s_b s_t)`` and ``q`` instead, i.e. per-block scaled
   units; that equals this ratio only when every block scale in the group is the same.
4. Corrected block scales ``s_b' = SR_ue4m3(s_b * S)``: stochastic rounding onto the full UE4M3
   grid (subnormals included), unbiased between the two neighbours of ``s_b * S``, one random word
   per block from the counter hash of (key, block index) over the scale array's shape
   (`bits.random_bits`). Values above 448 saturate to 448; that is the only biased case, and it
   needs ``s_b * S > 448`` (with the tensor scale ``s_b <= 256`` so ``S > 1.75``, which is rare).
5. Output ``q * (s_t * s_b')`` (`ieee.mul`, the order `dequantize` uses for two-level scales), cast
   back to x's dtype.

Every float operation is `ieee` float32 and the rounding is done on the bits, so the result is the
same on every backend. The gradient is the identity (straight-through).

Unbiasedness. Given the rotation, ``E[y] = S * yhat`` per correction group (the scale rounding is
unbiased), so ``<x_g, E[y_g]> = ||x_g||^2`` holds exactly for every group. EDEN's theorem makes
``E[y] = x`` coordinate by coordinate after undoing the rotation when the rotation is Haar-random
(tests/numerics/test_eden.py checks this). A randomized Hadamard transform (fixed H, random signs)
is not Haar: measured on Gaussian data with outliers, 128-blocks without a dominant outlier show
no bias at 2000 keys (a trace at 32000), while a block dominated by one outlier keeps a
per-coordinate bias that moves energy from the outlier to the other coordinates: for an outlier
-50 among N(0, 1) values, E[y] ~ -49.89 there (RTN: -49.49) and about 1.04 x elsewhere in the
block (RTN: 1.03 x).

References:
  Panferov, Schultheis, Tabesh, Alistarh, "Quartet II: Accurate LLM Pre-Training in NVFP4 by
    Improved Unbiased Gradient Estimation", arXiv:2601.22813; code IST-DASLab/Quartet-II,
    ``src/models/quantization/quantizers/eden.py`` and ``nvfp4_triton.py``
    (``eden_1x16s_fp4_kernel``).
  Vargaftik, Ben Basat, Portnoy, Mendelson, Ben-Itzhak, Mitzenmacher, "EDEN: Communication-Efficient
    and Robust Distributed Mean Estimation for Federated Learning", ICML 2022.
  NVIDIA, "Pretraining Large Language Models with NVFP4", arXiv:2509.25149 (NVFP4 two-level scales).
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bitscale.numerics import bits as B
from bitscale.numerics import elementwise as E
from bitscale.numerics import ieee
from bitscale.numerics import scaling as S
from bitscale.numerics import validate as V
from bitscale.numerics.formats import FloatFormat
from bitscale.numerics.specs import QuantSpec, resolve_spec

__all__ = ["EDEN_SCALE_HEADROOM_MAX", "EdenParts", "block_random_bits", "ms_eden", "ms_eden_groups"]

#: The largest block scale the two-level tensor scale aims at (instead of UE4M3's 448).
EDEN_SCALE_HEADROOM_MAX: float = 256.0
_BLOCK = 16


class EdenParts(NamedTuple):
    """Intermediate values of `ms_eden_groups`, in group layout ``[rows, blocks, 16]`` /
    ``[rows, blocks, 1]`` (the tensor scale is a scalar array)."""

    y: jax.Array  # float32 output q * (s_t * s_b')
    q: jax.Array  # float32 FP4 values (on the E2M1 grid, +-6 at most)
    s_t: jax.Array  # float32 tensor scale (1.0 for single-level specs)
    s_b: jax.Array  # float32 RTN UE4M3 block scale
    corr: jax.Array  # float32 EDEN factor S, repeated for every block of its correction group
    s_b_corr: jax.Array  # float32 corrected, stochastically rounded UE4M3 block scale


def _check_spec(spec) -> QuantSpec:
    name = getattr(spec, "name", spec)
    resolved = resolve_spec(spec)
    ok = (isinstance(resolved, QuantSpec) and isinstance(resolved.elem, FloatFormat)
          and resolved.elem.name == "fp4_e2m1" and resolved.granularity == "block"
          and resolved.block_size == _BLOCK and isinstance(resolved.scale_format, FloatFormat)
          and resolved.scale_format.name == "ue4m3" and resolved.clip == "absmax")
    if not ok:
        raise ValueError(
            f"ms_eden supports NVFP4 specs only (fp4_e2m1 elements in blocks of {_BLOCK} with "
            f"ue4m3 block scales and absmax clipping): 'nvfp4' (two-level) or 'nvfp4_single'; "
            f"got spec {name!r}")
    return resolved


def _check_group(group, n: int, axis: int, shape) -> int:
    if isinstance(group, bool):
        raise TypeError(f"group must be an int, got {group!r}")
    try:
        group = operator.index(group)
    except TypeError:
        raise TypeError(f"group must be an int, got {type(group).__name__}: {group!r}") from None
    if group < _BLOCK or group % _BLOCK:
        raise ValueError(
            f"group must be a positive multiple of the block size {_BLOCK} (e.g. 128, the "
            f"Hadamard size), got {group}")
    if n % group:
        raise ValueError(
            f"group {group} does not divide axis {axis} of length {n} (shape {tuple(shape)}); "
            f"use a group that is a multiple of {_BLOCK} dividing {n}")
    return group


def ms_eden_groups(xg: jax.Array, spec: QuantSpec, rand: jax.Array, group: int) -> EdenParts:
    """MS-EDEN on float32 blocks ``[rows, blocks, 16]`` with one uint32 random word per block
    (``rand``: ``[rows, blocks, 1]``); ``group`` elements (``group / 16`` consecutive blocks of a
    row) share a correction factor. Returns every intermediate value (see `EdenParts`)."""
    rows, nblocks, bs = xg.shape
    elem, sf = spec.elem, spec.scale_format
    amax_b = S.amax_bits(xg)
    amax = B.from_bits(amax_b)
    if spec.tensor_scale:
        t_amax = B.from_bits(jnp.max(amax_b))
        s_t = ieee.div(t_amax, EDEN_SCALE_HEADROOM_MAX * elem.max_value)
        s_t = jnp.where(B.to_bits(t_amax) == 0, jnp.float32(1.0), s_t)
        sc = S.float_scales(xg, amax, spec, s_t, None)
    else:
        s_t = jnp.float32(1.0)
        sc = S.float_scales(xg, amax, spec, None, None)
    s_b = sc.block_scale
    q = E.cast_float(ieee.mul(xg, sc.enc), elem)
    yhat = ieee.mul(q, sc.dec)

    per = group // bs
    ncg = nblocks // per
    xc = xg.reshape(rows, ncg, group)
    num = ieee.pairwise_sum(ieee.mul(xc, xc), axis=-1, keepdims=True)
    den = ieee.pairwise_sum(ieee.mul(xc, yhat.reshape(rows, ncg, group)), axis=-1, keepdims=True)
    ratio = ieee.div(num, den)
    bad = (B.to_bits(den) & B.U32(B.ABS_MASK)) == 0
    bad = bad | ((B.to_bits(ratio) & B.U32(B.ABS_MASK)) >= B.U32(B.INF_BITS))
    corr = jnp.where(bad, jnp.float32(1.0), ratio)
    corr = jnp.repeat(corr, per, axis=1)  # [rows, blocks, 1]

    s_b_corr = E.cast_float(ieee.mul(s_b, corr), sf, rand)
    dec = ieee.mul(jnp.reshape(s_t, (1, 1, 1)), s_b_corr)
    y = ieee.mul(q, dec)
    return EdenParts(y, q, jnp.asarray(s_t, jnp.float32), s_b, corr, s_b_corr)


def _forward(x, rand, spec, axis, group):
    g = S.grouping(x.shape, spec, axis)
    xg = g.to_groups(E.to_f32(x))
    out = ms_eden_groups(xg, spec, g.scales_in(rand), group)
    return E.from_f32(ieee.canonical_nan(g.from_groups(out.y)), x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _ms_eden(x, rand, spec, axis, group):
    return _forward(x, rand, spec, axis, group)


def _ms_eden_fwd(x, rand, spec, axis, group):
    return _forward(x, rand, spec, axis, group), None


def _ms_eden_bwd(spec, axis, group, res, g):
    return g, None


_ms_eden.defvjp(_ms_eden_fwd, _ms_eden_bwd)
# Compiled as one program even when called eagerly (op-by-op dispatch of the bit-level float32
# arithmetic costs seconds); inside an outer jit it is inlined.
_ms_eden_jit = jax.jit(_ms_eden, static_argnums=(2, 3, 4))


def block_random_bits(key: jax.Array, shape: tuple[int, ...], axis: int) -> jax.Array:
    """The uint32 words `ms_eden` draws: one per 16-element block, a counter hash of (key,
    row-major index in the scale array, whose ``axis`` holds the blocks)."""
    scale_shape = list(shape)
    scale_shape[axis] = shape[axis] // _BLOCK
    return B.random_bits(key, tuple(scale_shape))


def ms_eden(x: jax.Array, key: jax.Array, *, axis: int = -1, spec: "str | QuantSpec" = "nvfp4",
            group: int = 128) -> jax.Array:
    """MS-EDEN fake quantization of Hadamard-rotated ``x`` to NVFP4 (unbiased over the rotation
    and the key); returns x's dtype and shape. See the module docstring for the algorithm.

    ``x`` must already be rotated by a randomized Hadamard transform of size ``group`` along
    ``axis`` (e.g. ``hadamard_transform(x, 128, key=k1, axis=axis)``); the unbiasedness is over
    that rotation's random signs and ``key``, after undoing the rotation. ``E[s_b'] = s_b * S``
    holds exactly except where ``s_b * S`` exceeds 448 (saturated).

    Special values: a correction group whose sums are not finite (a NaN or Inf input, or float32
    overflow of ``sum(x^2)``) or whose RTN values are all zero gets ``S = 1``, i.e. it is left
    at the RTN value, which is what `fake_quant` with the same scales gives: a NaN block is NaN,
    an Inf element of a single-level spec saturates to ``+-6 * s_b`` (= +-2688). With the
    two-level spec any NaN or Inf makes ``s_t`` NaN / Inf and the whole output NaN, as
    ``fake_quant(x, "nvfp4")`` does.

    Args:
      x: float32, bfloat16 or float16 array.
      key: a `jax.random` key (required); one uint32 word per 16-element block is drawn from it.
      axis: the axis along which blocks and correction groups run.
      spec: ``"nvfp4"`` (two-level, tensor scale ``amax / (256 * 6)``) or ``"nvfp4_single"``
        (UE4M3 block scales only; no headroom, so corrected scales of blocks whose amax is near
        6 * 448 can saturate), or an equivalent `QuantSpec`.
      group: elements per correction group (a multiple of 16 dividing ``x.shape[axis]``): the
        Hadamard block size the data was rotated with.

    Returns:
      The fake-quantized array; its gradient is the identity (straight-through estimator).

    Raises:
      TypeError / ValueError naming the bad argument: a non-float ``x``, a missing or malformed
      ``key``, an out-of-range ``axis``, a spec other than NVFP4, a bad ``group``.

    References:
      Panferov et al., "Quartet II: Accurate LLM Pre-Training in NVFP4 by Improved Unbiased
        Gradient Estimation", arXiv:2601.22813 (MS-EDEN); IST-DASLab/Quartet-II ``eden.py``.
      Vargaftik et al., "EDEN: Communication-Efficient and Robust Distributed Mean Estimation
        for Federated Learning", ICML 2022.
    """
    spec = _check_spec(spec)
    x = V.check_input(x)
    axis = V.check_axis(axis, x.ndim)
    if key is None:
        raise ValueError("ms_eden needs a PRNG key for its stochastic scale rounding: pass "
                         "key=jax.random.key(seed)")
    B.key_words(key)  # a TypeError naming a malformed key
    if x.ndim == 0:
        raise ValueError("ms_eden needs an array with at least one axis, got a scalar")
    n = x.shape[axis]
    group = _check_group(group, n, axis, x.shape)
    if x.size == 0:
        return x
    rand = block_random_bits(key, tuple(x.shape), axis)
    return _ms_eden_jit(x, rand, spec, axis, group)
