"""packed_matmul lowered for real backends from the CPU host (jax.export under
`pallas_kernels.common.lowering_target`): Triton for "cuda", Mosaic for "tpu"; the GPU
shared-memory model of the default configs; config validation; XLA fallbacks with reasons."""

import jax
import jax.numpy as jnp
import pytest
from jax import export

import bitscale as bs
from pallas_kernels.common import SMEM_LIMITS, lowering_target
from pallas_kernels.packed_matmul import PackedMatmulConfig, packed_matmul
from pallas_kernels.packed_matmul import config as C
from pallas_kernels.packed_matmul.api import footprint_of, unsupported_reason

SPECS = ("int4@g32", "int4@g128", "int8", "int8@channel", "mxfp4", "nvfp4", "nvfp4_single")
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
KERNEL_CALLS = ("triton_kernel_call", "__gpu$xla.gpu.triton", "tpu_custom_call")
CHECKS = [export.DisabledSafetyCheck.custom_call(t) for t in KERNEL_CALLS]
# H200: the per-block shared memory the first GPU run was refused over.
H200_SMEM = 232_448


def qarray_shape(spec, k, n, w_dtype=jnp.float32):
    return jax.eval_shape(lambda w: bs.quantize(w, spec, axis=0),
                          jax.ShapeDtypeStruct((k, n), w_dtype))


def export_text(platform, x, q, implementation="pallas"):
    with lowering_target(platform):
        exp = export.export(
            jax.jit(lambda a, w: packed_matmul(a, w, implementation=implementation)),
            platforms=[platform], disabled_checks=CHECKS)(x, q)
    return exp.mlir_module()


def has_kernel(text, platform):
    if platform == "tpu":
        return "tpu_custom_call" in text
    return "triton_kernel_call" in text or "xla.gpu.triton" in text


@pytest.mark.parametrize("platform", ("cuda", "tpu"))
@pytest.mark.parametrize("spec", SPECS)
def test_every_case_lowers(spec, platform):
    q = qarray_shape(spec, 256, 256)
    for dtype in DTYPES:
        for m in (1, 16, 128):
            text = export_text(platform, jax.ShapeDtypeStruct((m, 256), dtype), q)
            assert has_kernel(text, platform), (spec, dtype, m)


@pytest.mark.parametrize("platform", ("cuda", "tpu"))
@pytest.mark.parametrize("spec,k,n", [("int4@g128", 4096, 4096), ("int8@channel", 8192, 8192),
                                      ("mxfp4", 768, 2048), ("nvfp4", 2048, 768)])
def test_benchmark_and_model_shapes_lower(spec, k, n, platform):
    q = qarray_shape(spec, k, n)
    for m in (1, 128):
        text = export_text(platform, jax.ShapeDtypeStruct((m, k), jnp.bfloat16), q)
        assert has_kernel(text, platform)


def test_triton_params_select_triton():
    # The Triton compiler params (num_warps / num_stages) reach the custom call's config.
    q = qarray_shape("int4@g128", 1024, 1024)
    text = export_text("cuda", jax.ShapeDtypeStruct((16, 1024), jnp.bfloat16), q)
    assert "num_warps = 4" in text or "num_warps=4" in text.replace(" ", "")


# --- shared memory ------------------------------------------------------------------------------

BENCH_SHAPES = [(4096, 4096), (8192, 8192)]
# 100M model (benchmarks/model_bench.py: 768 wide, 12 heads of 64, 4 KV heads, FFN 2048, vocab
# 32000), configs/demo.py (256 / 512, KV 128), configs/tiny.py (128 / 256, KV 64).
MODEL_SHAPES = [(768, 768), (768, 256), (768, 2048), (2048, 768), (768, 32000),
                (256, 256), (256, 128), (256, 512), (512, 256), (128, 128), (128, 64),
                (128, 256), (256, 128)]
SMEM_SPECS = SPECS + ("int4@g64+asym", "int8@g64", "mxfp8_e4m3", "fp8_e4m3")


