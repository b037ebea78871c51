"""RL in low precision: GRPO vs MC-GRPO at small and larger group sizes, bf16 vs a low-precision
policy, from one trained model.

`run` starts every RL run from the same trained model (the precision study's fp32 model in
`make demo`), converts its parameters to each run's precision policy (`bitscale.nn.with_policy`),
RL-trains it with `bitscale.rl.train_rl` for a small budget on the model's own task (train split
prompts, binary verifier reward) and returns the curves; `section` writes the markdown: reward
and held-out greedy accuracy over RL steps, a table (final reward, accuracy before / after,
sampler-vs-trainer log-prob mismatch, step time) and two PNGs.

    python -m bitscale.studies.rl --init=runs/demo/fp32 [--out=runs/rl] [--steps=8]
                                  [--prompts=8] [--quick]

(``--init``: a `bitscale.train` workdir trained with configs/demo.py, e.g. one recipe of
``python -m bitscale.studies.precision``.)

References:
  Shao et al., "DeepSeekMath" (GRPO), arXiv:2402.03300.
  Kim, "MC-GRPO: Median-Centered Group Relative Policy Optimization for Small-Rollout
  Reinforcement Learning", arXiv:2601.22582.
  Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"
  (sampler/trainer mismatch), 2025.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags, logging

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale import rl
from bitscale.studies._configs import load_config
from bitscale.studies.report import markdown_table, plot_curves
from bitscale.train import restore_model

__all__ = ["QUICK", "rl_config", "run", "run_one", "section"]

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
    c.rl = rl.rl_section(
        algorithm=algorithm, group_size=int(group_size), steps=int(steps),
        prompts_per_step=int(prompts_per_step), ppo_epochs=int(ppo_epochs), beta=0.0,
        log_ref_kl=False, max_new_tokens=int(max_new_tokens),
        eval_every=max(1, int(steps) // 4), eval_problems=int(eval_examples),
        checkpoint_every=int(steps), max_to_keep=1, progress=False)
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
        verbose: bool = True) -> dict[str, Any]:
    """Runs every (algorithm, G, policy) from ``init_model`` into ``out/rl/``.

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
      dict with ``runs`` (name -> curves and summary numbers of `run_one`, plus ``algorithm``,
      ``group``, ``policy``), the budget (``steps``, ``prompts_per_step``, ``eval_examples``,
      ``max_new_tokens``, ``lr``, ``ppo_epochs``), ``wall_s`` and ``out``.
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
    return {"runs": results, "steps": steps, "prompts_per_step": prompts_per_step,
            "eval_examples": eval_examples, "max_new_tokens": max_new, "lr": lr,
            "ppo_epochs": ppo_epochs, "wall_s": time.perf_counter() - t0, "out": out}


def section(study: dict[str, Any], heading: str = "##") -> str:
    """The markdown of `run`'s results (table, notes; two PNGs written to the run's ``out``)."""
    results, out = study["runs"], pathlib.Path(study["out"])
    steps, prompts_per_step = study["steps"], study["prompts_per_step"]
    eval_examples, max_new_tokens = study["eval_examples"], study["max_new_tokens"]
    lr, ppo_epochs, wall_s = study["lr"], study["ppo_epochs"], study["wall_s"]
    rows = [[name, r["algorithm"], str(r["group"]), f"`{r['policy']}`",
             f"{r['reward'][0]:.3f}", f"{r['final_reward']:.3f}", f"{r['acc_before']:.3f}",
             f"{r['acc_after']:.3f}", f"{r['mismatch']:.2e}", f"{r['step_s']:.2f}"]
            for name, r in results.items()]
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


def define_flags() -> dict[str, flags.FlagHolder]:
    holders = {
        "init": flags.DEFINE_string("init", None, "A bitscale.train workdir trained with "
                                    "--config."),
        "config": flags.DEFINE_string("config", None, "get_config(policy) file of --init "
                                      "(default: configs/demo.py)."),
        "out": flags.DEFINE_string("out", "runs/rl", "Output directory."),
        "steps": flags.DEFINE_integer("steps", 8, "RL steps per run."),
        "prompts": flags.DEFINE_integer("prompts", 8, "Prompts per RL step."),
        "eval_problems": flags.DEFINE_integer("eval_problems", 64, "Held-out problems."),
        "quick": flags.DEFINE_bool("quick", False, f"Tiny budget ({QUICK})."),
    }
    flags.mark_flag_as_required("init")
    return holders


def main(args: dict[str, Any]) -> None:
    logging.set_verbosity(logging.ERROR)
    cfg = load_config(args["config"], "fp32")
    model, _ = restore_model(args["init"], cfg.model)
    budget: dict[str, Any] = {"steps": args["steps"], "prompts_per_step": args["prompts"],
                              "eval_examples": args["eval_problems"]}
    if args["quick"]:
        budget.update(QUICK)
    t0 = time.perf_counter()
    out = pathlib.Path(args["out"])
    results = run(model, cfg, bdata.make_task(cfg.data), bdata.CharTokenizer(), out, **budget)
    (out / "report.md").write_text("# bitscale: RL in low precision\n\n" + section(results))
    print(f"wrote {out / 'report.md'} in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    from bitscale._cli import launch_study

    launch_study(define_flags, main)
