"""Forward+backward step time of the Llama model under each named precision policy, as a ratio
to the unquantized baseline of the same run (``fp32`` on CPU, ``bf16`` on GPU/TPU).

    python benchmarks/model_bench.py [--configs tiny,100m] [--policies fp32,fp8,...]
                                     [--batch 1] [--seq 256] [--repeats 3]

A step is ``jax.value_and_grad`` of the next-token cross-entropy with respect to every
parameter, jitted once (compile time excluded); the time is the median over ``--repeats`` rounds
(5x as many for ``tiny``) after one warm-up, the policies timed round-robin within each round.
``tiny`` is configs/tiny.py; ``100m`` is a 12-layer, 768-wide GQA model with a 32000-token tied
vocabulary (~100M parameters). Target on CPU: the fake-quant policies ``fp8``, ``mxfp4`` and
``int8`` take <= 1.3x the ``fp32`` step. Fake quantization costs O(elements) against the
matmuls' O(elements x width), so the 128-wide tiny model pays relatively more than the 100M one.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import jax
import optax
from flax import nnx

import bitscale.nn as bn
from bitscale.config_file import load_module

ROOT = pathlib.Path(__file__).resolve().parents[1]
POLICIES = ("fp32", "bf16", "layercast", "fp8", "mxfp4", "nvfp4", "int8", "int4@g128")
TARGETS = {"fp8": 1.3, "mxfp4": 1.3, "int8": 1.3}

CONFIG_100M = bn.ModelConfig(
    vocab_size=32000, hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12,
    num_kv_heads=4, tie_word_embeddings=True, max_position_embeddings=2048)


def tiny_config() -> bn.ModelConfig:
    mod = load_module(ROOT / "configs" / "tiny.py")
    return mod.TINY


def make_step(cfg: bn.ModelConfig, policy: str):
    """(jitted step, params, tokens, key) for one policy."""
    model = bn.Llama(cfg, policy, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(p, tokens, key):
        logits = nnx.merge(graphdef, p)(tokens[:, :-1], key=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    return jax.jit(jax.value_and_grad(loss_fn)), params


def time_interleaved(steps: dict, tokens, key, repeats: int) -> tuple[dict, dict]:
    """(compile + first-run seconds, median step seconds) per policy.

    Policies are timed round-robin (one step of each per round), so that a change in machine
    load over the run affects every policy alike.
    """
    first, times = {}, {p: [] for p in steps}
    for p, (step, params) in steps.items():
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, tokens, key))
        first[p] = time.perf_counter() - t0
    for i in range(repeats):
        k = jax.random.fold_in(key, i)
        for p, (step, params) in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(params, tokens, k))
            times[p].append(time.perf_counter() - t0)
    return first, {p: statistics.median(t) for p, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,100m")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=256, help="tokens per row (100m config)")
    parser.add_argument("--tiny-batch", type=int, default=4)
    parser.add_argument("--tiny-seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    backend = jax.default_backend()
    base = "fp32" if backend == "cpu" else "bf16"
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if base not in policies:
        policies.insert(0, base)
    configs = {"tiny": tiny_config(), "100m": CONFIG_100M}
    print(f"backend: {backend} ({jax.devices()[0].device_kind}, {jax.device_count()} device(s)); "
          f"baseline policy: {base}; forward+backward of the mean next-token cross-entropy")
    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        cfg = configs[name]
        b, s = (args.tiny_batch, args.tiny_seq) if name == "tiny" else (args.batch, args.seq)
        tokens = jax.random.randint(jax.random.key(0), (b, s + 1), 0, cfg.vocab_size)
        steps = {policy: make_step(cfg, policy) for policy in policies}
        repeats = args.repeats * (5 if name == "tiny" else 1)
        first, times = time_interleaved(steps, tokens, jax.random.key(1), repeats)
        del steps
        for policy in policies:
            print(f"  {name:<5} {policy:<10} step {times[policy] * 1e3:9.1f} ms  "
                  f"(compile + first step {first[policy]:5.1f} s)", flush=True)
        for policy in policies:
            rows.append((name, f"{cfg.num_params / 1e6:.1f}M", f"{b}x{s}", policy,
                         times[policy] * 1e3, times[policy] / times[base]))
    print()
    print(f"{'config':<7} {'params':>7} {'tokens':>7} {'policy':<10} {'ms/step':>9} "
          f"{'ratio':>6} {'target':>7} {'ok':>4}")
    for name, params, toks, policy, ms, ratio in rows:
        target = TARGETS.get(policy) if backend == "cpu" else None
        ok = "" if target is None else ("yes" if ratio <= target else "NO")
        print(f"{name:<7} {params:>7} {toks:>7} {policy:<10} {ms:9.1f} {ratio:6.2f} "
              f"{'' if target is None else f'{target:.1f}':>7} {ok:>4}")
    print(f"(ratio: step time / {base} step time in this run, on {backend.upper()})")


if __name__ == "__main__":
    main()