@pytest.mark.parametrize("k,n", BENCH_SHAPES + MODEL_SHAPES)
def test_default_configs_fit_shared_memory(k, n):
    budget = min(SMEM_LIMITS["h100"], SMEM_LIMITS["a100"])
    for spec in SMEM_SPECS:
        for x_dtype in DTYPES:
            for w_dtype, cd in ((jnp.float32, None), (jnp.bfloat16, None), (jnp.float32,
                                                                            jnp.float32)):
                fp = footprint_of(spec, x_dtype, w_dtype, cd)
                for m in (1, 2, 4, 8, 16, 32, 64, 128):
                    cfg = C.default_config(m=m, k=k, n=n, group=fp.group, blocked=fp.blocked,
                                           fp=fp, platform="cuda")
                    used = cfg.smem_bytes(m, k, n, spec, x_dtype, w_dtype=w_dtype,
                                          compute_dtype=cd)
                    assert used <= budget, (spec, x_dtype, w_dtype, m, k, n, cfg, used)


def test_old_int8_channel_config_exceeds_h200():
    # The first kernel's tiles at M = 128 (64 x 256 x 512, no K loop); the H200 refused
    # 327,680 B. The model is an upper bound: it must flag that config too.
    old = PackedMatmulConfig(64, 256, 512, num_stages=1)
    used = old.smem_bytes(128, 4096, 4096, "int8@channel", jnp.bfloat16)
    assert used >= 327_680 > H200_SMEM
    new_fp = footprint_of("int8@channel", jnp.bfloat16)
    new = C.default_config(m=128, k=4096, n=4096, group=0, blocked=False, fp=new_fp,
                           platform="cuda")
    assert new.smem_bytes(128, 4096, 4096, "int8@channel", jnp.bfloat16) <= SMEM_LIMITS["a100"]
    assert new.block_k < 512


def test_smem_model_terms():
    cfg = PackedMatmulConfig(16, 128, 256, num_stages=2)
    # int4@g128, bf16 x: per stage x 16*256*2 + codes 256*64 + scales 2*128*4;
    # dots of K = 128: x 16*128*2 + w 128*128*2; output 16*128*4.
    staged = 16 * 256 * 2 + 256 * 64 + 2 * 128 * 4
    want = 2 * staged + 16 * 128 * 2 + 128 * 128 * 2 + 16 * 128 * 4
    assert cfg.smem_bytes(1, 4096, 4096, "int4@g128", jnp.bfloat16) == want


# --- validation and fallbacks -------------------------------------------------------------------


def test_config_validation_messages():
    with pytest.raises(ValueError, match=r"num_warps=3 must be a power of two in \[1, 32\]"):
        PackedMatmulConfig(num_warps=3)
    with pytest.raises(ValueError, match="num_warps=64"):
        PackedMatmulConfig(num_warps=64)
    with pytest.raises(ValueError, match="num_stages=0 must be an int >= 1"):
        PackedMatmulConfig(num_stages=0)
    with pytest.raises(ValueError, match="split_k=3 must be a positive power of two"):
        PackedMatmulConfig(split_k=3)
    q = bs.quantize(jax.random.normal(jax.random.key(0), (256, 128)), "int8", axis=0)
    with pytest.raises(ValueError, match="K=256 is not a multiple of block_k \\* split_k"):
        packed_matmul(jnp.ones((2, 256)), q, implementation="pallas", interpret=True,
                      config=PackedMatmulConfig(16, 128, 128, split_k=4))


def test_tpu_fallback_with_reason():
    # 4-bit N = 96: the packed code block (48 columns) is neither 128 lanes nor a power of two.
    q = qarray_shape("int4@g32", 256, 96)
    x = jax.ShapeDtypeStruct((4, 256), jnp.bfloat16)
    why = unsupported_reason(x, q, platform="tpu")
    assert why is not None and "128" in why and "implementation='xla'" in why
    assert unsupported_reason(x, q, platform="cuda") is None
    assert not has_kernel(export_text("tpu", x, q, implementation="auto"), "tpu")
    with pytest.raises(ValueError, match="Mosaic TPU blocks"):
        export_text("tpu", x, q, implementation="pallas")
    assert has_kernel(export_text("cuda", x, q, implementation="auto"), "cuda")


def test_unsupported_spec_falls_back_under_auto():
    q = qarray_shape("mxfp6_e3m2", 256, 128)
    x = jax.ShapeDtypeStruct((4, 256), jnp.bfloat16)
    assert "4 or 8 bits" in unsupported_reason(x, q, platform="cuda")
    assert not has_kernel(export_text("cuda", x, q, implementation="auto"), "cuda")
    with pytest.raises(ValueError, match="4 or 8 bits wide"):
        export_text("cuda", x, q, implementation="pallas")
