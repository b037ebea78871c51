"""Best-of-N decode throughput: `bitscale.sampling.sample_n` (one prefill, cache broadcast to N,
the N samples decoded as one batch) as a ratio to N sequential N=1 runs, and to Hugging Face
transformers ``generate(do_sample=True, num_return_sequences=N)`` on the same weights.

    python benchmarks/sampling_bench.py [--sizes tiny,100m] [--ns 1,8,64] [--max-new-tokens 32]
                                        [--prompt-len 16] [--repeats 3] [--hf-n 64] [--no-hf]
                                        [--cores K]

One prompt of ``--prompt-len`` random tokens; every sample generates exactly
``--max-new-tokens`` tokens (no EOS), from ``Temperature(1.0)`` (transformers: ``top_k=0,
top_p=1``). Throughput counts generated tokens per second of a whole call (prefill and host
overhead included, compile excluded): the median of ``--repeats`` rounds (5x as many for
``tiny``) after a warm-up, the bitscale calls timed round-robin and transformers afterwards in
a block of its own. The baseline, measured in the same run, is ``sample_n`` with N=1: N
sequential N=1 calls take N times as long, so the ratio is ``N * t(N=1) / t(N)``. Transformers
runs in float32 with as many torch threads as the process has cores (``--cores``), from a directory
written by `bitscale.nn.to_hf`, with its default (sdpa) attention and dynamic cache. ``tiny`` is
configs/tiny.py; ``100m`` is the 12-layer, 768-wide GQA model of benchmarks/model_bench.py.
Targets (issue 6): N=64 >= 10x sequential throughput, and >= 2x the transformers tokens/s at
N=64.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

import bitscale.nn as bn
from bitscale import sampling
from model_bench import CONFIG_100M, tiny_config

SEQ_TARGET, HF_TARGET = 10.0, 2.0


def time_round_robin(fns: dict, repeats: int) -> tuple[dict, dict]:
    """(first-call seconds (compile included), median seconds of ``repeats`` later calls) per
    entry; one call of each entry per round, so that changes in machine load hit all alike."""
    first, times = {}, {k: [] for k in fns}
    for k, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[k] = time.perf_counter() - t0
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t0)
    return first, {k: statistics.median(t) for k, t in times.items()}


def bitscale_runner(model, prompt, mask, n: int, max_new_tokens: int):
    key = jax.random.key(0)
    strategy = sampling.Temperature(1.0)

    def run():
        return sampling.sample_n(model, prompt, mask, n, strategy=strategy, key=key,
                                 max_new_tokens=max_new_tokens, eos_id=None, pad_id=0).tokens
    return run


def hf_runner(model, prompt, n: int, max_new_tokens: int):
    """transformers' sampling loop on the same weights (exported with `bitscale.nn.to_hf`)."""
    import torch
    import transformers as tf

    tf.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as d:
        bn.to_hf(model, d)
        hf = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    gen = tf.GenerationConfig(do_sample=True, num_return_sequences=n, max_new_tokens=max_new_tokens,
                              min_new_tokens=max_new_tokens, top_k=0, top_p=1.0, temperature=1.0,
                              pad_token_id=0, eos_token_id=None, bos_token_id=None)
    ids = torch.tensor(np.asarray(prompt), dtype=torch.long)
    attn = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=attn, generation_config=gen)
        assert out.shape == (n * ids.shape[0], ids.shape[1] + max_new_tokens), out.shape
        return out
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,100m")
    parser.add_argument("--ns", default="1,8,64")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-n", type=int, default=64, help="N of the transformers comparison")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    parser.add_argument("--cores", type=int, default=0,
                        help="pin the process (XLA and torch alike) to this many CPU cores "
                             "(0: every core it may use)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if args.cores:
        if cores is None or not 1 <= args.cores <= len(cores):
            raise SystemExit(f"--cores {args.cores}: this process may use "
                             f"{len(cores) if cores else 'an unknown number of'} core(s)")
        # Before the backend starts: XLA:CPU's thread pool (and its dot library's, which
        # ignores intra_op_parallelism_threads) then runs on these cores only.
        cores = cores[: args.cores]
        os.sched_setaffinity(0, cores)
    cores = len(cores) if cores else os.cpu_count()

    ns = sorted({int(x) for x in args.ns.split(",") if x.strip()} | {1})
    t = args.max_new_tokens
    backend = jax.default_backend()
    if not args.no_hf:
        import torch
        torch.set_num_threads(cores)
    configs = {"tiny": tiny_config(), "100m": CONFIG_100M}
    print(f"backend: {backend} ({jax.devices()[0].device_kind}); {cores} CPU thread(s)"
          f"{'' if args.no_hf else f', torch threads {cores}'}; one prompt of "
          f"{args.prompt_len} tokens, {t} new tokens per sample, Temperature(1.0), float32")
    rows, hf_rows = [], []
    for name in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        cfg = configs[name]
        model = bn.Llama(cfg, "fp32", rngs=nnx.Rngs(0))
        prompt = np.random.default_rng(0).integers(3, cfg.vocab_size, (1, args.prompt_len))
        prompt = prompt.astype(np.int32)
        mask = np.ones_like(prompt)
        hf_n = args.hf_n
        fns = {("bitscale", n): bitscale_runner(model, prompt, mask, n, t)
               for n in ns + ([] if args.no_hf else [hf_n])}
        repeats = args.repeats * (5 if name == "tiny" else 1)
        first, times = time_round_robin(fns, repeats)
        if not args.no_hf:
            # A separate block: interleaving torch and XLA calls makes each framework's idle
            # worker threads (OpenMP / Eigen spin-waiting) slow the other one down.
            time.sleep(1.0)
            hf_first, hf_times = time_round_robin(
                {("transformers", hf_n): hf_runner(model, prompt, hf_n, t)}, repeats)
            first.update(hf_first)
            times.update(hf_times)
        for (who, n), sec in times.items():
            print(f"  {name:<5} {who:<12} N={n:<3} {sec * 1e3:9.1f} ms/call "
                  f"{n * t / sec:9.0f} tok/s (first call {first[(who, n)]:5.1f} s)", flush=True)
        base = times[("bitscale", 1)]
        for n in ns:
            sec = times[("bitscale", n)]
            rows.append((name, f"{cfg.num_params / 1e6:.1f}M", n, sec * 1e3, n * t / sec,
                         n * base / sec))
        if not args.no_hf:
            ours, theirs = times[("bitscale", hf_n)], times[("transformers", hf_n)]
            hf_rows.append((name, hf_n, hf_n * t / ours, hf_n * t / theirs, theirs / ours))
        del model

    print()
    print(f"{'config':<7} {'params':>7} {'N':>4} {'ms/call':>9} {'tok/s':>9} {'vs seq':>7} "
          f"{'target':>7} {'ok':>4}")
    for name, params, n, ms, tps, ratio in rows:
        target = SEQ_TARGET if n == 64 else None
        ok = "" if target is None else ("yes" if ratio >= target else "NO")
        print(f"{name:<7} {params:>7} {n:>4} {ms:9.1f} {tps:9.0f} {ratio:7.2f} "
              f"{'' if target is None else f'{target:.0f}x':>7} {ok:>4}")
    print("(vs seq: tokens/s of one sample_n call over tokens/s of N sequential N=1 calls, "
          "this run)")
    if hf_rows:
        print()
        print(f"{'config':<7} {'N':>4} {'bitscale tok/s':>15} {'HF tok/s':>9} {'ratio':>6} "
              f"{'target':>7} {'ok':>4}")
        for name, n, ours, theirs, ratio in hf_rows:
            ok = "yes" if ratio >= HF_TARGET else "NO"
            print(f"{name:<7} {n:>4} {ours:15.0f} {theirs:9.0f} {ratio:6.2f} "
                  f"{f'{HF_TARGET:.0f}x':>7} {ok:>4}")
        print("(ratio: bitscale tokens/s over transformers generate tokens/s, same weights, "
              "same run)")


if __name__ == "__main__":
    main()
