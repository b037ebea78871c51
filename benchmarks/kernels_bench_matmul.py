"""packed_matmul and qmatmul speed as ratios to a bf16 ``jnp.dot`` measured in the same run.

    python benchmarks/kernels_bench_matmul.py [--size N] [--train-size N] [--repeats 20]

On GPU/TPU the Pallas kernels run (``implementation="pallas"``): packed_matmul at batch 1-16
with K = N = 4096 (decode GEMV, W4A16 / W8A16), qmatmul at M = K = N = 2048 (training). On CPU
the Pallas kernels only run in the (slow, correctness-only) interpreter, so the script times the
XLA path (``implementation="xla"``) at smaller sizes and says so.

Columns: median time, achieved TFLOP/s (2 M K N per product) and GB/s (bytes of the operands as
stored, packed codes and scales included, plus the float32 output), and the ratio to the bf16
``jnp.dot`` ceiling of the same shape: ``speedup`` = t_dot / t (above 1: faster than bf16) and
``bw`` = achieved GB/s / the dot's GB/s.

References:
  Frantar et al., "Marlin", arXiv:2408.11743 (weight-only kernels are judged against the fp16
  GEMM and the memory roofline).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import bitscale as bs
from pallas_kernels.packed_matmul import packed_matmul
from pallas_kernels.qmatmul import qmatmul

from bench_util import median_time

PACKED_SPECS = ("int4@g128", "int8@channel", "mxfp4", "nvfp4")
QMATMUL_SPECS = (("mxfp4", "mxfp4", "mxfp8_e4m3"), ("nvfp4", "nvfp4", "nvfp4"),
                 ("int8@g32", "int8@g32", "int8@g32"))
BATCHES = (1, 2, 4, 8, 16)


def nbytes(*arrays) -> int:
    return sum(int(a.size) * a.dtype.itemsize for a in arrays if a is not None)


def row(name: str, t: float, flops: float, moved: int, t_ref: float, moved_ref: int) -> str:
    gbs, gbs_ref = moved / t / 1e9, moved_ref / t_ref / 1e9
    return (f"{name:<34} {t * 1e3:9.3f} {flops / t / 1e12:9.3f} {gbs:9.1f} "
            f"{t_ref / t:8.2f} {gbs / gbs_ref:6.2f}")


HEADER = (f"{'case':<34} {'ms':>9} {'TFLOP/s':>9} {'GB/s':>9} {'speedup':>8} {'bw':>6}")


def bench_packed(size: int, impl: str, repeats: int) -> None:
    k = n = size
    w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32)
    w_bf16 = w.astype(jnp.bfloat16)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    quantized = {s: jax.jit(bs.quantize, static_argnames=("spec", "axis"))(w, s, axis=0)
                 for s in PACKED_SPECS}
    print(f"\npacked_matmul (x [M, {k}] bf16 @ QArray [{k}, {n}], float32 out) vs bf16 jnp.dot")
    print(HEADER)
    for m in BATCHES:
        x = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)
        flops = 2.0 * m * k * n
        t_dot = median_time(dot, x, w_bf16, repeats=repeats)
        moved_dot = nbytes(x, w_bf16) + 4 * m * n
        print(row(f"bf16 jnp.dot  M={m}", t_dot, flops, moved_dot, t_dot, moved_dot))
        for spec, q in quantized.items():
            fn = jax.jit(lambda a, b: packed_matmul(a, b, implementation=impl))
            t = median_time(fn, x, q, repeats=repeats)
            moved = nbytes(x, q.codes, q.scales, q.zero_point, q.tensor_scale) + 4 * m * n
            print(row(f"{spec:<13} M={m}", t, flops, moved, t_dot, moved_dot))


def bench_qmatmul(size: int, impl: str, repeats: int) -> None:
    m = k = n = size
    x = jax.random.normal(jax.random.key(2), (m, k), jnp.bfloat16)
    w = jax.random.normal(jax.random.key(3), (k, n), jnp.bfloat16)
    key = jax.random.key(4)
    flops = 2.0 * m * k * n
    moved = nbytes(x, w) + 4 * m * n

    def dot(a, b):
        return jnp.dot(a, b, preferred_element_type=jnp.float32)

    g = jax.random.normal(jax.random.key(5), (m, n), jnp.float32)

    def fwd_bwd(f):  # a random cotangent: a constant one would be constant-folded by XLA
        return jax.jit(lambda a, b, ct: jax.vjp(f, a, b)[1](ct))

    t_dot = median_time(jax.jit(dot), x, w, repeats=repeats)
    t_dot_bwd = median_time(fwd_bwd(dot), x, w, g, repeats=repeats)
    print(f"\nqmatmul (bf16 x [{m}, {k}] @ bf16 w [{k}, {n}], float32 out) vs bf16 jnp.dot; "
          "fwd+bwd = 3 products")
    print(HEADER)
    print(row("bf16 jnp.dot  fwd", t_dot, flops, moved, t_dot, moved))
    print(row("bf16 jnp.dot  fwd+bwd", t_dot_bwd, 3 * flops, 3 * moved, t_dot_bwd, 3 * moved))
    for xs, ws, gs in QMATMUL_SPECS:
        def f(a, b, xs=xs, ws=ws, gs=gs):
            return qmatmul(a, b, x_spec=xs, w_spec=ws, grad_spec=gs, key=key,
                           implementation=impl)
        t = median_time(jax.jit(f), x, w, repeats=repeats)
        print(row(f"{xs}/{ws}/{gs} fwd", t, flops, moved, t_dot, moved))
        t = median_time(fwd_bwd(f), x, w, g, repeats=repeats)
        print(row(f"{xs}/{ws}/{gs} fwd+bwd", t, 3 * flops, 3 * moved, t_dot_bwd, 3 * moved))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="packed_matmul K = N")
    parser.add_argument("--train-size", type=int, default=None, help="qmatmul M = K = N")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    backend = jax.default_backend()
    on_accel = backend in ("gpu", "tpu")
    impl = "pallas" if on_accel else "xla"
    size = args.size or (4096 if on_accel else 1024)
    train = args.train_size or (2048 if on_accel else 512)
    print(f"backend: {backend} ({jax.devices()[0].device_kind}); implementation={impl!r}")
    if not on_accel:
        print("NOTE: no GPU/TPU, so this times the XLA path (implementation='xla': dequantize or "
              "fake_quant, then an XLA dot) at a reduced size, not the Pallas kernels; the Pallas "
              "kernels run on CPU only in the interpreter, which is a correctness tool.")
    bench_packed(size, impl, args.repeats)
    bench_qmatmul(train, impl, args.repeats)


if __name__ == "__main__":
    main()
