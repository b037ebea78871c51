"""RL step time: the share of rollout (sampling, decoding, rewards, batch layout) vs update
(trainer forward + backward + optax) per RL step, and the step time under low-precision policies
as a ratio to bf16 and fp32, all measured in the same run.

    python benchmarks/rl_bench.py [--policies fp32,bf16,fp8,mxfp4] [--prompts 8] [--group 8]
                                  [--max-new-tokens 32] [--epochs 1] [--repeats 5] [--ref]

Model: configs/tiny.py (random init, so every completion runs to ``--max-new-tokens``: a fixed
decode length). One RL step = `bitscale.rl.rollout` of ``--prompts`` 2-digit addition prompts x
``--group`` samples (`temperature:1.0`, shared-prefill best-of-N, host decoding and binary rewards,
teacher-forced batch), then the jitted `bitscale.rl.make_rl_step` (GRPO advantages,
``--epochs`` clipped updates of Adam; with ``--ref`` also the reference forward under the same
policy). Times are medians of ``--repeats`` rounds after a warm-up (compile excluded), the
policies timed round-robin within each round so that machine load hits all alike.
Low-precision policies are simulated (fake quantization in float32), so on CPU their ratio is
the simulation overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import bitscale.nn as bn
from bitscale import data as bdata
from bitscale import rl
from model_bench import tiny_config


def make_runner(policy: str, cfg: bn.ModelConfig, args, examples, task, tok):
    """(rollout(), update(batch)) closures of one policy; the state is carried between calls."""
    model = bn.Llama(cfg, policy, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4))
    step_cfg = rl.RLStepConfig(algorithm="grpo", group_size=args.group, ppo_epochs=args.epochs,
                               use_ref=args.ref)
    ref_graphdef, ref_params = nnx.split(bn.with_policy(model, policy), nnx.Param)
    step = rl.make_rl_step(graphdef, tx, step_cfg,
                           ref_graphdef=ref_graphdef if args.ref else None)
    ref_params = ref_params if args.ref else None
    box = {"state": rl.RLState(params, tx.init(params), jnp.int32(0),
                               jax.random.key_data(jax.random.key(0)))}
    prompt, mask = rl.prompt_arrays(examples, tok, 24)
    ro_cfg = rl.RolloutConfig(n=args.group, max_new_tokens=args.max_new_tokens)

    def rollout(i: int):
        m = nnx.merge(graphdef, box["state"].params)
        return rl.rollout(m, prompt, mask, examples, task, tok, config=ro_cfg,
                          key=jax.random.key(i)).batch

    def update(batch):
        box["state"], metrics = step(box["state"], ref_params, batch)
        return jax.block_until_ready(metrics)

    return rollout, update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="fp32,bf16,fp8,mxfp4")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref", action="store_true", help="include the reference forward")
    args = parser.parse_args()
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    cfg = tiny_config()
    task = bdata.Arithmetic(digits=2, ops=("+",), style="compact")
    tok = bdata.CharTokenizer()
    examples = task.generate("train", args.prompts, 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), {cores} CPU "
          f"core(s); tiny Llama ({cfg.num_params / 1e6:.2f}M params), {args.prompts} prompts x "
          f"{args.group} samples x {args.max_new_tokens} new tokens, {args.epochs} update(s) "
          f"per step{', reference forward' if args.ref else ''}")
    runners = {p: make_runner(p, cfg, args, examples, task, tok) for p in policies}
    batches, first = {}, {}
    for p, (rollout, update) in runners.items():          # warm-up: compile both parts
        t0 = time.perf_counter()
        batches[p] = rollout(0)
        update(batches[p])
        first[p] = time.perf_counter() - t0
    times = {p: {"rollout": [], "update": []} for p in policies}
    for i in range(1, args.repeats + 1):
        for p, (rollout, update) in runners.items():
            t0 = time.perf_counter()
            batch = rollout(i)
            t1 = time.perf_counter()
            update(batch)
            t2 = time.perf_counter()
            times[p]["rollout"].append(t1 - t0)
            times[p]["update"].append(t2 - t1)
    med = {p: {k: statistics.median(v) for k, v in d.items()} for p, d in times.items()}
    step = {p: m["rollout"] + m["update"] for p, m in med.items()}
    for p in policies:
        print(f"  {p:<9} first step (compile) {first[p]:6.1f} s", flush=True)
    print()
    print(f"{'policy':<9} {'rollout ms':>11} {'update ms':>10} {'step ms':>9} "
          f"{'rollout %':>10} {'vs bf16':>8} {'vs fp32':>8}")
    for p in policies:
        m = med[p]
        vs = lambda base: f"{step[p] / step[base]:8.2f}" if base in step else f"{'-':>8}"  # noqa: E731
        print(f"{p:<9} {1e3 * m['rollout']:11.1f} {1e3 * m['update']:10.1f} "
              f"{1e3 * step[p]:9.1f} {100 * m['rollout'] / step[p]:9.1f}% {vs('bf16')} "
              f"{vs('fp32')}")
    print("(step = rollout + update, medians of this run; vs: step-time ratio to that policy's "
          "step, same run)")


if __name__ == "__main__":
    main()
