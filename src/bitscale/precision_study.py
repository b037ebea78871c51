"""Precision vs accuracy: the same model trained under each precision recipe, then evaluated.

The first section of the `make demo` report (`bitscale.demo`). Trains the same char-level Llama (``configs/demo.py``: 2-digit arithmetic with worked
steps, identical data, seed and step count) once per precision recipe -- fp32 (baseline), bf16,
fp8 (row-wise E4M3/E5M2), mxfp4 (W/A/G in MXFP4) and int4@g128 (weight-only QAT) -- each with
``bitscale.train.train`` into ``<out>/<recipe>``, then evaluates greedy-decoding accuracy (task
checker) and answer perplexity on held-out test problems. Writes ``<out>/report.md`` (table) and
``<out>/loss_curves.png`` (training loss of every recipe on one axis).

    python -m bitscale.precision_study [--out runs/precision] [--steps N] [--recipes fp32 bf16 ...]
                            [--eval-problems 200]

Step time is the median wall-clock interval between consecutive per-step metric fetches of the
training loop (steady state: one step in flight, so the interval is one step; the first step,
which includes compilation, is excluded). Rerunning into an existing ``--out`` retrains from
scratch (the recipe directories are removed first).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time

import jax
import numpy as np
from flax import nnx

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale.config_file import load_module
from bitscale.report import markdown_table, plot_curves
from bitscale.train import evaluate
from bitscale.train import loop as train_loop
from bitscale.train.metrics import read_metrics

# recipe name (directory, config file) -> named precision policy
RECIPES: dict[str, str] = {"fp32": "fp32", "bf16": "bf16", "fp8": "fp8", "mxfp4": "mxfp4",
                           "int4_g128": "int4@g128"}
BASELINE = "fp32"
TABLE_HEADERS = ("recipe", "policy", "final loss", "accuracy", "answer ppl", "bits/weight",
                 "step time (ms)", "step-time ratio")


def default_config_path() -> pathlib.Path:
    """``configs/demo.py`` of the source checkout (or of the working directory)."""
    here = pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py"
    return here if here.exists() else pathlib.Path("configs") / "demo.py"


def load_config(path: pathlib.Path, policy: str, steps: int | None):
    mod = load_module(path)
    cfg = mod.get_config(policy)
    if steps is not None:
        with cfg.unlocked():
            cfg.train.steps = int(steps)
            cfg.optim.warmup_steps = min(int(cfg.optim.warmup_steps), max(int(steps) // 10, 1))
    return cfg


def task_words(cfg) -> str:
    """``2-digit addition with compact worked steps`` for the report."""
    names = {"+": "addition", "-": "subtraction", "*": "multiplication"}
    ops = tuple(cfg.data.get("ops", ())) or tuple(names)
    style = cfg.data.get("style", "verbose")
    return (f"{cfg.data.digits}-digit {' / '.join(names[o] for o in ops)} with "
            f"{'compact ' if style == 'compact' else ''}worked steps")


def run_recipe(name: str, cfg, out: pathlib.Path, test: list, task, tok, eval_batch: int,
               max_new_tokens: int) -> dict:
    workdir = out / name
    shutil.rmtree(workdir, ignore_errors=True)
    times: list[float] = []
    t0 = time.perf_counter()
    result = train_loop.train(cfg, str(workdir),
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
            "bits": bnn.mean_weight_bits(model), "step_s": step_s, "train_s": train_s, "eval_s": eval_s,
            "curve": ([r["step"] for r in rows], [r["loss"] for r in rows]),
            "example": (test[0].prompt + acc["completions"][0]), "model": model,
            "correct": acc["correct"]}


def section(results: list[dict], out: pathlib.Path, cfg, wall_s: float,
            heading: str = "##") -> str:
    """The markdown of the study (intro, table, notes, loss-curve PNG written to ``out``)."""
    base = next((r for r in results if r["recipe"] == BASELINE), results[0])
    rows = [[r["recipe"], f"`{r['policy']}`", f"{r['final_loss']:.4f}", f"{r['accuracy']:.3f}",
             f"{r['ppl']:.3f}", f"{r['bits']:.3f}", f"{1e3 * r['step_s']:.0f}",
             f"{r['step_s'] / base['step_s']:.2f}"] for r in results]
    png = out / "loss_curves.png"
    plot_curves({r["recipe"]: r["curve"] for r in results}, str(png),
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
         f"{jax.__version__}; training and evaluation took {wall_s:.0f} s."),
    ]
    lines = [f"{heading} Precision vs accuracy", "", intro, "",
             markdown_table(TABLE_HEADERS, rows), *notes, "",
             "![training loss curves](loss_curves.png)", ""]
    return "\n".join(lines)


def write_report(results: list[dict], out: pathlib.Path, cfg, wall_s: float) -> str:
    """``<out>/report.md``: a title and `section`."""
    report = "# bitscale: precision vs accuracy\n\n" + section(results, out, cfg, wall_s)
    (out / "report.md").write_text(report)
    return report


def run(out: pathlib.Path, recipes: list[str], steps: int | None = None,
        eval_problems: int = 200, config: pathlib.Path | None = None,
        report: bool = True) -> tuple[list[dict], dict]:
    """Trains and evaluates every recipe into ``out/<recipe>``.

    Returns:
      (results, context): one dict per recipe (``recipe``, ``policy``, ``final_loss``,
      ``accuracy``, ``ppl``, ``bits``, ``step_s``, ``model`` (the trained `Llama`), ...) and
      ``{"cfg", "task", "test", "tokenizer", "wall_s"}`` (the baseline recipe's config, the
      task and held-out problems every recipe was evaluated on).
    """
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or not recipes:
        raise ValueError(f"unknown recipes {unknown}; valid: {list(RECIPES)}")
    t0 = time.perf_counter()
    config = config or default_config_path()
    out.mkdir(parents=True, exist_ok=True)
    tok = bdata.CharTokenizer()
    cfg = base_cfg = load_config(config, RECIPES[recipes[0]], steps)
    task = train_loop.make_task(cfg)  # the task the training loop builds
    test = task.generate("test", int(eval_problems), int(cfg.seed))
    eval_batch = min(100, len(test))
    max_new = int(cfg.data.max_len) - 2  # any target that fits training fits here (+ EOS)
    results = []
    for i, name in enumerate(recipes, 1):
        cfg = load_config(config, RECIPES[name], steps)
        print(f"[{i}/{len(recipes)}] {name}: policy {cfg.policy}, {cfg.train.steps} steps -> "
              f"{out / name}", flush=True)
        r = run_recipe(name, cfg, out, test, task, tok, eval_batch, max_new)
        r["cfg"] = cfg
        results.append(r)
        print(f"[{i}/{len(recipes)}] {name}: loss {r['final_loss']:.4f}  accuracy "
              f"{r['accuracy']:.3f}  ppl {r['ppl']:.3f}  {r['bits']:.3f} bits/weight  "
              f"{1e3 * r['step_s']:.0f} ms/step  (train {r['train_s']:.0f} s, eval "
              f"{r['eval_s']:.0f} s)", flush=True)
    wall_s = time.perf_counter() - t0
    if report:
        write_report(results, out, base_cfg, wall_s)
    return results, {"cfg": base_cfg, "task": task, "test": test, "tokenizer": tok, "wall_s": wall_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/precision", type=pathlib.Path)
    parser.add_argument("--steps", default=None, type=int,
                        help="override train.steps of every recipe (default: the config's)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--eval-problems", default=200, type=int)
    parser.add_argument("--config", default=None, type=pathlib.Path,
                        help="get_config(policy) file (default: configs/demo.py)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    run(args.out, args.recipes, args.steps, args.eval_problems, args.config)
    print(f"wrote {args.out / 'report.md'} and {args.out / 'loss_curves.png'} "
          f"in {time.perf_counter() - t0:.0f} s", file=sys.stdout)


if __name__ == "__main__":
    main()
