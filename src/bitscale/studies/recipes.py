"""4-bit training recipes vs BF16: the same model trained under each recipe, loss gaps ranked.

Trains the demo model (``configs/demo.py``: the 3-layer char-level Llama; here on 2-digit
multiplication with worked steps, `TASK`; same data stream, steps and seeds) under
``bf16_mixed`` (float32 master weights, bfloat16 matmuls: the papers' BF16 baseline), ``fp32``
and each 4-bit policy -- plain
``nvfp4`` and ``mxfp4`` (W/A/G fake-quantized, stochastic gradients), ``nvfp4_recipe`` (NVIDIA),
``quartet2_nvfp4`` (Quartet II), ``nvint4_rotated`` (INT v.s. FP), ``quartet_mxfp4`` (Quartet) and
``quest_w4a4`` (QuEST, forward only) -- for every seed, and reports each recipe's held-out loss
gap to ``bf16_mixed`` of the same seed, ranked, with the papers' orderings checked against it:

    python -m bitscale.studies.recipes [--out=runs/recipes] [--steps=300] [--seeds=0,1]
        [--recipes=bf16_mixed,nvfp4,...] [--eval_problems=200] [--config=<get_config file>]
    python -m bitscale.studies.recipes --from_json=runs/recipes/results.json  # re-render

The held-out loss is the teacher-forced cross-entropy of the test answers (target + EOS) under the
recipe's own forward pass (`bitscale.train.evaluate.perplexity`, log taken). The final training
loss is the mean over the last fifth of the logged steps. ``<out>/report.md`` gets the table,
``<out>/loss_curves.png`` the training curves of the first seed and ``<out>/results.json`` the
numbers (``--from_json`` renders the report again from it).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags
from flax import nnx

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale.studies._configs import load_config, task_words
from bitscale.studies.report import markdown_table, plot_curves
from bitscale.train import evaluate, train
from bitscale.train.metrics import read_metrics

__all__ = ["BASELINE", "CLAIMS", "RECIPES", "TASK", "check_claims", "load_results", "run",
           "save_results", "section", "study_config"]

RECIPES = ("bf16_mixed", "fp32", "nvfp4", "nvfp4_recipe", "quartet2_nvfp4", "nvint4_rotated",
           "mxfp4", "quartet_mxfp4", "quest_w4a4")
BASELINE = "bf16_mixed"
TASK = {"ops": ("*",), "max_len": 64}
"""The study's task: 2-digit multiplication with worked steps (``85*3=255`` lines, at most 62
tokens) -- harder than 2-digit addition alone, which the model nearly solves in 300 steps,
leaving no loss gap to measure."""
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("quartet2_nvfp4", "nvfp4_recipe", "Quartet II (arXiv:2601.22813): MS-EDEN backward + "
     "4/6 forward below NVIDIA's recipe"),
    ("nvfp4_recipe", "nvfp4", "NVIDIA (arXiv:2509.25149): 2-D weights, Wgrad RHT and "
     "stochastic gradients below plain NVFP4"),
    ("nvint4_rotated", "nvfp4", "INT v.s. FP (arXiv:2510.25602): rotated NVINT4 below NVFP4"),
    ("quartet_mxfp4", "mxfp4", "Quartet (arXiv:2505.14669): rotated QuEST forward + SR "
     "backward below plain MXFP4"),
)
"""(lower, higher, source): the papers' ordering of the loss gaps to BF16, lower first."""


def study_config(config, policy: str, steps: int | None, seed: int) -> Any:
    """The config file's ``get_config(policy)`` (the demo config with `TASK` when ``config`` is
    None) with ``seed`` and ``data.max_len`` rounded up so that a step's tokens (``batch x
    max_len``) are a multiple of 128: the recipes quantize and rotate dW's operands along the
    tokens, in blocks of up to 128."""
    cfg = load_config(config, policy, steps)
    with cfg.unlocked():
        cfg.seed = int(seed)
        if config is None:  # the demo config, with the study's harder task
            cfg.data.ops = TASK["ops"]
            cfg.data.max_len = TASK["max_len"]
        b, n = int(cfg.train.batch_size), int(cfg.data.max_len)
        while (b * n) % 128:
            n += 1
        cfg.data.max_len = n
    return cfg


