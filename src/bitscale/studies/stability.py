"""Training stability by precision: a policy x learning-rate x seed grid of short runs, with the
divergence rate of each (policy, learning rate).

Every run trains the small Llama of ``configs/stability.py`` (2-digit addition with worked
steps; AdamW, no gradient clipping) with `bitscale.train.train`; only the precision policy, the
peak learning rate and the seed change. Policies: the named ``fp32``, ``bf16``, ``fp8``
(row-wise E4M3 weights/activations, E5M2 gradients) and ``mxfp4`` (`bitscale.nn.NAMED_POLICIES`),
and an ExMy reduction family (`EXMY_FAMILY`): FP8 E4M3 (OCP ``fn`` convention) for weights,
activations and output gradients of every projection, one float32 scale per tensor (the
per-tensor scaling of FP8 training libraries), reduced at equal bit count by removing only
mantissa bits (E4M2, E4M1) or only exponent bits (E3M3, E2M3). Any ``e<E>m<M>`` name is such a
policy (`exmy_policy`).

Divergence (`classify`), decided per run:
  * **non-finite**: the loop raised `FloatingPointError` (a NaN/Inf loss or gradient norm); the
    step is recorded;
  * **collapsed**: the final loss -- the mean of the last tenth of the steps -- is at or above
    ``H_unigram - COLLAPSE_MARGIN`` nats, where ``H_unigram`` is the entropy of the answer-token
    frequencies of the training stream (`unigram_entropy`): the run ended no better than a model
    that ignores the context (AdamW's scale-free update rarely produces NaNs; too high a
    learning rate instead knocks the model back to the token frequencies). The step recorded is
    the one after the last step whose 10-step trailing mean was below the threshold (None: never
    below).

    python -m bitscale.studies.stability [--out=runs/stability] [--policies=fp32,bf16,...]
        [--lrs=0.03,0.1,...] [--seeds=0,1,2] [--steps=N] [--quick] [--config=<file>]
        [--compile_cache=<dir>]
    python -m bitscale.studies.stability --from_json=runs/stability/results.json  # re-render

``--quick`` trains the smoke grid `QUICK` instead. The seeds of one (policy, lr) are the same
program: with JAX's persistent compilation cache (``--compile_cache``, default
``<out>/jax_cache``) they compile once. ``experiments/stability.sh`` is the recorded grid and
``docs/stability.md`` its results.

``<out>/report.md`` gets the divergence-rate table (policy x learning rate), the final-loss
table, the per-policy summary and the mantissa-vs-exponent comparison, ``<out>/final_loss.png``
the final loss against the learning rate, ``<out>/results.json`` every run.

References:
  Lee et al., "To FP8 and Back Again: Quantifying Reduced Precision Effects on LLM Training
  Stability", arXiv:2405.18710 (2024).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale.numerics.formats import FloatFormat, element_format
from bitscale.studies._configs import default_config_path, load_config, task_words
from bitscale.studies.report import markdown_table, plot_curves
from bitscale.train import train

__all__ = ["COLLAPSE_MARGIN", "EXMY_FAMILY", "LRS", "NAMED", "POLICIES", "QUICK", "SEEDS",
           "classify", "exmy_format", "exmy_policy", "fisher_p", "load_results",
           "rates",
           "run", "run_one", "save_results", "section", "study_config", "unigram_entropy"]

NAMED = ("fp32", "bf16", "fp8", "mxfp4")
EXMY_FAMILY = ("e4m3", "e4m2", "e4m1", "e3m3", "e2m3")
"""The base format (E4M3) and its equal-bit reductions: 7 bits E4M2 (mantissa) / E3M3
(exponent), 6 bits E4M1 / E2M3 (sign bit included in the counts)."""
POLICIES = NAMED + EXMY_FAMILY
LRS = (0.03, 0.1, 0.2, 0.3, 0.5)
SEEDS = (0, 1, 2)
QUICK = {"policies": ("fp32", "e4m1", "e2m3"), "lrs": (0.03, 0.5), "seeds": (0,), "steps": 20}
"""``--quick``: the grid it runs (overrides ``--policies``, ``--lrs``, ``--seeds``, ``--steps``)."""
COLLAPSE_MARGIN = 0.1
TAIL = 0.1      # the final loss: mean of the last tenth of the steps
WINDOW = 10     # trailing-mean window of the curve summaries
SPIKE = 1.0     # the report's "spiked": a step's loss above the step-1 loss by this many nats
_EXMY = re.compile(r"^e(\d+)m(\d+)$")


def exmy_format(name: str) -> FloatFormat:
    """The element format of an ExMy family policy name (``e4m1`` -> E4M1, ``fn`` convention)."""
    m = _EXMY.match(name)
    if not m:
        raise ValueError(f"not an ExMy policy name (e<E>m<M>): {name!r}")
    fmt = element_format(f"{name}_fn")
    assert isinstance(fmt, FloatFormat)
    return fmt


def exmy_policy(name: str) -> bnn.Policy:
    """W/A/G of every projection in ``e<E>m<M>_fn@tensor`` (one float32 scale per tensor,
    round-to-nearest, STE), lm head and attention products in float32 -- the layout of
    ``bitscale.nn.NAMED_POLICIES["fp8"]`` with one format for all three operands."""
    spec = f"{exmy_format(name).name}@tensor"
    return bnn.Policy(name, (bnn.Rule("lm_head"),
                             bnn.Rule(bnn.PROJ, weight=spec, act=spec, grad=spec)))


def _policy(name: str) -> "str | bnn.Policy":
    return exmy_policy(name) if _EXMY.match(name) else name


def study_config(config: "str | pathlib.Path | None", policy: str, lr: float, seed: int,
                 steps: int | None = None) -> Any:
    """``get_config(policy)`` of the config file (default ``configs/stability.py``) with
    ``optim.lr``, ``seed`` and (when given) ``train.steps``; checkpoints only at the last
    step."""
    cfg = load_config(config or default_config_path("stability"), _policy(policy), steps)
    with cfg.unlocked():
        cfg.optim.lr = float(lr)
        cfg.seed = int(seed)
        cfg.train.checkpoint_every = int(cfg.train.steps)
        cfg.train.progress = False
    return cfg


def unigram_entropy(cfg: Any, n_batches: int = 64) -> float:
    """Entropy (nats) of the answer-token frequencies of ``cfg``'s training stream (its first
    ``n_batches`` batches): the loss of the best predictor that ignores the context."""
    d = cfg.data
    stream = bdata.batches(bdata.make_task(d), d.split, int(cfg.train.batch_size), int(cfg.seed),
                           bdata.CharTokenizer(), max_prompt_len=d.max_prompt_len,
                           max_len=d.max_len, loss_on=d.get("loss_on", "answer"))
    counts = np.zeros(256, dtype=np.int64)
    for _ in range(int(n_batches)):
        a = next(stream).arrays
        t = np.asarray(a["tokens"])[:, 1:]
        m = np.asarray(a["loss_mask"])[:, 1:].astype(bool)
        c = np.bincount(t[m].ravel(), minlength=counts.size)
        counts = np.pad(counts, (0, c.size - counts.size)) + c
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _trailing_mean(losses: Sequence[float], window: int = WINDOW) -> np.ndarray:
    x = np.asarray(losses, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(1, len(x) + 1)
    k = np.minimum(i, window)
    return (c[i] - c[i - k]) / k


def classify(losses: Sequence[float], threshold: float, nonfinite_step: int | None = None
             ) -> dict[str, Any]:
    """Diverged or not, by the module's rule, from a run's per-step losses (steps 1..n, all
    finite) and the step whose loss or gradient norm was non-finite (None: the run finished).

    Returns ``{"diverged", "reason"`` (``non-finite`` / ``collapsed`` / None), ``"step"`` (the
    non-finite step; for a collapse the step after the last below-threshold trailing mean, None
    if never below), ``"final_loss"`` (mean of the last tenth; None when non-finite),
    ``"initial_loss"``, ``"min_loss"``, ``"max_loss"`` (of the 10-step trailing mean)}``.
    """
    losses = [float(v) for v in losses]
    if any(not math.isfinite(v) for v in losses):
        raise ValueError("classify: losses must be finite (pass the non-finite step instead)")
    s = _trailing_mean(losses) if losses else np.zeros(0)
    summary = {"initial_loss": losses[0] if losses else None,
               "min_loss": float(s.min()) if losses else None,
               "max_loss": float(s.max()) if losses else None}
    if nonfinite_step is not None:
        return {"diverged": True, "reason": "non-finite", "step": int(nonfinite_step),
                "final_loss": None, **summary}
    if not losses:
        raise ValueError("classify: a finished run needs at least one loss")
    final = float(np.mean(losses[-max(int(round(TAIL * len(losses))), 1):]))
    if final < threshold:
        return {"diverged": False, "reason": None, "step": None, "final_loss": final, **summary}
    below = np.flatnonzero(s < threshold)
    step = int(below[-1]) + 2 if below.size else None  # index i is step i + 1
    return {"diverged": True, "reason": "collapsed", "step": step, "final_loss": final,
            **summary}


_STEP_RE = re.compile(r"at step (\d+)")


def run_one(cfg: Any, workdir: "str | pathlib.Path", threshold: float) -> dict[str, Any]:
    """Trains ``cfg`` into ``workdir`` (removed first; its checkpoints removed after) and
    classifies the run (`classify`); adds ``losses`` (every finished step's) and ``wall_s``."""
    workdir = pathlib.Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    losses: list[float] = []
    bad: int | None = None
    t0 = time.perf_counter()
    try:
        train(cfg, str(workdir), on_step=lambda s, m: losses.append(float(m["loss"])))
    except FloatingPointError as e:
        m = _STEP_RE.search(str(e))
        bad = int(m.group(1)) if m else len(losses) + 1
    wall = time.perf_counter() - t0
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    return {**classify(losses, threshold, bad), "losses": [round(v, 5) for v in losses],
            "wall_s": wall}


def _validate(policies: Sequence[str], lrs: Sequence[float], seeds: Sequence[int],
              steps: int | None) -> tuple[list[str], list[float], list[int]]:
    policies = list(dict.fromkeys(str(p) for p in policies))
    known = set(bnn.policy_names())
    unknown = []
    for p in policies:
        if _EXMY.match(p):
            try:
                exmy_format(p)
            except ValueError as e:
                raise ValueError(f"policy {p!r}: {e}") from None
        elif p not in known:
            unknown.append(p)
    if unknown or not policies:
        raise ValueError(f"unknown or no policies {unknown}; valid: {list(POLICIES)}, any "
                         f"e<E>m<M> minifloat, or any of bitscale.nn.policy_names()")
    try:
        lrs = list(dict.fromkeys(float(v) for v in lrs))
    except (TypeError, ValueError) as e:
        raise ValueError(f"learning rates must be numbers, got {list(lrs)}") from e
    if not lrs or any(not (math.isfinite(v) and v > 0) for v in lrs):
        raise ValueError(f"learning rates must be a non-empty list of positive numbers, got {lrs}")
    try:
        seeds = list(dict.fromkeys(int(s) for s in seeds))
    except (TypeError, ValueError) as e:
        raise ValueError(f"seeds must be integers, got {list(seeds)}") from e
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds}")
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return policies, sorted(lrs), seeds


