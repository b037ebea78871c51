"""RL in low precision: GRPO vs MC-GRPO at small and larger group sizes, bf16 vs a low-precision
policy, from one trained model.

`run` starts every RL run from the same trained model (the precision study's fp32 model in
`make demo`), converts its parameters to each run's precision policy (`bitscale.nn.with_policy`),
RL-trains it with `bitscale.rl.train_rl` for a small budget on the model's own task (train split
prompts, binary verifier reward) and returns a markdown section: reward and held-out greedy
accuracy over RL steps, a table (final reward, accuracy before / after, sampler-vs-trainer
log-prob mismatch, step time) and two PNGs.

    python -m bitscale.rl_study --init runs/demo/fp32 [--out runs/rl] [--steps 8]
                                [--prompts 8] [--quick]

(``--init``: a `bitscale.train` workdir trained with configs/demo.py, e.g. one recipe of
`python -m bitscale.precision_study`.)

References:
  Shao et al., "DeepSeekMath" (GRPO), arXiv:2402.03300.
  Kim, "MC-GRPO: Median-Centered Group Relative Policy Optimization for Small-Rollout
  Reinforcement Learning", arXiv:2601.22582.
  Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"
  (sampler/trainer mismatch), 2025.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from bitscale import nn as bnn
from bitscale import rl
from bitscale.report import markdown_table, plot_curves

TABLE_HEADERS = ("run", "algorithm", "G", "policy", "reward step 1", "final reward",
                 "accuracy before", "accuracy after", "mean abs dlogp", "step time (s)")
QUICK = {"steps": 2, "prompts_per_step": 2, "eval_examples": 4, "max_new_tokens": 8}


def rl_config(cfg, *, algorithm: str, group_size: int, policy: str, steps: int,
              prompts_per_step: int, eval_examples: int, max_new_tokens: int, lr: float,
              ppo_epochs: int, seed: int | None = None) -> ml_collections.ConfigDict:
    """The `train_rl` config of one study run: ``cfg``'s model, data and mesh, an RL optimizer
    (``lr``, constant from the first update, no weight decay; stochastic-rounded bf16 master
    weights when the policy stores bf16 parameters) and an ``rl`` section (binary reward,
    temperature 1, beta 0, reference only for ``kl_ref`` off)."""
    c = ml_collections.ConfigDict()
    c.model = cfg.model
    c.policy = policy
    c.seed = int(cfg.seed if seed is None else seed)
    c.data = ml_collections.ConfigDict(cfg.data.to_dict())
    if cfg.get("mesh", None) is not None:
        c.mesh = ml_collections.ConfigDict(cfg.mesh.to_dict())
    c.optim = ml_collections.ConfigDict(cfg.optim.to_dict())
    c.optim.lr = float(lr)
    c.optim.warmup_steps = 0
    c.optim.end_lr_ratio = 1.0
    c.optim.weight_decay = 0.0
    # bf16-stored parameters: updates of ~lr are below bf16's resolution and would round away;
    # stochastic-rounded master weights (bitscale.train.low_precision_master) keep them unbiased.
    if bnn.resolve_policy(policy).param_dtype == "bfloat16":
        c.optim.master_spec = "bf16"
    c.rl = ml_collections.ConfigDict(dict(
        rl.RL_DEFAULTS, algorithm=algorithm, group_size=int(group_size), steps=int(steps),
        prompts_per_step=int(prompts_per_step), ppo_epochs=int(ppo_epochs), beta=0.0,
        log_ref_kl=False, max_new_tokens=int(max_new_tokens),
        eval_every=max(1, int(steps) // 4), eval_problems=int(eval_examples),
        checkpoint_every=int(steps), max_to_keep=1, progress=False))
    c.lock()
    return c


def _tail_mean(xs: Sequence[float]) -> float:
    k = max(1, -(-len(xs) // 4))
    return float(np.mean(xs[-k:]))


def run_one(init_model, cfg, task, tokenizer, workdir: pathlib.Path) -> dict:
    """One RL run into ``workdir`` (removed first); its curves and summary numbers."""
    shutil.rmtree(workdir, ignore_errors=True)
    rows: list[dict] = []
    times: list[float] = []

    def on_step(step: int, m: dict) -> None:
        times.append(time.perf_counter())
        rows.append(dict(m, step=step))

    t0 = time.perf_counter()
    result = rl.train_rl(cfg, str(workdir), on_step=on_step, init_model=init_model, task=task,
                         tokenizer=tokenizer)
    wall = time.perf_counter() - t0
    intervals = np.diff(times)[1:] if len(times) > 2 else np.diff(times)
    step_s = float(np.median(intervals)) if len(intervals) else wall / max(len(rows), 1)
    evals = result["eval"]
    rewards = [r["reward_mean"] for r in rows]
    return {"steps": [r["step"] for r in rows], "reward": rewards,
            "eval_steps": [s for s, _ in evals], "eval_acc": [a for _, a in evals],
            "final_reward": _tail_mean(rewards), "acc_before": evals[0][1],
            "acc_after": evals[-1][1],
            "mismatch": float(np.mean([r["mismatch_mean_abs_diff"] for r in rows])),
            "mismatch_max": float(np.max([r["mismatch_max_abs_diff"] for r in rows])),
            "clip_frac": float(np.mean([r["clip_frac"] for r in rows])),
            "step_s": step_s, "wall_s": wall}


def run(init_model, cfg, task, tokenizer, out, *, steps: int = 8, prompts_per_step: int = 8,
        groups: Sequence[int] = (2, 8), algorithms: Sequence[str] = ("grpo", "mc_grpo"),
        policies: Sequence[str] = ("bf16", "fp8"), eval_examples: int = 64,
        max_new_tokens: int | None = None, lr: float = 1e-4, ppo_epochs: int = 1,
        heading: str = "##", verbose: bool = True) -> str:
    """Runs every (algorithm, G, policy) from ``init_model`` into ``out/rl/`` and returns the
    markdown section "RL in low precision" (writes ``rl_reward.png`` and ``rl_accuracy.png``
    to ``out``).

    Args:
      init_model: the trained `bitscale.nn.Llama` to start from (any precision; each run casts
        its parameters to the run's policy).
      cfg: the config it was trained with (``model``, ``seed``, ``data``, ``optim``, ``mesh``).
      task, tokenizer: its task (train-split prompts, verifier) and tokenizer.
      steps, prompts_per_step: the RL budget of every run; groups: G values (MC-GRPO samples
        G + 1, so every G must be even); algorithms, policies: the grid.
      eval_examples: held-out test problems for greedy accuracy (every ``steps // 4`` steps).
      max_new_tokens: generation budget (default ``cfg.data.max_len - 2``).
      lr, ppo_epochs: RL optimizer learning rate and updates per rollout batch.
    Returns:
      the section's markdown.
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    max_new = int(max_new_tokens or int(cfg.data.max_len) - 2)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    grid = [(a, g, p) for p in policies for a in algorithms for g in groups]
    for i, (alg, g, pol) in enumerate(grid, 1):
        name = f"{alg} G={g} {pol}"
        rcfg = rl_config(cfg, algorithm=alg, group_size=g, policy=pol, steps=steps,
                         prompts_per_step=prompts_per_step, eval_examples=eval_examples,
                         max_new_tokens=max_new, lr=lr, ppo_epochs=ppo_epochs)
        r = run_one(init_model, rcfg, task, tokenizer,
                    out / "rl" / f"{alg}_g{g}_{pol.replace('@', '_')}")
        r.update(algorithm=alg, group=g, policy=pol)
        results[name] = r
        if verbose:
            print(f"[rl {i}/{len(grid)}] {name}: reward {r['reward'][0]:.3f} -> "
                  f"{r['final_reward']:.3f}  accuracy {r['acc_before']:.3f} -> "
                  f"{r['acc_after']:.3f}  |dlogp| {r['mismatch']:.2e}  "
                  f"{r['step_s']:.2f} s/step  ({r['wall_s']:.0f} s)", flush=True)
    wall_s = time.perf_counter() - t0
    return section(results, out, cfg, steps=steps, prompts_per_step=prompts_per_step,
                   eval_examples=eval_examples, max_new_tokens=max_new, lr=lr,
                   ppo_epochs=ppo_epochs, wall_s=wall_s, heading=heading)


def section(results: dict[str, dict], out: pathlib.Path, cfg, *, steps: int,
            prompts_per_step: int, eval_examples: int, max_new_tokens: int, lr: float,
            ppo_epochs: int, wall_s: float, heading: str = "##") -> str:
    """The markdown of the study (table, notes, two PNGs written to ``out``)."""
    rows = [[name, r["algorithm"], str(r["group"]), f"`{r['policy']}`",
             f"{r['reward'][0]:.3f}", f"{r['final_reward']:.3f}", f"{r['acc_before']:.3f}",
             f"{r['acc_after']:.3f}", f"{r['mismatch']:.2e}", f"{r['step_s']:.2f}"] for name, r in results.items()]
    first_policy = next(iter(results.values()))["policy"] if results else None
    styles = {name: "-" if r["policy"] == first_policy else "--" for name, r in results.items()}
    plot_curves({name: (r["steps"], r["reward"]) for name, r in results.items()},
                str(out / "rl_reward.png"), title="RL reward (mean over the step's rollouts)",
                xlabel="RL step", ylabel="mean reward", styles=styles)
    plot_curves({name: (r["eval_steps"], r["eval_acc"]) for name, r in results.items()},
                str(out / "rl_accuracy.png"),
                title=f"held-out greedy accuracy ({eval_examples} test problems)",
                xlabel="RL step", ylabel="accuracy", styles=styles)
    intro = (f"Every run starts from the same trained model (its parameters cast to the run's "
             f"policy) and RL-trains it for {steps} steps of {prompts_per_step} train-split "
             f"prompts, G rollouts each (`temperature:1.0`, at most {max_new_tokens} new "
             f"tokens; MC-GRPO samples G + 1 and masks its median pivot), binary verifier "
             f"reward, {ppo_epochs} clipped update(s) per batch (eps 0.2, beta 0, token-mean), "
             f"Adam at lr {lr:g}; {len(results)} runs took {wall_s:.0f} s in all.")
    notes = [
        "- **reward step 1 / final reward**: mean reward of the step's rollouts at the first step "
        "and over the last quarter of the steps (curves in `rl_reward.png`; the first policy "
        "solid, the other dashed). Every run sees the same prompts at a given step, so ups and "
        "downs shared by all curves are prompt difficulty, not training.",
        (f"- **accuracy before / after**: greedy decoding on {eval_examples} held-out test "
         "problems at step 0 and after the last step (`rl_accuracy.png`); with this budget the "
         "changes are within noise: the section checks the pipeline, not a tuned result."),
        ("- **mean abs dlogp**: token mean of |log p_trainer - log p_sampler| over the "
         "completion tokens, averaged over steps: the sampler (KV-cached decoding) and the "
         "trainer (one teacher-forced pass) run the same policy, so any gap is numerical "
         "(precision, shapes, reduction order) and biases the importance ratio."),
        ("- **step time**: median wall-clock time per RL step (rollout, reward, update; the "
         "first, compiling step excluded). Low-precision policies are simulated (fake "
         "quantization), so their time measures the overhead, not a speed-up."),
        (f"- machine: {jax.devices()[0].platform} ({os.cpu_count()} cores), jax "
         f"{jax.__version__}."),
    ]
    lines = [f"{heading} RL in low precision", "", intro, "",
             markdown_table(TABLE_HEADERS, rows), *notes, "",
             "![RL reward](rl_reward.png)", "", "![held-out accuracy](rl_accuracy.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from bitscale import data as bdata
    from bitscale import precision_study
    from bitscale.train.loop import make_task, restore_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, type=pathlib.Path,
                        help="a bitscale.train workdir trained with --config")
    parser.add_argument("--config", default=None, type=pathlib.Path,
                        help="get_config(policy) file of --init (default: configs/demo.py)")
    parser.add_argument("--out", default="runs/rl", type=pathlib.Path)
    parser.add_argument("--steps", default=8, type=int)
    parser.add_argument("--prompts", default=8, type=int, help="prompts per RL step")
    parser.add_argument("--eval-problems", default=64, type=int)
    parser.add_argument("--quick", action="store_true", help=f"tiny budget ({QUICK})")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.ERROR)
    cfg = precision_study.load_config(args.config or precision_study.default_config_path(),
                                      "fp32", None)
    model, _ = restore_model(cfg, str(args.init))
    budget: dict[str, Any] = {"steps": args.steps, "prompts_per_step": args.prompts,
                              "eval_examples": args.eval_problems}
    if args.quick:
        budget.update(QUICK)
    t0 = time.perf_counter()
    md = run(model, cfg, make_task(cfg), bdata.CharTokenizer(), args.out, **budget)
    (args.out / "report.md").write_text("# bitscale: RL in low precision\n\n" + md)
    print(f"wrote {args.out / 'report.md'} in {time.perf_counter() - t0:.0f} s", file=sys.stdout)


if __name__ == "__main__":
    main()