def _train_one(cfg: Any, workdir: pathlib.Path, test: list, tok: bdata.Tokenizer,
               eval_batch: int) -> dict[str, Any]:
    shutil.rmtree(workdir, ignore_errors=True)
    times: list[float] = []
    result = train(cfg, str(workdir), on_step=lambda s, m: times.append(time.perf_counter()))
    intervals = np.diff(times)[1:] if len(times) > 2 else np.diff(times)
    model = bnn.Llama(cfg.model, cfg.policy, rngs=nnx.Rngs(int(cfg.seed)))
    nnx.update(model, jax.device_get(result["state"].params))
    batches = [bdata.make_batch(test[i:i + eval_batch], tok, cfg.data.max_prompt_len,
                                cfg.data.max_len) for i in range(0, len(test), eval_batch)]
    eval_loss = math.log(evaluate.perplexity(model, batches, mask="answer"))
    rows = read_metrics(str(workdir / "metrics.jsonl"))
    losses = [r["loss"] for r in rows]
    tail = losses[-max(len(losses) // 5, 1):]
    return {"eval_loss": eval_loss, "train_loss": float(np.mean(tail)),
            "step_s": float(np.median(intervals)) if len(intervals) else float("nan"),
            "curve": ([r["step"] for r in rows], losses)}


def run(out: str | pathlib.Path, recipes: Sequence[str] = RECIPES, steps: int | None = 300,
        seeds: Sequence[int] = (0, 1), eval_problems: int = 200,
        config: str | pathlib.Path | None = None) -> dict[str, Any]:
    """Trains every (recipe, seed) into ``out/<recipe>/seed<k>`` and evaluates it.

    Returns ``{"runs": {recipe: [per-seed dict: eval_loss, train_loss, step_s, curve]},
    "recipes", "seeds", "cfg", "wall_s", "out"}``.
    """
    recipes, seeds = list(recipes), [int(s) for s in seeds]
    unknown = [r for r in recipes if r not in bnn.policy_names()]
    if unknown or not recipes or not seeds:
        raise ValueError(f"recipes must be known policy names (got unknown {unknown}; valid: "
                         f"{list(RECIPES)} or any of bitscale.nn.policy_names()) and seeds "
                         f"non-empty (got {seeds})")
    if BASELINE not in recipes:
        recipes.insert(0, BASELINE)
    t0 = time.perf_counter()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = bdata.CharTokenizer()
    base_cfg = study_config(config, BASELINE, steps, seeds[0])
    task = bdata.make_task(base_cfg.data)
    test = task.generate("test", int(eval_problems), int(base_cfg.seed))
    eval_batch = min(100, len(test))
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in recipes}
    for seed in seeds:
        for i, name in enumerate(recipes, 1):
            cfg = study_config(config, name, steps, seed)
            r = _train_one(cfg, out / name / f"seed{seed}", test, tok, eval_batch)
            runs[name].append(r)
            print(f"[seed {seed} {i}/{len(recipes)}] {name}: eval loss {r['eval_loss']:.4f}  "
                  f"train loss {r['train_loss']:.4f}  {1e3 * r['step_s']:.0f} ms/step",
                  flush=True)
    return {"runs": runs, "recipes": recipes, "seeds": seeds, "cfg": base_cfg,
            "wall_s": time.perf_counter() - t0, "out": out}


def gaps(results: dict[str, Any], key: str = "eval_loss") -> dict[str, np.ndarray]:
    """Per recipe, the per-seed ``key`` minus the baseline's of the same seed."""
    base = np.array([r[key] for r in results["runs"][BASELINE]])
    return {name: np.array([r[key] for r in rs]) - base for name, rs in results["runs"].items()}


def check_claims(gap: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each `CLAIMS` ordering whose recipes both ran: the measured gaps, their difference with
    its standard error over seeds (paired: the same seed's data), and a verdict from a two-sided
    paired t-test at 95%: ``holds`` / ``reversed`` when |difference| exceeds t(0.975, seeds - 1)
    standard errors (12.7 for 2 seeds, 4.3 for 3), else ``within noise``. One seed gives no
    standard error: the verdict is then the sign alone, marked ``(1 seed)``."""
    from scipy import stats

    out = []
    for lower, higher, source in CLAIMS:
        if lower not in gap or higher not in gap:
            continue
        d = gap[lower] - gap[higher]  # < 0: the claim holds
        mean = float(d.mean())
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        direction = "same direction as the paper" if mean < 0 else "opposite direction"
        if len(d) == 1:
            verdict = ("holds" if mean < 0 else "reversed") + " (1 seed)"
        elif abs(mean) <= float(stats.t.ppf(0.975, len(d) - 1)) * se:
            verdict = f"{direction}, within noise"
        else:
            verdict = "holds" if mean < 0 else "reversed"
        t = mean / se if se and not math.isnan(se) else float("nan")
        out.append({"lower": lower, "higher": higher, "source": source, "t": t,
                    "gap_lower": float(gap[lower].mean()), "gap_higher": float(gap[higher].mean()),
                    "diff": mean, "se": se, "verdict": verdict})
    return out


def _pm(v: np.ndarray) -> str:
    return f"{v.mean():+.4f}" + (f" ± {v.std(ddof=1):.4f}" if len(v) > 1 else "")


def section(results: dict[str, Any], heading: str = "##") -> str:
    """The markdown of the study: ranked table, the papers' orderings checked, curves."""
    runs, cfg, out = results["runs"], results["cfg"], pathlib.Path(results["out"])
    g_eval, g_train = gaps(results), gaps(results, "train_loss")
    ranked = sorted(runs, key=lambda n: g_eval[n].mean())
    base_step = np.mean([r["step_s"] for r in runs[BASELINE]])
    rows = []
    for rank, name in enumerate(ranked, 1):
        rs = runs[name]
        rows.append([rank, f"`{name}`", f"{np.mean([r['eval_loss'] for r in rs]):.4f}",
                     _pm(g_eval[name]), _pm(g_train[name]),
                     f"{np.mean([r['step_s'] for r in rs]) / base_step:.2f}"])
    headers = ("rank", "recipe", "held-out loss", f"gap to {BASELINE}", "train-loss gap",
               "step-time ratio")
    curves = {n: rs[0]["curve"] for n, rs in runs.items()}
    plot_curves(curves, str(out / "loss_curves.png"), title="training loss (answer tokens)",
                logy=True)
    m = cfg.model
    seeds = results["seeds"]
    intro = (f"Every recipe trains the same Llama (hidden {m.hidden_size}, {m.num_layers} layers, "
             f"MLP {m.intermediate_size}) for {cfg.train.steps} steps of batch "
             f"{cfg.train.batch_size} on {task_words(cfg)}, seeds {seeds} (the same data stream "
             "per seed), with only the precision policy changed. Gaps are the recipe's minus "
             f"`{BASELINE}`'s of the same seed (mean ± sd over seeds); lower is better.")
    checks = check_claims(g_eval)  # (seeds: used in the claim lines below)
    claim_lines = []
    for c in checks:
        se = "" if math.isnan(c["se"]) else (
            f" ± {c['se']:.4f}, t = {c['t']:.1f} with {len(seeds) - 1} df")
        claim_lines.append(
            f"- {c['source']}: `{c['lower']}` gap {c['gap_lower']:+.4f} vs `{c['higher']}` "
            f"{c['gap_higher']:+.4f}; difference {c['diff']:+.4f}{se} (paired over seeds): "
            f"**{c['verdict']}**.")
    notes = [
        "- **held-out loss**: cross-entropy of the test answers under the recipe's own "
        "(quantized) forward pass; **train-loss gap**: the same for the mean training loss of "
        "the last fifth of the steps.",
        f"- **step-time ratio**: median step time / `{BASELINE}`'s in this run (simulated "
        "quantization on this machine; not low-precision speed).",
        f"- machine: {jax.devices()[0].platform} ({os.cpu_count()} cores), jax "
        f"{jax.__version__}; the study took {results['wall_s']:.0f} s.",
    ]
    lines = [f"{heading} 4-bit training recipes vs BF16 mixed precision", "", intro, "",
             markdown_table(headers, rows), "Orderings the papers report, on these runs:", "",
             *(claim_lines or ["- (none of the papers' recipe pairs ran)"]), "", *notes, "",
             "![training loss curves](loss_curves.png)", ""]
    return "\n".join(lines)


def save_results(results: dict[str, Any], path: str | pathlib.Path) -> None:
    """The measured numbers of `run` (per recipe and seed, curves included) as JSON, so that a
    report can be rendered again (`load_results`) without retraining."""
    data = {"runs": results["runs"], "recipes": results["recipes"], "seeds": results["seeds"],
            "steps": int(results["cfg"].train.steps), "wall_s": results["wall_s"]}
    pathlib.Path(path).write_text(json.dumps(data))


def load_results(path: str | pathlib.Path, config: str | pathlib.Path | None = None
                 ) -> dict[str, Any]:
    """`save_results`' file back as `run`'s results (``out``: the file's directory)."""
    path = pathlib.Path(path)
    data = json.loads(path.read_text())
    cfg = study_config(config, BASELINE, data["steps"], data["seeds"][0])
    return {**data, "cfg": cfg, "out": path.parent}


def define_flags() -> dict[str, flags.FlagHolder]:
    return {
        "out": flags.DEFINE_string("out", "runs/recipes", "Output directory."),
        "steps": flags.DEFINE_integer("steps", 300, "train.steps of every run."),
        "seeds": flags.DEFINE_list("seeds", ["0", "1"], "Seeds (each recipe trains once per "
                                   "seed)."),
        "recipes": flags.DEFINE_list("recipes", list(RECIPES), "Policies to train."),
        "eval_problems": flags.DEFINE_integer("eval_problems", 200, "Held-out problems."),
        "config": flags.DEFINE_string("config", None, "get_config(policy) file "
                                      "(default: configs/demo.py)."),
        "from_json": flags.DEFINE_string("from_json", None, "Render the report of a saved "
                                         "results.json instead of training."),
    }


def main(args: dict[str, Any]) -> None:
    if args.get("from_json"):
        results = load_results(args["from_json"], args["config"])
    else:
        results = run(args["out"], args["recipes"], args["steps"], args["seeds"],
                      args["eval_problems"], args["config"])
    out = results["out"]
    save_results(results, out / "results.json")
    (out / "report.md").write_text("# bitscale: 4-bit training recipes\n\n" + section(results))
    print(f"wrote {out / 'report.md'} and {out / 'loss_curves.png'} in {results['wall_s']:.0f} s",
          flush=True)


if __name__ == "__main__":
    from bitscale._cli import launch_study

    launch_study(define_flags, main)