def run(out: "str | pathlib.Path", policies: Sequence[str] = POLICIES,
        lrs: Sequence[float] = LRS, seeds: Sequence[int] = SEEDS, steps: int | None = None,
        config: "str | pathlib.Path | None" = None,
        compile_cache: "str | pathlib.Path | None" = None) -> dict[str, Any]:
    """Trains every (policy, lr, seed) into ``out/runs/<policy>/lr<lr>/seed<k>``.

    ``compile_cache``: a directory for JAX's persistent compilation cache (set process-wide),
    so that the seeds of one (policy, lr) -- the same program -- compile once.

    Returns ``{"runs": [per run: policy, lr, seed, diverged, reason, step, final_loss,
    initial_loss, min_loss, max_loss, losses, wall_s], "policies", "lrs", "seeds", "steps",
    "threshold", "unigram_entropy", "cfg", "wall_s", "out"}``.
    """
    policies, lrs, seeds = _validate(policies, lrs, seeds, steps)
    if compile_cache:
        jax.config.update("jax_compilation_cache_dir", str(compile_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    t0 = time.perf_counter()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = study_config(config, "fp32", lrs[0], seeds[0], steps)
    h = unigram_entropy(base)
    threshold = h - COLLAPSE_MARGIN
    print(f"answer-token unigram entropy {h:.4f} nats: collapse threshold {threshold:.4f}",
          flush=True)
    records: list[dict[str, Any]] = []
    total = len(policies) * len(lrs) * len(seeds)
    for p in policies:
        for lr in lrs:
            for seed in seeds:
                cfg = study_config(config, p, lr, seed, steps)
                r = run_one(cfg, out / "runs" / p / f"lr{lr:g}" / f"seed{seed}", threshold)
                records.append({"policy": p, "lr": lr, "seed": seed, **r})
                what = (f"DIVERGED ({r['reason']}, step {r['step']})" if r["diverged"]
                        else "ok")
                final = "-" if r["final_loss"] is None else f"{r['final_loss']:.3f}"
                print(f"[{len(records)}/{total}] {p} lr {lr:g} seed {seed}: final loss {final}"
                      f"  {what}  ({r['wall_s']:.1f} s)", flush=True)
    return {"runs": records, "policies": policies, "lrs": lrs, "seeds": seeds,
            "steps": int(base.train.steps), "threshold": threshold, "unigram_entropy": h,
            "cfg": base, "wall_s": time.perf_counter() - t0, "out": out}


def rates(results: dict[str, Any]) -> dict[str, dict[float, tuple[int, int]]]:
    """``{policy: {lr: (diverged runs, runs)}}``."""
    out: dict[str, dict[float, tuple[int, int]]] = {}
    for r in results["runs"]:
        d, n = out.setdefault(r["policy"], {}).get(float(r["lr"]), (0, 0))
        out[r["policy"]][float(r["lr"])] = (d + bool(r["diverged"]), n + 1)
    return out


def _final_losses(results: dict[str, Any], policy: str, lr: float) -> list[float]:
    return [r["final_loss"] for r in results["runs"] if r["policy"] == policy
            and float(r["lr"]) == lr and r["final_loss"] is not None]


def _describe(p: str) -> str:
    if _EXMY.match(p):
        f = exmy_format(p)
        return (f"E{f.ebits}M{f.mbits} W/A/G per-tensor ({f.storage_bits} bits, max "
                f"{f.max_value:g}, range 2^{math.log2(f.max_value / f.min_subnormal):.0f})")
    return {"fp32": "float32", "bf16": "bfloat16 params and matmuls",
            "fp8": "E4M3 W/A, E5M2 G, per row", "mxfp4": "MXFP4 W/A/G, SR gradients"}.get(p, p)


def section(results: dict[str, Any], heading: str = "##") -> str:
    """The markdown of the study (writes ``final_loss.png`` to the results' ``out``)."""
    cfg, out = results["cfg"], pathlib.Path(results["out"])
    policies, lrs, seeds = results["policies"], results["lrs"], results["seeds"]
    rt = rates(results)
    lr_cols = [f"lr {v:g}" for v in lrs]
    rate_rows, loss_rows, summary = [], [], []
    for p in policies:
        cells = [rt[p].get(v, (0, 0)) for v in lrs]
        rate_rows.append([f"`{p}`", *(f"{d}/{n}" for d, n in cells)])
        loss_rows.append([f"`{p}`", *(
            (f"{np.mean(f):.3f}" if (f := _final_losses(results, p, v)) else "-")
            for v in lrs)])
        d_all = sum(d for d, _ in cells)
        n_all = sum(n for _, n in cells)
        first = next((v for v, (d, _) in zip(lrs, cells) if d), None)
        half = next((v for v, (d, n) in zip(lrs, cells) if n and 2 * d >= n), None)
        div = [r for r in results["runs"] if r["policy"] == p and r["diverged"]]
        kinds = [r["reason"] for r in div]
        spiked = sum(r["reason"] == "collapsed" and bool(r["losses"])
                     and max(r["losses"]) > r["initial_loss"] + SPIKE for r in div)
        learned = sum(r["reason"] == "collapsed" and r["step"] is not None for r in div)
        vs = "-"
        if "fp32" in rt and p != "fp32":
            d0 = sum(d for d, _ in rt["fp32"].values())
            n0 = sum(n for _, n in rt["fp32"].values())
            vs = f"{fisher_p(d_all, n_all, d0, n0):.2f}"
        summary.append([f"`{p}`", _describe(p), f"{d_all}/{n_all} ({d_all / n_all:.0%})",
                        "-" if first is None else f"{first:g}",
                        "-" if half is None else f"{half:g}",
                        f"{kinds.count('non-finite')} / {kinds.count('collapsed')}",
                        f"{spiked} / {learned}", vs])
    curves = {p: (lrs, [float(np.mean(_final_losses(results, p, v)))
                        if _final_losses(results, p, v) else float("nan") for v in lrs])
              for p in policies}
    curves["collapse threshold"] = (lrs, [results["threshold"]] * len(lrs))
    styles = {p: "--" for p in policies if _EXMY.match(p)}
    styles["collapse threshold"] = ":"
    plot_curves(curves, str(out / "final_loss.png"), title="final training loss (mean over "
                "seeds, finite runs)", xlabel="peak learning rate", ylabel="final loss",
                logx=True, styles=styles)
    m = cfg.model
    intro = (f"Every run trains the same Llama (hidden {m.hidden_size}, {m.num_layers} layers, "
             f"MLP {m.intermediate_size}) for {results['steps']} steps of batch "
             f"{cfg.train.batch_size} on {task_words(cfg)} with AdamW (warmup "
             f"{cfg.optim.warmup_steps} steps, cosine decay, gradient clipping "
             f"{'off' if not cfg.optim.clip_norm else cfg.optim.clip_norm}); only the policy, the "
             f"peak learning rate and the seed (model init, data order) change. Seeds {seeds}.")
    rule = (f"A run **diverged** if its loss or gradient norm became non-finite (the loop "
            f"raises), or if it **collapsed**: its final loss (mean of the last tenth of the "
            f"steps) is at or above {results['threshold']:.3f} nats, the entropy of the "
            f"answer-token frequencies of the training stream ({results['unigram_entropy']:.3f}"
            f" nats, the loss of a model that ignores the context) minus {COLLAPSE_MARGIN}.")
    lines = [f"{heading} Training stability: divergence rate by precision and learning rate", "",
             intro, "", rule, "",
             "Diverged runs / runs, per policy and peak learning rate:", "",
             markdown_table(("policy", *lr_cols), rate_rows),
             "Final loss (mean over the seeds whose loss stayed finite):", "",
             markdown_table(("policy", *lr_cols), loss_rows),
             "Per policy:", "",
             markdown_table(("policy", "format", "diverged", "lowest lr with a divergence",
                             "lowest lr with rate >= 1/2", "non-finite / collapsed",
                             "collapsed: spiked / had learned", "p vs fp32"), summary),
             f"**spiked**: some step's loss exceeded the step-1 loss by more than {SPIKE:g} "
             "nat; **had "
             "learned**: it was below the threshold at some step before the collapse. **p vs "
             "fp32**: two-sided Fisher exact test of the pooled divergence counts against "
             "`fp32`'s.", ""]
    pairs = _pairs(policies)
    if pairs:
        rows = []
        for bits, mant, expo in pairs:
            dm = sum(rt[mant][v][0] for v in lrs)
            de = sum(rt[expo][v][0] for v in lrs)
            n = sum(rt[mant][v][1] for v in lrs)
            fm = [f for v in lrs for f in _final_losses(results, mant, v)]
            fe = [f for v in lrs for f in _final_losses(results, expo, v)]
            rows.append([bits, f"`{mant}`: {dm}/{n}", f"`{expo}`: {de}/{n}",
                         f"{fisher_p(dm, n, de, n):.2f}",
                         f"{np.mean(fm):.3f}" if fm else "-", f"{np.mean(fe):.3f}" if fe else "-"])
        lines += ["Mantissa-only vs exponent-only reductions at equal bit count (all learning "
                  "rates and seeds pooled; final loss over all finite runs):", "",
                  markdown_table(("bits", "mantissa-only: diverged", "exponent-only: diverged",
                                  "Fisher p", "mantissa-only: mean final loss",
                                  "exponent-only: mean final loss"), rows)]
    lines += [f"- machine: {jax.devices()[0].platform} ({os.cpu_count()} cores), jax "
              f"{jax.__version__}; the grid ({len(results['runs'])} runs) took "
              f"{results['wall_s']:.0f} s.", "",
              "![final loss vs learning rate](final_loss.png)", ""]
    return "\n".join(lines)


def fisher_p(d1: int, n1: int, d2: int, n2: int) -> float:
    """Two-sided Fisher exact test p-value of ``d1``/``n1`` vs ``d2``/``n2`` diverged runs."""
    from scipy import stats

    return float(stats.fisher_exact([[d1, n1 - d1], [d2, n2 - d2]])[1])


def _pairs(policies: Sequence[str]) -> list[tuple[int, str, str]]:
    """(bits, mantissa-only, exponent-only) reductions of the family's base present in
    ``policies``: the same storage bits, one with the base's exponent, one with its mantissa."""
    base = exmy_format(EXMY_FAMILY[0])
    fam = {p: exmy_format(p) for p in policies if _EXMY.match(p)}
    out = []
    for p, f in fam.items():
        if f.ebits == base.ebits and f.mbits < base.mbits:
            for q, g in fam.items():
                if g.mbits == base.mbits and g.ebits < base.ebits and \
                        g.storage_bits == f.storage_bits:
                    out.append((f.storage_bits, p, q))
    return sorted(out, reverse=True)


def save_results(results: dict[str, Any], path: "str | pathlib.Path") -> None:
    """`run`'s measured numbers (every run, its per-step losses included) as JSON."""
    keys = ("runs", "policies", "lrs", "seeds", "steps", "threshold", "unigram_entropy",
            "wall_s")
    pathlib.Path(path).write_text(json.dumps({k: results[k] for k in keys}))


def load_results(path: "str | pathlib.Path", config: "str | pathlib.Path | None" = None
                 ) -> dict[str, Any]:
    """`save_results`' file back as `run`'s results (``out``: the file's directory)."""
    path = pathlib.Path(path)
    data = json.loads(path.read_text())
    cfg = study_config(config, "fp32", data["lrs"][0], data["seeds"][0], data["steps"])
    return {**data, "cfg": cfg, "out": path.parent}


def define_flags() -> dict[str, flags.FlagHolder]:
    return {
        "out": flags.DEFINE_string("out", "runs/stability", "Output directory."),
        "policies": flags.DEFINE_list("policies", list(POLICIES), "Policies: named ones or "
                                      "e<E>m<M> (per-tensor ExMy W/A/G)."),
        "lrs": flags.DEFINE_list("lrs", [f"{v:g}" for v in LRS], "Peak learning rates."),
        "seeds": flags.DEFINE_list("seeds", [str(s) for s in SEEDS], "Seeds."),
        "steps": flags.DEFINE_integer("steps", None, "train.steps of every run (default: the "
                                      "config's)."),
        "quick": flags.DEFINE_bool("quick", False, f"Smoke run: the grid {QUICK}."),
        "config": flags.DEFINE_string("config", None, "get_config(policy) file "
                                      "(default: configs/stability.py)."),
        "compile_cache": flags.DEFINE_string("compile_cache", None, "JAX persistent compilation "
                                             "cache directory (default <out>/jax_cache; '' off)."),
        "from_json": flags.DEFINE_string("from_json", None, "Render the report of a saved "
                                         "results.json instead of training."),
    }


def main(args: dict[str, Any]) -> None:
    if args.get("from_json"):
        results = load_results(args["from_json"], args.get("config"))
    else:
        grid = {k: args[k] for k in ("policies", "lrs", "seeds", "steps")}
        if args.get("quick"):
            grid.update(QUICK)
        cache = args.get("compile_cache")
        if cache is None:
            cache = pathlib.Path(args["out"]) / "jax_cache"
        results = run(args["out"], grid["policies"], grid["lrs"], grid["seeds"], grid["steps"],
                      args.get("config"), cache or None)
    out = results["out"]
    save_results(results, out / "results.json")
    (out / "report.md").write_text("# bitscale: training stability\n\n" + section(results))
    print(f"wrote {out / 'report.md'}, {out / 'final_loss.png'} and {out / 'results.json'} "
          f"({results['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    from bitscale._cli import launch_study

    launch_study(define_flags, main)
