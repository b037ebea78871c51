"""Kernel bandwidth as a fraction of a device-to-device copy measured in the same run.

    python benchmarks/kernels_bench.py [--size 4096] [--repeats 20]

For each kernel and size: bytes that must move (read x once, write the output once; codes and
scales for `quantize`) divided by the median time, as a fraction of the bandwidth of a plain copy
of the same array (``x + 0`` through XLA). On GPU/TPU the Pallas kernels run; on CPU there is no
Pallas lowering, so the XLA reference path runs and the table says so. Matmul kernels:
`benchmarks/kernels_bench_matmul.py`.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import pallas_kernels as pk
from bitscale.numerics import resolve_spec
from bitscale.numerics.qarray import elem_bits

from bench_util import median_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    on_accel = jax.default_backend() in ("gpu", "tpu")
    impl = "pallas" if on_accel else "xla"
    n = args.size
    x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    key = jax.random.key(1)
    elem_bytes = x.size * 4

    copy = jax.jit(lambda a: a + 0)
    t_copy = median_time(copy, x, repeats=args.repeats)
    bw_copy = 2 * elem_bytes / t_copy

    cases = []
    for spec in ["fp8_e4m3", "mxfp4", "nvfp4", "int4@g128"]:
        for rounding in ["nearest", "stochastic"]:
            k = key if rounding == "stochastic" else None
            fq = jax.jit(lambda a, s=spec, r=rounding, k=k: pk.fake_quant(
                a, s, rounding=r, key=k, implementation=impl))
            cases.append((f"fake_quant {spec} {rounding[:4]}", fq, 2 * elem_bytes))
        bits = elem_bits(resolve_spec(spec))
        qz = jax.jit(lambda a, s=spec: pk.quantize(a, s, implementation=impl))
        cases.append((f"quantize {spec}", qz, elem_bytes + x.size * bits / 8))
    had = jax.jit(lambda a: pk.hadamard_transform(a, 128, key=key, implementation=impl))
    cases.append(("hadamard b128", had, 2 * elem_bytes))
    hfq = jax.jit(lambda a: pk.hadamard_fake_quant(a, 128, "mxfp4", key=key, implementation=impl))
    cases.append(("hadamard+fake_quant mxfp4", hfq, 2 * elem_bytes))

    print(f"backend: {jax.default_backend()}  path: {impl}"
          + ("" if on_accel else "  (CPU: no Pallas lowering, the XLA reference runs)"))
    print(f"array {n}x{n} float32; copy bandwidth {bw_copy / 1e9:.1f} GB/s")
    print(f"{'kernel':<34} {'GB/s':>8} {'fraction of copy':>17}")
    for name, fn, nbytes in cases:
        t = median_time(fn, x, repeats=args.repeats)
        bw = nbytes / t
        print(f"{name:<34} {bw / 1e9:8.1f} {bw / bw_copy:17.2f}")


if __name__ == "__main__":
    main()
