"""fake_quant speed as a ratio to a baseline pass over the same array, measured in the same run.

    python benchmarks/quantize_bench.py [--size 4096] [--repeats 20]

Baseline on CPU: ``x.astype(jnp.float8_e4m3fn).astype(jnp.float32)`` (a plain XLA cast round trip)
on the same 4096x4096 float32 array. On GPU / TPU that round trip is no baseline: XLA:GPU deletes
it (``--xla_allow_excess_precision``), so there the baseline is a copy (``x + 0``). Both are
printed. Targets: element casts <= 1.5x, block formats <= 3x, stochastic rounding <= 2x its
nearest-even counterpart.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import bitscale as bs

from bench_util import median_time

CASES = [
    ("fp8_e4m3", "nearest", "element", 1.5),
    ("fp8_e5m2", "nearest", "element", 1.5),
    ("bf16", "nearest", "element", 1.5),
    ("fp4_e2m1", "nearest", "element", 1.5),
    ("int8@channel", "nearest", "block", 3.0),
    ("mxfp4", "nearest", "block", 3.0),
    ("nvfp4", "nearest", "block", 3.0),
    ("fp8_e4m3", "stochastic", "sr", 2.0),
    ("fp4_e2m1", "stochastic", "sr", 2.0),
    ("int8@channel", "stochastic", "sr", 2.0),
    ("mxfp4", "stochastic", "sr", 2.0),
    ("nvfp4", "stochastic", "sr", 2.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    x = jax.random.normal(jax.random.key(0), (args.size, args.size), jnp.float32)
    key = jax.random.key(1)
    cast = jax.jit(lambda a: a.astype(jnp.float8_e4m3fn).astype(jnp.float32))
    copy = jax.jit(lambda a: a + 0)
    t_cast = median_time(cast, x, repeats=args.repeats)
    t_copy = median_time(copy, x, repeats=args.repeats)
    on_cpu = jax.default_backend() == "cpu"
    t_base, base_name = (t_cast, "XLA cast round trip") if on_cpu else (t_copy, "copy (x + 0)")

    times = {}
    for spec, rounding, _, _ in CASES:
        fn = jax.jit(lambda a, s=spec, r=rounding: bs.fake_quant(
            a, s, rounding=r, key=key if r == "stochastic" else None))
        times[(spec, rounding)] = median_time(fn, x, repeats=args.repeats)

    print(f"backend: {jax.default_backend()}  array: {args.size}x{args.size} float32  "
          f"cast round trip {t_cast * 1e3:.2f} ms, copy {t_copy * 1e3:.2f} ms "
          f"(cast / copy = {t_cast / t_copy:.2f}); baseline: {base_name}")
    print(f"{'spec':<14} {'rounding':<11} {'ratio':>7} {'vs':<22} {'target':>7} {'ok':>4}")
    for spec, rounding, kind, target in CASES:
        t = times[(spec, rounding)]
        if kind == "sr":
            ref, ref_name = times[(spec, "nearest")], "its nearest-even"
        else:
            ref, ref_name = t_base, base_name
        ratio = t / ref
        print(f"{spec:<14} {rounding:<11} {ratio:7.2f} {ref_name:<22} {target:7.1f} "
              f"{'yes' if ratio <= target else 'NO':>4}")


if __name__ == "__main__":
    main()
