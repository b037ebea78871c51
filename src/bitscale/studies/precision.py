"""Precision vs accuracy: the same model trained under each precision recipe, then evaluated.

The first section of the `make demo` report (`bitscale.studies.demo`). Trains the same
char-level Llama (``configs/demo.py``: 2-digit arithmetic with worked steps, identical data, seed
and step count) once per precision recipe -- fp32 (baseline), bf16, fp8 (row-wise E4M3/E5M2),
mxfp4 (W/A/G in MXFP4) and int4@g128 (weight-only QAT) -- each with `bitscale.train.train` into
``<out>/<recipe>``, then evaluates greedy-decoding accuracy (task checker) and answer perplexity
on held-out test problems. The command line writes ``<out>/report.md`` (table) and
``<out>/loss_curves.png`` (training loss of every recipe on one axis):

    python -m bitscale.studies.precision [--out=runs/precision] [--steps=N]
        [--recipes=fp32,bf16,...] [--eval_problems=200] [--config=configs/demo.py]

Step time is the median wall-clock interval between consecutive per-step metric fetches of the
training loop (steady state: one step in flight, so the interval is one step; the first step,
which includes compilation, is excluded). Rerunning into an existing ``--out`` retrains from
scratch (the recipe directories are removed first).
"""

from __future__ import annotations

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

__all__ = ["BASELINE", "RECIPES", "run", "run_recipe", "section"]

# recipe name (directory, config file) -> named precision policy
RECIPES: dict[str, str] = {"fp32": "fp32", "bf16": "bf16", "fp8": "fp8", "mxfp4": "mxfp4",
                           "int4_g128": "int4@g128"}
BASELINE = "fp32"
TABLE_HEADERS = ("recipe", "policy", "final loss", "accuracy", "answer ppl", "bits/weight",
                 "step time (ms)", "step-time ratio")


def run_recipe(name: str, cfg: Any, out: pathlib.Path, test: list, task: Any,
               tok: bdata.Tokenizer, eval_batch: int, max_new_tokens: int) -> dict[str, Any]:
    """Trains ``cfg`` into ``out/<name>`` (removed first) and evaluates it on ``test``."""
    workdir = out / name
    shutil.rmtree(workdir, ignore_errors=True)
    times: list[float] = []
    t0 = time.perf_counter()
    result = train(cfg, str(workdir),
                   on_step=lambda step, metrics: times.append(time.perf_counter()))
    train_s = time.perf_counter() - t0
    intervals = np.diff(times)[1:] if len(times) > 2 else np.diff(times)  # drop compile step
    step_s = float(np.median(intervals)) if len(intervals) else train_s / max(result["step"], 1)

    model = bnn.Llama(cfg.model, cfg.policy, rngs=nnx.Rngs(int(cfg.seed)))
    nnx.update(model, jax.device_get(result["state"].params))
    t1 = time.perf_counter()
    acc = evaluate.accuracy(model, test, task, tok, batch_size=eval_batch,
                            max_prompt_len=cfg.data.max_prompt_len,
                            max_new_tokens=max_new_tokens)
    batches = [bdata.make_batch(test[i:i + eval_batch], tok, cfg.data.max_prompt_len,
                                cfg.data.max_len) for i in range(0, len(test), eval_batch)]
    ppl = evaluate.perplexity(model, batches, mask="answer")
    eval_s = time.perf_counter() - t1
    rows = read_metrics(str(workdir / "metrics.jsonl"))
    return {"recipe": name, "policy": str(cfg.policy), "final_loss": result["metrics"]["loss"],
            "accuracy": acc["accuracy"], "n_eval": acc["n"], "ppl": ppl,
            "bits": bnn.mean_weight_bits(model), "step_s": step_s, "train_s": train_s,
            "eval_s": eval_s, "curve": ([r["step"] for r in rows], [r["loss"] for r in rows]),
            "example": (test[0].prompt + acc["completions"][0]), "model": model,
            "correct": acc["correct"], "cfg": cfg}


