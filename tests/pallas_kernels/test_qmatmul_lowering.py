"""qmatmul lowers for real hardware, checked on any host: `jax.export` of the forward and both
backward products for CUDA (Pallas' Triton backend) and TPU (Mosaic), the compiler parameters
each platform gets, the XLA fallbacks and their reasons, the GPU shared memory of the default
configs at the benchmark and model shapes, the config checks, and the GPU contraction scheme
(a K loop inside each program) against the grid scheme in the interpreter.

An export proves the Pallas lowering (to Triton IR / a Mosaic module); Triton's own compilation
(register and shared-memory allocation) happens on the device.
"""

from __future__ import annotations

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import bitscale as bs
from bitscale.config_file import load_config, load_module
from pallas_kernels.common import SMEM_LIMITS, lowering_target
from pallas_kernels.qmatmul import QMatmulConfig, default_config, product_configs, qmatmul
from pallas_kernels.qmatmul.kernel import OperandQuant, Product, qmatmul_kernel

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: Custom-call targets of a lowered kernel, by platform (the Triton target's name changed
#: across JAX releases).
KERNEL_CALLS = {"cuda": ("__gpu$xla.gpu.triton", "triton_kernel_call"),
                "tpu": ("tpu_custom_call",)}
DISABLED = [export.DisabledSafetyCheck.custom_call(t)
            for t in ("__gpu$xla.gpu.triton", "triton_kernel_call", "tpu_custom_call",
                      "mosaic_gpu")]

# (x_spec, w_spec, grad_spec, stochastic gradient rounding, operand dtype)
CASES = [
    ("mxfp4", "mxfp4", "mxfp4", True, jnp.float32),
    ("mxfp8_e4m3", "mxfp8_e4m3", "mxfp8_e4m3", False, jnp.bfloat16),
    ("nvfp4_single", "nvfp4_single", "nvfp4_single", True, jnp.bfloat16),
    ("int4@g32", "int4@g32", "int4@g32", True, jnp.float32),
    ("int8@g32", "int8@g64", "mxfp4", False, jnp.float32),
    ("mxfp8_e4m3", "mxfp4", "int4@g32", True, jnp.bfloat16),
    ("mxfp4", "int4@g32", None, False, jnp.bfloat16),
    ("nvfp4", "nvfp4", "nvfp4", True, jnp.float32),
    ("fp8_e4m3", "mxfp4", "mxfp8_e4m3", True, jnp.bfloat16),
    ("int8@g32+asym", "int4@g32+asym", "mxfp4", True, jnp.float32),  # zero points, on the bits
]
M, K, N = 256, 384, 128  # several tiles per axis on both platforms; K not a power of two


def _case_id(case) -> str:
    xs, ws, gs, sr, dt = case
    return f"{xs}-{ws}-{gs}-{'sr' if sr else 'rn'}-{jnp.dtype(dt).name}"


def fwd_bwd(**kw):
    """(y, dx, dw) of qmatmul for a cotangent g: all three products in one program. A fresh
    function per call: an outer jit cache must not hand one platform's trace to another."""
    f = functools.partial(qmatmul, **kw)

    def run(x, w, g):
        y, vjp = jax.vjp(f, x, w)
        return (y, *vjp(g))
    return run


def export_text(fn, platform: str, *args) -> str:
    with lowering_target(platform):
        exp = export.export(jax.jit(fn), platforms=[platform], disabled_checks=DISABLED)(*args)
    return exp.mlir_module()


def kernel_calls(text: str, platform: str) -> int:
    return sum(len(re.findall(rf"custom_call @{re.escape(t)}\b", text))
               for t in KERNEL_CALLS[platform])


def structs(m=M, k=K, n=N, dtype=jnp.float32):
    return (jax.ShapeDtypeStruct((m, k), dtype), jax.ShapeDtypeStruct((k, n), dtype),
            jax.ShapeDtypeStruct((m, n), jnp.float32))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_and_backward_lower(platform, case):
    xs, ws, gs, sr, dt = case
    fn = fwd_bwd(x_spec=xs, w_spec=ws, grad_spec=gs, key=jax.random.key(0) if sr else None,
                 implementation="pallas")
    text = export_text(fn, platform, *structs(dtype=dt))
    assert kernel_calls(text, platform) == 3  # y, dx, dw
    other = "tpu" if platform == "cuda" else "cuda"
    assert kernel_calls(text, other) == 0
    assert "mosaic_gpu" not in text  # Triton, whatever JAX's Mosaic GPU default says


def _compiler_params(fn, platform, *args) -> list[str]:
    with lowering_target(platform):
        text = str(jax.make_jaxpr(fn)(*args))
    return re.findall(r"compiler_params=(\w+\([^)]*\)|None)", text)


def test_compiler_params_per_platform():
    args = structs(dtype=jnp.bfloat16)
    kw = dict(x_spec="mxfp4", w_spec="mxfp4", grad_spec="mxfp4", key=jax.random.key(1),
              implementation="pallas")
    cuda = _compiler_params(fwd_bwd(**kw), "cuda", *args)
    tpu = _compiler_params(fwd_bwd(**kw), "tpu", *args)
    interp = str(jax.make_jaxpr(fwd_bwd(**kw, interpret=True))(*args))
    assert len(cuda) == len(tpu) == 3
    cfgs = product_configs(M, K, N, x_spec="mxfp4", w_spec="mxfp4", grad_spec="mxfp4",
                           x_dtype=jnp.bfloat16, w_dtype=jnp.bfloat16, platform="cuda",
                           stochastic=True)
    for text, name in zip(cuda, ("y", "dx", "dw")):
        cfg = cfgs[name][0]
        assert text == f"CompilerParams(num_warps={cfg.num_warps}, num_stages={cfg.num_stages})"
    for text in tpu:
        assert "dimension_semantics=('parallel', 'parallel', 'arbitrary')" in text
    assert "compiler_params=None" in interp and "num_warps" not in interp


def test_export_at_benchmark_size_records_launch():
    # 4096^3 bf16, the speed target's shape: grid and launch parameters of the forward.
    size = 4096
    x, w, _ = structs(size, size, size, jnp.bfloat16)
    fn = lambda a, b: qmatmul(a, b, x_spec="mxfp4", w_spec="mxfp4", implementation="pallas")
    text = export_text(fn, "cuda", x, w)
    cfg = product_configs(size, size, size, x_spec="mxfp4", w_spec="mxfp4",
                          x_dtype=jnp.bfloat16, w_dtype=jnp.bfloat16, platform="cuda")["y"][0]
    assert (cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages) == (
        128, 128, 64, 8, 3)
    assert f"grid_x = {size // cfg.block_m} : i32, grid_y = {size // cfg.block_n} : i32" in text
    assert "num_stages = 3 : i32, num_warps = 8 : i32" in text


# ---------------------------------------------------------------------------------------------
# Fallbacks


@pytest.mark.parametrize("spec,platforms,reason", [
    ("int4@g32+mse", ("cuda", "tpu"), r"\+mse"),
    ("int8@channel", ("cuda", "tpu"), "needs the whole axis"),
])
def test_unsupported_specs_fall_back_under_auto(spec, platforms, reason):
    args = structs()
    for platform in ("cuda", "tpu"):
        auto = fwd_bwd(x_spec=spec, w_spec="mxfp4", grad_spec="mxfp4", implementation="auto")
        text = export_text(auto, platform, *args)
        assert kernel_calls(text, platform) == (0 if platform in platforms else 3), platform
        if platform in platforms:
            with pytest.raises(ValueError, match=reason):
                export_text(fwd_bwd(x_spec=spec, w_spec="mxfp4", implementation="pallas"),
                            platform, *args)


def test_auto_results_equal_xla_where_the_kernel_falls_back():
    # What "auto" runs when it falls back is the reference itself.
    x = jax.random.normal(jax.random.key(0), (32, 64))
    w = jax.random.normal(jax.random.key(1), (64, 32))
    f = lambda impl: jax.jit(lambda a, b: qmatmul(a, b, x_spec="int8@channel", w_spec="mxfp4",
                                                  implementation=impl))
    got, want = f("auto")(x, w), f("xla")(x, w)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(ValueError, match=r"int4@g32\+mse"):
        qmatmul(x, w, x_spec="int4@g32+mse", w_spec="mxfp4", implementation="pallas",
                interpret=True)


def test_tpu_tiles_are_checked():
    args = structs()[:2]
    fn = lambda a, b: qmatmul(a, b, x_spec="mxfp4", w_spec="mxfp4", implementation="pallas",
                              config=QMatmulConfig(32, 128, 128))
    with pytest.raises(ValueError, match=r"block_m=32 does not suit a TPU .*\(m=256\)"):
        export_text(fn, "tpu", *args)
    # The same config is fine for a GPU (Triton tiles are any power of two).
    assert kernel_calls(export_text(fn, "cuda", *args), "cuda") == 1


# ---------------------------------------------------------------------------------------------
# Shared memory of the default GPU configs


def _model_shapes():
    """(m, k, n) of every projection of the configs/*.py models and model_bench's 100M model,
    at 256 and 4096 tokens."""
    models = []
    for path in sorted((ROOT / "configs").glob("*.py")):
        cfg = load_config(path)
        model = cfg.get("model") if hasattr(cfg, "get") else None
        if model is not None:
            models.append(model)
    models.append(load_module(ROOT / "benchmarks" / "model_bench.py").CONFIG_100M)
    shapes = set()
    for mc in models:
        h, hd = mc.hidden_size, mc.head_dim or mc.hidden_size // mc.num_heads
        outs = (mc.num_heads * hd, mc.num_kv_heads * hd, mc.intermediate_size, mc.vocab_size)
        for tokens in (256, 4096):
            shapes.update((tokens, h, o) for o in outs)
            shapes.update({(tokens, mc.num_heads * hd, h), (tokens, mc.intermediate_size, h)})
    return sorted(shapes)


BENCH_SHAPES = [(s, s, s) for s in (512, 1024, 2048, 4096)]
SMEM_SPECS = [("mxfp4", "mxfp4", "mxfp4"), ("mxfp8_e4m3", "mxfp4", "int4@g32"),
              (None, "int4@g128", None), ("fp8_e4m3", "fp8_e4m3", "mxfp8_e5m2"),
              ("int8@g128", "int8@g128", "nvfp4")]


def test_default_configs_fit_shared_memory():
    shapes = BENCH_SHAPES + _model_shapes()
    assert (768, 32000) in {(k, n) for _, k, n in shapes}  # the 100M model's lm head
    worst = 0
    for m, k, n in shapes:
        for xs, ws, gs in SMEM_SPECS:
            for dt in (jnp.float32, jnp.bfloat16):
                cfgs = product_configs(m, k, n, x_spec=xs, w_spec=ws, grad_spec=gs, x_dtype=dt,
                                       w_dtype=dt, platform="cuda")
                for name, (cfg, a_size, b_size) in cfgs.items():
                    need = cfg.smem_bytes(a_size, b_size)
                    worst = max(worst, need)
                    for gpu, limit in SMEM_LIMITS.items():
                        assert need <= limit, (gpu, (m, k, n), xs, ws, gs, dt, name, cfg, need)
    assert worst <= min(SMEM_LIMITS.values())


def test_smem_model():
    cfg = QMatmulConfig(128, 128, 64, num_warps=8, num_stages=3)
    # 3 stages of bf16 tiles, one bf16 copy of both quantized tiles (as large as one float32
    # tile), 24 bytes of scalars.
    assert cfg.smem_bytes(2, 2) == 3 * (128 * 64 + 64 * 128) * 2 + (128 * 64 * 2) * 2 + 24
    # Different operand shapes: the float32 copy of the larger tile is the scratch.
    wide = QMatmulConfig(16, 128, 64, num_stages=1)
    assert wide.smem_bytes(2, 2) == (16 * 64 + 64 * 128) * 2 + 64 * 128 * 4 + 24
    assert cfg.smem_bytes(2, 2) == 131_096
    # The config that overflowed an H200 (262,144 B requested) is over both limits here too.
    big = QMatmulConfig(128, 128, 256, num_stages=1)
    assert big.smem_bytes(4, 4) > max(SMEM_LIMITS.values())
    # A small output tile: the epilogue's float32 tile dominates.
    tall = QMatmulConfig(128, 128, 16, num_stages=1)
    assert tall.smem_bytes(2, 2) == 128 * 128 * 4 + 24
    # The benchmark's bf16 products at 4096^3: forward, dx (f32 g), dw (f32 g).
    cfgs = product_configs(4096, 4096, 4096, x_spec="mxfp4", w_spec="mxfp4", grad_spec="mxfp4",
                           x_dtype=jnp.bfloat16, w_dtype=jnp.bfloat16, platform="cuda")
    assert {k: (c.block_m, c.block_n, c.block_k, c.num_stages, c.smem_bytes(a, b))
            for k, (c, a, b) in cfgs.items()} == {
        "y": (128, 128, 64, 3, 131_096), "dx": (128, 128, 64, 2, 163_864),
        "dw": (128, 128, 64, 2, 163_864)}


def test_default_config_per_platform():
    # The interpreter and TPU keep the (128, 128, 256) caps; GPUs shrink to fit.
    assert default_config(4096, 4096, 4096) == QMatmulConfig(128, 128, 256)
    assert default_config(4096, 4096, 4096, platform="tpu") == QMatmulConfig(128, 128, 256)
    f32 = default_config(4096, 4096, 4096, platform="cuda")
    assert f32.smem_bytes() <= min(SMEM_LIMITS.values())
    g128 = default_config(4096, 4096, 4096, mult_k=128, platform="cuda", a_itemsize=2,
                          b_itemsize=2)
    assert g128.block_k == 128 and g128.smem_bytes(2, 2) <= min(SMEM_LIMITS.values())
    small = default_config(20, 24, 40, platform="cuda")
    assert (small.block_m, small.block_n, small.block_k, small.num_warps) == (32, 32, 64, 4)


# ---------------------------------------------------------------------------------------------
# Config checks


@pytest.mark.parametrize("kwargs,message", [
    (dict(block_m=48), "block_m=48 must be a positive power of two"),
    (dict(block_k=0), "block_k=0 must be a positive power of two"),
    (dict(num_warps=3), "num_warps=3 must be a power of two in"),
    (dict(num_warps=64), "num_warps=64 must be a power of two in"),
    (dict(num_warps=True), "num_warps=True must be a power of two"),
    (dict(num_stages=0), "num_stages=0 must be an int >= 1"),
    (dict(num_stages=2.0), r"num_stages=2.0 must be an int >= 1"),
])
def test_config_validation_names_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QMatmulConfig(**kwargs)


def test_config_is_static_and_hashable():
    a = QMatmulConfig(64, 64, 64, num_warps=8, num_stages=3)
    assert a == QMatmulConfig(64, 64, 64, 8, 3) and hash(a) == hash(QMatmulConfig(64, 64, 64, 8, 3))
    assert a != QMatmulConfig(64, 64, 64, num_warps=4, num_stages=3)


# ---------------------------------------------------------------------------------------------
# The GPU contraction scheme in the interpreter


@pytest.mark.parametrize("a_t,b_t,spec", [(False, False, "mxfp4"), (False, True, "nvfp4"),
                                          (True, False, "int4@g32")])
def test_k_loop_equals_k_grid(a_t, b_t, spec):
    """The GPU scheme (each program loops over K) gives the grid scheme's bits."""
    s = bs.resolve_spec(spec)
    m, k, n = 64, 128, 64
    a = jax.random.normal(jax.random.key(2), (k, m) if a_t else (m, k))
    b = jax.random.normal(jax.random.key(3), (n, k) if b_t else (k, n))
    qa = OperandQuant(s, 0 if a_t else 1, stochastic=True)
    qb = OperandQuant(s, 1 if b_t else 0)
    prod = Product(qa, qb, a_t, b_t, a.shape[1], b.shape[1])
    kw = jnp.asarray([1, 2, 3, 4], jnp.uint32)
    amax = jnp.asarray([3.0, 4.0], jnp.float32)
    cfg = QMatmulConfig(32, 32, 32)
    run = functools.partial(qmatmul_kernel, a, b, kw, amax, prod=prod, config=cfg,
                            platform=None, interpret=True)
    np.testing.assert_array_equal(np.asarray(run(k_grid=False)), np.asarray(run(k_grid=True)))
