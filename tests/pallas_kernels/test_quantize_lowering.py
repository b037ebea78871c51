"""The fused quantize and Hadamard kernels lower for real hardware: exported from this (CPU) host
with `jax.export` for CUDA (Pallas' Triton backend) and TPU (Mosaic), the module holds the kernel's
custom call, not an XLA fallback. Also: the GPU shared-memory model of the default configs, the
documented fallbacks, the launch-parameter checks, and the kernel-safe numerics helpers (bit for
bit against `bitscale.numerics`).

Export only runs Pallas' lowering to Triton / Mosaic IR; the backend compilers themselves run on
the device (tests/pallas_kernels/test_quantize.py and test_hadamard.py run compiled there)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import pallas_kernels as pk
from bitscale.numerics import elementwise as E
from bitscale.numerics import packing
from bitscale.numerics import scaling as S
from bitscale.numerics.specs import resolve_spec
from pallas_kernels.common import SMEM_LIMITS, lowering_target
from pallas_kernels.hadamard import api as hapi
from pallas_kernels.quantize import QuantizeConfig
from pallas_kernels.quantize import kernel as K
from pallas_kernels.quantize.config import launch_smem_bytes

PLATFORMS = ["cuda", "tpu"]
# Custom-call targets of a lowered kernel: Triton (JAX 0.10: "__gpu$xla.gpu.triton"; later
# releases: "triton_kernel_call") and Mosaic TPU.
KERNEL_CALLS = ("__gpu$xla.gpu.triton", "triton_kernel_call", "tpu_custom_call")
_CHECKS = [export.DisabledSafetyCheck.custom_call(t) for t in KERNEL_CALLS]

SPECS = ["fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1", "int8", "bf16",
         "mxfp8_e4m3", "mxfp6_e3m2", "mxfp4", "mxint8", "mxfp4+rceil", "nvfp4", "nvfp4_single",
         "int4@g32", "int4@g128", "int8@g64+asym", "int4@g128+asym", "int8@channel",
         "fp8_e4m3@g32:e8m0"]
SWEEP = ["fp8_e4m3", "fp6_e3m2", "mxfp4", "nvfp4", "int4@g128+asym", "int8@channel"]
KEY = jax.random.key(1)


def _module(f, shape, dtype, platform) -> str:
    # ``f`` must be a fresh function per platform: jax.jit caches traces by function, and the
    # lowering target is not part of its key.
    with lowering_target(platform):
        exp = export.export(jax.jit(f), platforms=[platform], disabled_checks=_CHECKS)(
            jax.ShapeDtypeStruct(shape, dtype))
    return exp.mlir_module()


def _lowers(f, shape, dtype, platform) -> bool:
    text = _module(f, shape, dtype, platform)
    return any(t in text for t in KERNEL_CALLS)


def _quant_fns(spec, axis, rounding):
    key = KEY if rounding == "stochastic" else None
    kw = dict(axis=axis, rounding=rounding, key=key, implementation="pallas")
    return [lambda v: pk.fake_quant(v, spec, **kw),
            lambda v: pk.quantize(v, spec, **kw).codes]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("spec", SPECS)
def test_every_spec_lowers(spec, platform):
    for f in _quant_fns(spec, -1, "nearest"):
        assert _lowers(f, (256, 512), jnp.float32, platform), (spec, platform)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("spec", SWEEP)
@pytest.mark.parametrize("case", [((256, 512), -1, jnp.bfloat16, "stochastic"),
                                  ((512, 256), 0, jnp.float32, "stochastic"),
                                  ((512, 256), 0, jnp.bfloat16, "nearest"),
                                  ((20, 768), -1, jnp.float32, "nearest"),
                                  ((3, 128, 5), 1, jnp.float32, "stochastic")],
                         ids=["bf16-stoch", "axis0-stoch", "axis0-bf16", "768-partial", "3d"])
def test_layouts_dtypes_roundings_lower(spec, case, platform):
    shape, axis, dtype, rounding = case
    for f in _quant_fns(spec, axis, rounding):
        assert _lowers(f, shape, dtype, platform), (spec, case, platform)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("block", [16, 128])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_hadamard_transform_lowers(block, dtype, platform):
    f = lambda v: pk.hadamard_transform(v, block, key=KEY, implementation="pallas")  # noqa: E731
    assert _lowers(f, (256, 512), dtype, platform)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("spec", ["mxfp4", "int4@g32", "fp8_e4m3", "nvfp4_single",
                                  "int8@channel", "int8@g64+asym"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_hadamard_fake_quant_lowers(spec, rounding, platform):
    rk = KEY if rounding == "stochastic" else None
    f = lambda v: pk.hadamard_fake_quant(  # noqa: E731
        v, 64, spec, key=KEY, rounding=rounding, rounding_key=rk, implementation="pallas")
    assert _lowers(f, (256, 512), jnp.float32, platform)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_hadamard_fake_quant_lowers_along_a_leading_axis(platform):
    # Stochastic rounding along axis 0 indexes the caller's layout with a divmod of the row.
    f = lambda v: pk.hadamard_fake_quant(  # noqa: E731
        v, 32, "mxfp4", key=KEY, axis=0, rounding="stochastic", rounding_key=KEY,
        implementation="pallas")
    assert _lowers(f, (256, 512), jnp.float32, platform)


def test_hadamard_256_falls_back_on_gpu_but_lowers_on_tpu():
    # The 256x256 float32 matrix alone (256 KiB) exceeds an H100's shared memory.
    x = jnp.ones((16, 512))  # concrete arrays are made outside a lowering target
    with lowering_target("cuda"), pytest.raises(ValueError, match="GPU shared memory"):
        pk.hadamard_transform(x, 256, implementation="pallas")
    auto = lambda v: pk.hadamard_transform(v, 256, key=KEY)  # noqa: E731
    assert not _lowers(auto, (256, 512), jnp.float32, "cuda")  # the XLA reference
    assert _lowers(lambda v: pk.hadamard_transform(v, 256, implementation="pallas"),
                   (256, 512), jnp.float32, "tpu")


def test_oversized_channel_falls_back_on_gpu():
    # A whole 65536-long float32 row in one program: 256 KiB in + 256 KiB out.
    shape = (4, 65536)
    x = jnp.ones(shape)
    with lowering_target("cuda"), pytest.raises(ValueError, match="GPU shared memory"):
        pk.fake_quant(x, "int8@channel", implementation="pallas")
    assert not _lowers(lambda v: pk.fake_quant(v, "int8@channel"), shape, jnp.float32, "cuda")
    assert _lowers(lambda v: pk.fake_quant(v, "int8@channel"), shape, jnp.float32, "tpu")


def test_traces_are_per_platform():
    spec = resolve_spec("mxfp4")
    launches = set()
    for platform in (None, "cuda", "tpu"):
        lc = QuantizeConfig().launch(spec, 512, True, jnp.float32, False, platform)
        assert lc.platform == platform
        launches.add(lc)
    assert len(launches) == 3  # distinct static arguments of the jitted kernel wrapper


# ---------------------------------------------------------------------------------------------
# Shared memory of the default configs

# Benchmarks (4096 / 8192 squares), the 100M model (hidden 768, intermediate 2048) and the
# configs (hidden 128 / 256, intermediate 256 / 512), both orientations.
SHAPES = [(4096, 4096), (8192, 8192), (768, 2048), (2048, 768), (256, 512), (512, 256),
          (128, 256), (256, 128)]
SMEM_SPECS = SPECS + ["int4@channel"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_default_configs_fit_shared_memory(shape, dtype):
    limit = min(SMEM_LIMITS["h100"], SMEM_LIMITS["a100"])
    cfg = QuantizeConfig()
    for spec in SMEM_SPECS:
        sp = resolve_spec(spec)
        for axis in (-1, 0):
            for want_codes in (False, True):
                b = cfg.smem_bytes(sp, shape, dtype, axis=axis, want_codes=want_codes)
                assert 0 < b <= limit, (spec, shape, dtype, axis, want_codes, b)
    for block, spec in [(128, None), (128, "mxfp4"), (64, "nvfp4_single"), (16, None)]:
        x = jax.ShapeDtypeStruct(shape, dtype)
        sp = None if spec is None else resolve_spec(spec)
        lc, reason = hapi._launch(None, block, sp, x, 1, "cuda")
        assert reason is None
        b = launch_smem_bytes(lc, sp, jnp.dtype(dtype).itemsize, False, 4 * block * block)
        assert b <= limit, (block, spec, shape, dtype, b)


def test_smem_model():
    cfg = QuantizeConfig(block_axis=512, block_other=8, num_stages=3)
    # fake_quant float32: 3 stages of the 16 KiB input tile + the 16 KiB output tile.
    assert cfg.smem_bytes(resolve_spec("mxfp4"), (64, 1024), jnp.float32) == 4 * 16384
    # quantize: codes (4 bits) + one E8M0 byte per 32 elements.
    assert cfg.smem_bytes(resolve_spec("mxfp4"), (64, 1024), jnp.float32,
                          want_codes=True) == 3 * 16384 + 2048 + 128
    # Explicit configs are taken as given, and too large ones are reported.
    big = QuantizeConfig(block_axis=4096, block_other=32)
    assert big.smem_bytes(resolve_spec("fp8_e4m3"), (64, 4096), jnp.float32) > SMEM_LIMITS["h100"]
    x = jnp.ones((64, 4096))
    with lowering_target("cuda"), pytest.raises(ValueError, match="GPU shared memory"):
        pk.fake_quant(x, "fp8_e4m3", implementation="pallas", config=big)


# ---------------------------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize("kw,match", [
    (dict(num_warps=3), "num_warps=3 must be a power of two"),
    (dict(num_warps=64), "num_warps=64 must be a power of two"),
    (dict(num_warps=0), "num_warps=0"),
    (dict(num_stages=0), "num_stages=0 must be an int >= 1"),
    (dict(num_stages=1.5), "num_stages=1.5"),
    (dict(block_other=12), "block_other=12 must be a power of two"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        QuantizeConfig(**kw)


def test_explicit_launch_parameters_are_used():
    cfg = QuantizeConfig(num_warps=8, num_stages=3)
    lc = cfg.launch(resolve_spec("mxfp4"), 512, True, jnp.float32, False, "cuda")
    assert (lc.num_warps, lc.num_stages) == (8, 3)
    text = _module(lambda v: pk.fake_quant(v, "mxfp4", implementation="pallas", config=cfg),
                   (64, 512), jnp.float32, "cuda")
    assert "num_warps = 8" in text and "num_stages = 3" in text


# ---------------------------------------------------------------------------------------------
# Kernel-safe numerics helpers, bit for bit against bitscale.numerics (XLA on this host)


@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 5, 6, 7, 8, 16])
def test_pack_tile_matches_pack_codes(nbits):
    codes = jax.random.bits(jax.random.key(nbits), (8, 64), jnp.uint32) & ((1 << nbits) - 1)
    got = K.pack_tile(codes, nbits)
    got = K.join_planes(got) if len(got) > 1 else got[0]
    container = jnp.uint16 if nbits > 8 else jnp.uint8
    want = packing.pack_codes(codes.astype(container), nbits)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_kernel_safe_amax_and_zero_point_rounding():
    """The numerics' group amax (an int32 reduction, for Mosaic TPU) and zero-point rounding (on
    the bits, for Triton) against numpy: max of |x|'s bit patterns, and round-half-even."""
    x = 3.0 * jax.random.normal(jax.random.key(0), (4, 8, 32))
    x = x.at[0, 0, 3].set(jnp.nan).at[1, 2, 5].set(-jnp.inf).at[2, 3, 0].set(1e-40)
    want = (np.asarray(x).view(np.uint32) & np.uint32(0x7FFFFFFF)).max(-1, keepdims=True)
    np.testing.assert_array_equal(np.asarray(S.amax_bits(x)), want)
    v = np.concatenate([np.arange(-600, 600, dtype=np.float32) / 4,
                        np.array([-0.0, 1e-40, 2.0**22, -2.0**23, 1e30], np.float32)])
    np.testing.assert_array_equal(np.asarray(E.round_half_even_i32(jnp.asarray(v))),
                                  np.clip(np.round(v), -2.0**22, 2.0**22).astype(np.int32))
    assert int(E.round_half_even_i32(jnp.float32(jnp.nan))) == 0