def run(out: str | pathlib.Path, recipes: Sequence[str] = tuple(RECIPES),
        steps: int | None = None, eval_problems: int = 200,
        config: str | pathlib.Path | None = None) -> dict[str, Any]:
    """Trains and evaluates every recipe into ``out/<recipe>``.

    Returns:
      dict with ``recipes`` (one dict per recipe: ``recipe``, ``policy``, ``final_loss``,
      ``accuracy``, ``ppl``, ``bits``, ``step_s``, ``curve``, ``model`` (the trained `Llama`),
      ``cfg``, ...), the baseline recipe's ``cfg``, the ``task``, the held-out ``test`` problems
      every recipe was evaluated on, the ``tokenizer``, ``wall_s`` and ``out``.
    """
    recipes = list(recipes)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or not recipes:
        raise ValueError(f"unknown recipes {unknown}; valid: {list(RECIPES)}")
    t0 = time.perf_counter()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = bdata.CharTokenizer()
    base_cfg = load_config(config, RECIPES[recipes[0]], steps)
    task = bdata.make_task(base_cfg.data)  # the task the training loop builds
    test = task.generate("test", int(eval_problems), int(base_cfg.seed))
    eval_batch = min(100, len(test))
    max_new = int(base_cfg.data.max_len) - 2  # any target that fits training fits here (+ EOS)
    results = []
    for i, name in enumerate(recipes, 1):
        cfg = load_config(config, RECIPES[name], steps)
        print(f"[{i}/{len(recipes)}] {name}: policy {cfg.policy}, {cfg.train.steps} steps -> "
              f"{out / name}", flush=True)
        r = run_recipe(name, cfg, out, test, task, tok, eval_batch, max_new)
        results.append(r)
        print(f"[{i}/{len(recipes)}] {name}: loss {r['final_loss']:.4f}  accuracy "
              f"{r['accuracy']:.3f}  ppl {r['ppl']:.3f}  {r['bits']:.3f} bits/weight  "
              f"{1e3 * r['step_s']:.0f} ms/step  (train {r['train_s']:.0f} s, eval "
              f"{r['eval_s']:.0f} s)", flush=True)
    return {"recipes": results, "cfg": base_cfg, "task": task, "test": test, "tokenizer": tok,
            "wall_s": time.perf_counter() - t0, "out": out}


def baseline(results: dict[str, Any]) -> dict[str, Any]:
    """The baseline recipe's result (the first recipe if the baseline did not run)."""
    return next((r for r in results["recipes"] if r["recipe"] == BASELINE),
                results["recipes"][0])


def section(results: dict[str, Any], heading: str = "##") -> str:
    """The markdown of the study (intro, table, notes; writes ``loss_curves.png`` to the run's
    ``out``)."""
    recipes, cfg, out = results["recipes"], results["cfg"], pathlib.Path(results["out"])
    base = baseline(results)
    rows = [[r["recipe"], f"`{r['policy']}`", f"{r['final_loss']:.4f}", f"{r['accuracy']:.3f}",
             f"{r['ppl']:.3f}", f"{r['bits']:.3f}", f"{1e3 * r['step_s']:.0f}",
             f"{r['step_s'] / base['step_s']:.2f}"] for r in recipes]
    plot_curves({r["recipe"]: r["curve"] for r in recipes}, str(out / "loss_curves.png"),
                title="training loss (answer tokens)", logy=True)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
        nnx.state(bnn.Llama(cfg.model, "fp32", rngs=nnx.Rngs(0)), nnx.Param)))
    m = cfg.model
    intro = (f"Each recipe trains the same Llama ({n_params / 1e6:.2f}M parameters: hidden "
             f"{m.hidden_size}, {m.num_layers} layers, {m.num_heads}/{m.num_kv_heads} heads, MLP "
             f"{m.intermediate_size}, char vocabulary) for {cfg.train.steps} steps of batch "
             f"{cfg.train.batch_size} on {task_words(cfg)} (same data stream and seed "
             f"{cfg.seed}), with only the precision policy changed.")
    notes = [
        "- **final loss**: training loss of the last step (answer tokens).",
        (f"- **accuracy**: greedy decoding on {base['n_eval']} held-out test problems, exact "
         "integer match after `####` (`Arithmetic.check`)."),
        "- **answer ppl**: teacher-forced perplexity of the test answers (target + EOS).",
        ("- **bits/weight**: stored bits per element of the decoder projection weights in the "
         "recipe's weight format (block/group scales included); embeddings and the lm head stay "
         "float32 in the quantized recipes."),
        ("- **step time**: median wall-clock interval between consecutive per-step metric fetches "
         "of the training loop (first, compiling step excluded); ratio to the "
         f"`{base['recipe']}` run. Quantized recipes are *simulated* (fake-quant in float32), so "
         "their ratio measures the QAT overhead on this machine, not low-precision speed-ups."),
        (f"- machine: {jax.devices()[0].platform} ({os.cpu_count()} cores), jax "
         f"{jax.__version__}; training and evaluation took {results['wall_s']:.0f} s."),
    ]
    lines = [f"{heading} Precision vs accuracy", "", intro, "",
             markdown_table(TABLE_HEADERS, rows), *notes, "",
             "![training loss curves](loss_curves.png)", ""]
    return "\n".join(lines)


def define_flags() -> dict[str, flags.FlagHolder]:
    return {
        "out": flags.DEFINE_string("out", "runs/precision", "Output directory."),
        "steps": flags.DEFINE_integer("steps", None, "Override train.steps of every recipe."),
        "recipes": flags.DEFINE_list("recipes", list(RECIPES), "Recipes to train."),
        "eval_problems": flags.DEFINE_integer("eval_problems", 200, "Held-out problems."),
        "config": flags.DEFINE_string("config", None, "get_config(policy) file "
                                      "(default: configs/demo.py)."),
    }


def main(args: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    results = run(args["out"], args["recipes"], args["steps"], args["eval_problems"],
                  args["config"])
    out = results["out"]
    (out / "report.md").write_text("# bitscale: precision vs accuracy\n\n" + section(results))
    print(f"wrote {out / 'report.md'} and {out / 'loss_curves.png'} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    from bitscale._cli import launch_study

    launch_study(define_flags, main)
