"""Train-step time of each 4-bit training recipe as a ratio to the unrotated policy of the same
format, measured in the same run.

    python benchmarks/recipes_bench.py [--configs tiny,demo] [--batch 4] [--seq 128]
                                       [--repeats 3]

``tiny`` is configs/tiny.py with 4 KV heads (every projection 128-wide), ``demo`` the demo model
(configs/demo.py). A step is ``jax.value_and_grad`` of the next-token cross-entropy with
respect to every parameter (`model_bench.make_step`), jitted once, timed round-robin
(`model_bench.time_interleaved`), the median over the rounds. Pairs (recipe : reference with
the same element format, no rotation, no per-product backward):

* ``quest_w4a4``     : INT4 per row, absmax, plain STE (``int4@channel`` W4A4)
* ``quartet_mxfp4``  : ``mxfp4`` (W/A/G in MXFP4, stochastic gradients)
* ``nvfp4_recipe``   : ``nvfp4``
* ``quartet2_nvfp4`` : ``nvfp4``
* ``nvint4_rotated`` : NVINT4 W/A/G, stochastic gradients, no rotation

The recipes add Hadamard rotations (a block-diagonal matmul per rotated operand), per-product
gradient copies (two quantizations of dY instead of one), re-quantized backward operands and, for
Quartet II, MS-EDEN's correction sums: the ratio is what those cost on this backend. On a CPU
everything is XLA fake quantization in float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import jax

import bitscale.nn as bn
from bitscale.config_file import load_module

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from model_bench import make_step, time_interleaved, tiny_config  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _w4a4(name: str, spec: str, **kw) -> bn.Policy:
    return bn.Policy(name, (bn.Rule("lm_head"), bn.Rule(bn.PROJ, weight=spec, act=spec, **kw)))


REFERENCES = {
    "int4_w4a4": _w4a4("int4_w4a4", "int4@channel"),
    "mxfp4": "mxfp4",
    "nvfp4": "nvfp4",
    "nvint4": _w4a4("nvint4", "nvint4", grad="nvint4", grad_rounding="stochastic"),
}
PAIRS = (("quest_w4a4", "int4_w4a4"), ("quartet_mxfp4", "mxfp4"), ("nvfp4_recipe", "nvfp4"),
         ("quartet2_nvfp4", "nvfp4"), ("nvint4_rotated", "nvint4"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,demo")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    # Quartet II rotates dX's operands along N in 128-blocks: the tiny config's 64-wide k / v
    # projections (2 KV heads) do not tile, so "tiny" here has 4 KV heads.
    configs = {"tiny": dataclasses.replace(tiny_config(), num_kv_heads=4),
               "demo": load_module(ROOT / "configs" / "demo.py").DEMO}
    backend = jax.default_backend()
    print(f"backend: {backend} ({jax.devices()[0].device_kind}); forward+backward of the mean "
          f"next-token cross-entropy, batch {args.batch} x {args.seq} tokens")
    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        cfg = configs[name]
        tokens = jax.random.randint(jax.random.key(0), (args.batch, args.seq + 1), 0,
                                    cfg.vocab_size)
        policies = {**REFERENCES, **{r: r for r, _ in PAIRS}}
        steps = {p: make_step(cfg, pol) for p, pol in policies.items()}
        first, times = time_interleaved(steps, tokens, jax.random.key(1), args.repeats)
        for recipe, ref in PAIRS:
            rows.append((name, recipe, ref, times[recipe] * 1e3, times[ref] * 1e3,
                         times[recipe] / times[ref], first[recipe], first[ref]))
    print()
    print(f"{'config':<7} {'recipe':<15} {'reference':<10} {'ms/step':>8} {'ref ms':>8} "
          f"{'ratio':>6} {'compile s':>10}")
    for name, recipe, ref, ms, ref_ms, ratio, c1, c0 in rows:
        print(f"{name:<7} {recipe:<15} {ref:<10} {ms:8.1f} {ref_ms:8.1f} {ratio:6.2f} "
              f"{c1:5.1f}/{c0:4.1f}")
    print(f"(ratio: recipe step time / reference step time in this run, on {backend.upper()}; "
          "compile s: compile + first step, recipe / reference)")


if __name__ == "__main__":
    main()
