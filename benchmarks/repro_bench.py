"""Forward and decode cost of the reproducibility modes, as a ratio to plain ``fp32`` in the
same run: batch-invariant mode (``fp32_batch_invariant``: the model in fixed 1-row tiles plus
fixed-order softmax / RMSNorm sums), LayerCast (bf16 weights, fp32 compute) and, for scale,
an emulated reduction order (``fp32+pairwise``: every matmul as explicit pairwise adds).

    python benchmarks/repro_bench.py [--batches 1,8,32] [--prompt 24] [--cache 128]
                                     [--repeats 30] [--tile 1] [--emulated]

``forward``: logits of ``[batch, prompt]`` tokens without a cache. ``decode``: one cached
decode step of ``[batch, 1]`` tokens against a ``--cache``-slot KV cache (half full). Each is
jitted once (compile excluded); the time is the median over ``--repeats`` rounds, the modes
timed round-robin within each round (the first of a round rotates). Target on CPU: batch-invariant mode and LayerCast
<= 1.3x fp32. A batch smaller than the tile is padded to it (batch 1 computes ``tile`` rows),
so batch-invariant mode costs most below its tile size. Also prints whether plain fp32 logits
are batch-invariant on this backend.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import numpy as np
from flax import nnx

import bitscale.nn as bn
from bitscale import repro
from model_bench import tiny_config

MODES = ("fp32", "fp32_batch_invariant", "layercast")
TARGETS = {"fp32_batch_invariant": 1.3, "layercast": 1.3}


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens):
    return nnx.merge(graphdef, state)(tokens)


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, tokens, cache):
    return nnx.merge(graphdef, state)(tokens, cache=cache)


def make_calls(model, batch: int, prompt: int, cache_len: int) -> dict:
    """name -> zero-argument callable for the forward and the decode step of ``model``."""
    graphdef, state = nnx.split(model)
    toks = jax.random.randint(jax.random.key(0), (batch, prompt), 0, model.cfg.vocab_size)
    cache = model.init_cache(batch, cache_len)
    _, cache = _decode(graphdef, state, toks[:, :1].repeat(cache_len // 2, 1), cache)
    return {"forward": lambda: _forward(graphdef, state, toks),
            "decode": lambda: _decode(graphdef, state, toks[:, :1], cache)}


def time_round_robin(calls: dict, repeats: int) -> dict:
    for fn in calls.values():
        jax.block_until_ready(fn())
    times = {k: [] for k in calls}
    keys = list(calls)
    for i in range(repeats):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:  # rotate who goes first
            t0 = time.perf_counter()
            jax.block_until_ready(calls[k]())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def plain_invariance(model, batches, prompt: int) -> float:
    """Max |logit difference| of one prompt across batch sizes and positions (plain model)."""
    graphdef, state = nnx.split(model)
    row = jax.random.randint(jax.random.key(7), (1, prompt), 0, model.cfg.vocab_size)
    ref = None
    worst = 0.0
    for b in batches:
        others = jax.random.randint(jax.random.key(b), (b, prompt), 0, model.cfg.vocab_size)
        for pos in sorted({0, b - 1}):
            out = np.asarray(_forward(graphdef, state, others.at[pos].set(row[0]))[pos])
            ref = out if ref is None else ref
            worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt", type=int, default=24)
    parser.add_argument("--cache", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--tile", type=int, default=1,
                        help="rows per batch-invariant tile (1: the fp32_batch_invariant policy)")
    parser.add_argument("--emulated", action="store_true",
                        help="also time fp32 with every matmul in emulated pairwise order")
    args = parser.parse_args()
    cfg = tiny_config()
    batches = [int(b) for b in args.batches.split(",")]
    base = bn.Llama(cfg, "fp32", rngs=nnx.Rngs(0))
    modes = {m: repro.with_policy(base, m) for m in MODES if m != "fp32_batch_invariant"}
    modes["fp32_batch_invariant"] = repro.with_policy(base, repro.batch_invariant(
        "fp32", tile=args.tile))
    if args.emulated:
        modes["fp32+pairwise"] = repro.with_policy(base, repro.with_reduction("fp32", "pairwise"))
    backend = jax.default_backend()
    print(f"backend: {backend} ({jax.devices()[0].device_kind}); tiny model "
          f"({cfg.num_params / 1e6:.2f}M parameters); forward [batch, {args.prompt}], decode "
          f"[batch, 1] with a {args.cache}-slot cache; batch-invariant tile {args.tile}; "
          "baseline fp32")
    diff = plain_invariance(base, batches, args.prompt)
    print(f"plain fp32 batch-invariant on this backend (batches {batches}): "
          f"{'yes' if diff == 0 else f'no, max |logit difference| {diff:.2e}'}")
    rows = []
    for b in batches:
        calls = {(m, k): fn for m, model in modes.items()
                 for k, fn in make_calls(model, b, args.prompt, args.cache).items()}
        times = time_round_robin(calls, args.repeats)
        for kind in ("forward", "decode"):
            for m in modes:
                t = times[(m, kind)]
                rows.append((kind, b, m, t * 1e3, t / times[("fp32", kind)]))
    print()
    print(f"{'call':<8} {'batch':>5} {'mode':<21} {'ms':>8} {'ratio':>6} {'target':>7} {'ok':>4}")
    for kind, b, m, ms, ratio in rows:
        target = TARGETS.get(m) if backend == "cpu" else None
        ok = "" if target is None else ("yes" if ratio <= target else "NO")
        print(f"{kind:<8} {b:>5} {m:<21} {ms:8.2f} {ratio:6.2f} "
              f"{'' if target is None else f'{target:.1f}':>7} {ok:>4}")
    print(f"(ratio: time / fp32 time in this run, on {backend.upper()})")


if __name__ == "__main__":
    main()
