"""Precision scaling laws fitted to a real sweep of small runs (Kumar et al., Sun et al.).

Trains a grid of small Llama models (`configs/laws_sweep.py`: char-level, 2-digit
multiplication with worked steps) with `bitscale.train.train`, records one `bitscale.laws.Run`
per (run, evaluated checkpoint), fits `KumarLaw` and `SunLaw` to them, and reports held-out
prediction errors, the fitted parameters and plots:

    python -m bitscale.studies.laws_sweep [--out=runs/laws] [--sweep=kumar,sun] [--quick]
        [--kumar_sizes=32x2,64x2,96x2] [--sun_sizes=64x1,64x2] [--eval_steps=100,200,300,400]
        [--eval_problems=256] [--seed=0] [--fit_starts=32] [--config=configs/laws_sweep.py]
    python -m bitscale.studies.laws_sweep --from_runs=runs/laws/runs.jsonl --out=...  # refit

Two sub-sweeps (`SweepPlan`):

- **kumar**: sizes x integer QAT precisions (`KumarPrecision`): float32, weights only
  (``int<P>@channel``: one scale per output row), activations only (``int<P>@channel`` on each
  token's row, per-token scales) and KV cache only (the ``act`` spec of the model's
  ``layers.<i>.attn.kv_cache`` rule: keys and values fake-quantized per (token, head) along
  head_dim before attention). Forward quantization with the straight-through estimator; the lm
  head, the attention products and the gradients stay float32.
- **sun**: sizes x floating-point formats ExMy with block size B (`SunFormat`): weights and
  activations of every projection fake-quantized to ``e<E>m<M>_ext@g<B>`` (OCP-style
  minifloat without Inf / NaN codes, one float32 absmax scale per block of B elements along the
  contraction axis; B must divide every contraction dimension).

Data D and the learning-rate schedule: every run trains ``max(eval_steps)`` steps at a constant
learning rate after warmup (``optim.end_lr_ratio = 1``), and each checkpoint in ``eval_steps``
is evaluated: one run gives several D values, all on the same schedule (Kaplan et al.'s
learning-curve fits; a decaying schedule would make an intermediate checkpoint a different
experiment than a shorter run). D = the number of target tokens the run trained on up to the
checkpoint (the ``tokens`` metric of each step: answer tokens + EOS of the batch, padding and
prompt excluded). N = non-embedding parameters (every parameter but ``embed`` and
``lm_head``: the projections and RMSNorm scales). The loss is the held-out answer
cross-entropy (`bitscale.train.evaluate.perplexity`, ``mask="answer"``, log taken) on the same
``eval_problems`` test problems for every run, under the run's own (quantized) forward pass.

Held-out protocols (`PROTOCOLS`): ``largest_N`` (fit on the smaller models, predict every row
of the largest: extrapolation in N), ``largest_D`` (fit on the earlier checkpoints, predict the
last: extrapolation in D) and ``leave_run_out`` (K-fold by run: all checkpoints of a run are
held out together). A protocol whose training set cannot determine the law (too few rows, a
single N or D) is reported as not applicable, with the reason.

``<out>/runs.jsonl`` (the run table), ``<out>/fit.json`` (fits and held-out errors),
``<out>/sweep.json`` (plan and per-run timings), ``<out>/report.md`` and the plots
``kumar_bits.png``, ``kumar_data.png`` (loss vs bits and vs D) and ``sun_man_bits.png``,
``sun_exp_bits.png``, ``sun_block_size.png`` (loss vs M, E, B and vs D). Finished runs found in
``<out>/runs.jsonl`` are not trained again (delete it, or pass ``--fresh``). Recorded results:
``docs/laws.md``.

References:
    Kumar et al., "Scaling Laws for Precision", arXiv:2411.04330.
    Sun et al., "Scaling Laws for Floating-Point Quantization Training", arXiv:2501.02423.
    Kaplan et al., "Scaling Laws for Neural Language Models", arXiv:2001.08361 (fits on
    learning curves, non-embedding parameter counts).
"""

from __future__ import annotations

import dataclasses
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
from bitscale import laws
from bitscale import nn as bnn
from bitscale.config_file import load_module
from bitscale.studies._configs import default_config_path
from bitscale.studies.report import markdown_table
from bitscale.train import evaluate, restore_model, train

__all__ = ["KumarPrecision", "PROTOCOLS", "Size", "SunFormat", "SweepPlan", "SWEEPS",
           "fit_and_report", "held_out_splits", "kumar_policy",
           "non_embedding_params", "parse_sizes", "plan_for", "run_config", "run_sweep",
           "sun_policy"]

SWEEPS = ("kumar", "sun")
PROTOCOLS = ("largest_N", "largest_D", "leave_run_out")
KV_CACHE = r"layers\.\d+\.attn\.kv_cache"


@dataclasses.dataclass(frozen=True)
class Size:
    """A model size of the sweep: ``hidden`` (multiple of 32) and ``layers``."""

    hidden: int
    layers: int

    def __post_init__(self) -> None:
        if (isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 32
                or self.hidden % 32 or not isinstance(self.layers, int) or self.layers < 1):
            raise ValueError(f"Size: hidden must be a multiple of 32 (>= 32) and layers an int "
                             f">= 1, got hidden={self.hidden!r}, layers={self.layers!r}")

    @property
    def name(self) -> str:
        return f"h{self.hidden}_l{self.layers}"


@dataclasses.dataclass(frozen=True)
class KumarPrecision:
    """Integer QAT bit widths of weights / activations / KV cache (None: float32)."""

    w_bits: int | None = None
    a_bits: int | None = None
    kv_bits: int | None = None

    def __post_init__(self) -> None:
        for f in ("w_bits", "a_bits", "kv_bits"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                  or not 2 <= v <= 16):
                raise ValueError(f"KumarPrecision: {f} must be None or an int in 2..16, got "
                                 f"{v!r}")

    @property
    def name(self) -> str:
        parts = [f"{k}{v}" for k, v in (("w", self.w_bits), ("a", self.a_bits),
                                         ("kv", self.kv_bits)) if v is not None]
        return "_".join(parts) or "fp32"


@dataclasses.dataclass(frozen=True)
class SunFormat:
    """A minifloat ``e<E>m<M>`` (``_ext``: no Inf / NaN codes) with blocks of ``block_size``."""

    exp_bits: int
    man_bits: int
    block_size: int

    def __post_init__(self) -> None:
        for f, lo, hi in (("exp_bits", 1, 8), ("man_bits", 0, 10), ("block_size", 2, 4096)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"SunFormat: {f} must be an int in {lo}..{hi}, got {v!r}")

    @property
    def spec(self) -> str:
        return f"e{self.exp_bits}m{self.man_bits}_ext@g{self.block_size}"

    @property
    def name(self) -> str:
        return f"e{self.exp_bits}m{self.man_bits}_b{self.block_size}"


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """What the sweep trains: sizes x precisions (kumar) and sizes x formats (sun), each run
    evaluated at the checkpoints ``eval_steps`` (it trains ``max(eval_steps)`` steps)."""

    kumar_sizes: tuple[Size, ...] = (Size(32, 2), Size(64, 2), Size(96, 2))
    kumar_precisions: tuple[KumarPrecision, ...] = (
        KumarPrecision(), KumarPrecision(w_bits=3), KumarPrecision(w_bits=4),
        KumarPrecision(a_bits=4), KumarPrecision(kv_bits=3))
    sun_sizes: tuple[Size, ...] = (Size(64, 1), Size(64, 2))
    sun_formats: tuple[SunFormat, ...] = (
        SunFormat(2, 1, 64), SunFormat(2, 1, 8), SunFormat(2, 3, 64), SunFormat(3, 2, 64),
        SunFormat(5, 2, 64), SunFormat(4, 3, 64))
    eval_steps: tuple[int, ...] = (100, 200, 300, 400)
    eval_problems: int = 256
    seed: int = 0
    warmup_steps: int = 30

    def __post_init__(self) -> None:
        steps = self.eval_steps
        if (not steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                             for s in steps) or list(steps) != sorted(set(steps))):
            raise ValueError(f"SweepPlan: eval_steps must be increasing ints >= 1, got {steps!r}")
        if self.warmup_steps >= steps[-1]:
            raise ValueError(f"SweepPlan: warmup_steps ({self.warmup_steps}) must be below the "
                             f"last eval step ({steps[-1]})")
        if not isinstance(self.eval_problems, int) or self.eval_problems < 1:
            raise ValueError(f"SweepPlan: eval_problems must be an int >= 1, got "
                             f"{self.eval_problems!r}")
        for s in self.sun_sizes:
            for f in self.sun_formats:
                bad = [d for d in (s.hidden, 4 * s.hidden) if d % f.block_size]
                if bad:
                    raise ValueError(f"SweepPlan: block size {f.block_size} of {f.name} does not "
                                     f"divide the contraction dimension {bad[0]} of size "
                                     f"{s.name} (hidden {s.hidden}, MLP {4 * s.hidden})")

    @property
    def steps(self) -> int:
        return int(self.eval_steps[-1])


QUICK_PLAN = SweepPlan(
    kumar_sizes=(Size(32, 1), Size(64, 1)),
    kumar_precisions=(KumarPrecision(), KumarPrecision(w_bits=3)),
    sun_sizes=(Size(32, 1), Size(64, 1)), sun_formats=(SunFormat(2, 1, 8), SunFormat(3, 2, 16)),
    eval_steps=(4, 8), eval_problems=32, warmup_steps=2)
"""``--quick``: a handful of 8-step runs (the code path, not a fit)."""


def parse_sizes(text: str | Sequence[str]) -> tuple[Size, ...]:
    """``"64x1,96x2"`` (or a list of ``"<hidden>x<layers>"``) -> sizes."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        h, sep, n = str(item).strip().partition("x")
        if not sep or not h.isdigit() or not n.isdigit():
            raise ValueError(f"sizes must be '<hidden>x<layers>' items such as '64x2', got "
                             f"{item!r}")
        out.append(Size(int(h), int(n)))
    if not out:
        raise ValueError("sizes: empty list")
    return tuple(out)


def plan_for(quick: bool = False, **overrides: Any) -> SweepPlan:
    """The default (or ``quick``) plan with ``overrides`` (fields of `SweepPlan`) applied."""
    return dataclasses.replace(QUICK_PLAN if quick else SweepPlan(), **overrides)


# ---------------------------------------------------------------------------------------------
# Policies, configs, counts


def kumar_policy(p: KumarPrecision) -> bnn.Policy:
    """Integer fake quantization of the projections' weights / activations (per-channel /
    per-token absmax scales) and of the KV cache; the lm head and attention stay float32."""
    rules = [bnn.Rule("lm_head")]
    if p.kv_bits is not None:
        rules.append(bnn.Rule(KV_CACHE, act=f"int{p.kv_bits}@channel"))
    rules.append(bnn.Rule(bnn.PROJ, weight=p.w_bits and f"int{p.w_bits}@channel",
                          act=p.a_bits and f"int{p.a_bits}@channel"))
    return bnn.Policy(f"laws_{p.name}", tuple(rules))


def sun_policy(f: SunFormat) -> bnn.Policy:
    """Weights and activations of every projection in ``f.spec``; the rest float32."""
    return bnn.Policy(f"laws_{f.name}", (bnn.Rule("lm_head"),
                                         bnn.Rule(bnn.PROJ, weight=f.spec, act=f.spec)))


def run_config(size: Size, policy: bnn.Policy, plan: SweepPlan,
               config: str | pathlib.Path | None = None) -> Any:
    """The config file's base run at ``size`` under ``policy``, trained ``plan.steps`` steps at
    constant LR after warmup, checkpointed at every ``plan.eval_steps``."""
    mod = load_module(pathlib.Path(config) if config else default_config_path("laws_sweep"))
    cfg = mod.get_config(policy)
    with cfg.unlocked():
        cfg.model = mod.model_config(size.hidden, size.layers)
        cfg.seed = int(plan.seed)
        cfg.train.steps = plan.steps
        cfg.train.checkpoint_every = math.gcd(*plan.eval_steps)
        cfg.train.max_to_keep = plan.steps // cfg.train.checkpoint_every
        cfg.train.progress = False
        cfg.optim.end_lr_ratio = 1.0
        cfg.optim.warmup_steps = int(plan.warmup_steps)
    return cfg


def non_embedding_params(model_cfg: bnn.ModelConfig) -> int:
    """N: parameters of the model but the token embedding and the lm head (counted on the
    model's abstract parameters, nothing allocated)."""
    abstract = nnx.eval_shape(lambda: bnn.Llama(model_cfg, "fp32", rngs=nnx.Rngs(0)))
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(abstract, nnx.Param))[0]
    return int(sum(int(np.prod(v.shape)) for path, v in leaves
                   if not bnn.dotted_path(path).startswith(("embed", "lm_head"))))


# ---------------------------------------------------------------------------------------------
# Training


def _test_batches(cfg: Any, plan: SweepPlan) -> list[dict[str, np.ndarray]]:
    task = bdata.make_task(cfg.data)
    test = task.generate("test", plan.eval_problems, 1234 + plan.seed)
    tok, b = bdata.CharTokenizer(), 128
    return [bdata.make_batch(test[i:i + b], tok, cfg.data.max_prompt_len, cfg.data.max_len)
            for i in range(0, len(test), b)]


def _train_and_eval(name: str, size: Size, policy: bnn.Policy, plan: SweepPlan,
                    out: pathlib.Path, config: Any, fields: dict[str, Any]
                    ) -> tuple[list[laws.Run], dict[str, Any]]:
    cfg = run_config(size, policy, plan, config)
    workdir = out / "runs" / name
    shutil.rmtree(workdir, ignore_errors=True)
    tokens: dict[int, float] = {}
    t0 = time.perf_counter()
    train(cfg, str(workdir), on_step=lambda s, m: tokens.__setitem__(int(s), float(m["tokens"])))
    train_s = time.perf_counter() - t0
    if sorted(tokens) != list(range(1, plan.steps + 1)):
        raise RuntimeError(f"{name}: the training loop reported steps {min(tokens)}.."
                           f"{max(tokens)} ({len(tokens)}), expected 1..{plan.steps}")
    cum = np.cumsum([tokens[s] for s in range(1, plan.steps + 1)])
    batches = _test_batches(cfg, plan)
    n_params = non_embedding_params(cfg.model)
    rows = []
    for step in plan.eval_steps:
        model, _ = restore_model(str(workdir), cfg.model, step=step, trained_policy=policy)
        loss = math.log(evaluate.perplexity(model, batches, mask="answer"))
        rows.append(laws.Run(n_params=float(n_params), tokens=float(cum[step - 1]), loss=loss,
                             name=f"{name}/step{step}", **fields))
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    meta = {"name": name, "train_s": train_s, "total_s": time.perf_counter() - t0,
            "n_params": n_params, "steps": plan.steps}
    return rows, meta


def _planned(sweeps: Sequence[str], plan: SweepPlan) -> list[tuple[str, Size, Any]]:
    jobs: list[tuple[str, Size, Any]] = []
    if "kumar" in sweeps:
        jobs += [("kumar", s, p) for s in plan.kumar_sizes for p in plan.kumar_precisions]
    if "sun" in sweeps:
        jobs += [("sun", s, f) for s in plan.sun_sizes for f in plan.sun_formats]
    return jobs


def run_sweep(out: str | pathlib.Path, sweeps: Sequence[str] = SWEEPS,
              plan: SweepPlan | None = None, config: str | pathlib.Path | None = None,
              fresh: bool = False) -> dict[str, Any]:
    """Trains (or reuses from ``<out>/runs.jsonl``) every planned run and evaluates its
    checkpoints; returns ``{"runs": [Run], "meta": [per-run dict], "wall_s"}``. The run table is
    rewritten after every run, so an interrupted sweep resumes where it stopped."""
    sweeps = check_sweeps(sweeps)
    plan = plan or SweepPlan()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "runs.jsonl"
    old = [] if fresh or not table.exists() else laws.load_runs(table)
    t0 = time.perf_counter()
    runs: list[laws.Run] = []
    meta: list[dict[str, Any]] = []
    jobs = _planned(sweeps, plan)
    for i, (kind, size, prec) in enumerate(jobs, 1):
        name = f"{kind}/{size.name}/{prec.name}"
        want = {f"{name}/step{s}" for s in plan.eval_steps}
        have = [r for r in old if r.name in want]
        if len(have) == len(want):
            runs += have
            print(f"[{i}/{len(jobs)}] {name}: reused from {table}", flush=True)
            continue
        if kind == "kumar":
            fields = {k: getattr(prec, k) for k in ("w_bits", "a_bits", "kv_bits")}
            policy = kumar_policy(prec)
        else:
            fields = {"exp_bits": prec.exp_bits, "man_bits": prec.man_bits,
                      "block_size": prec.block_size}
            policy = sun_policy(prec)
        rows, m = _train_and_eval(name, size, policy, plan, out, config, fields)
        runs += rows
        meta.append(m)
        laws.save_runs(runs + [r for r in old if r.name not in {x.name for x in runs}], table)
        print(f"[{i}/{len(jobs)}] {name}: N={m['n_params']} losses "
              + " ".join(f"{r.loss:.3f}" for r in rows) + f"  ({m['total_s']:.0f} s)",
              flush=True)
    laws.save_runs(runs, table)
    return {"runs": runs, "meta": meta, "wall_s": time.perf_counter() - t0}


def check_sweeps(sweeps: Sequence[str]) -> list[str]:
    """The sweep names, validated against `SWEEPS`."""
    sweeps = [s.strip() for s in ([sweeps] if isinstance(sweeps, str) else sweeps) if s.strip()]
    bad = [s for s in sweeps if s not in SWEEPS]
    if bad or not sweeps:
        raise ValueError(f"sweep must be a non-empty subset of {list(SWEEPS)}, got {sweeps!r}")
    return sweeps


# ---------------------------------------------------------------------------------------------
# Fits, held-out errors, report


def _kind(r: laws.Run) -> str:
    return "sun" if r.exp_bits is not None else "kumar"


def held_out_splits(runs: Sequence[laws.Run], protocol: str, folds: int = 4, seed: int = 0
                    ) -> list[tuple[list[laws.Run], list[laws.Run]]]:
    """The (train, test) row lists of a held-out protocol (`PROTOCOLS`); rows of one run share
    the name prefix before ``/step``."""
    if protocol == "largest_N":
        top = max(r.n_params for r in runs)
        return [([r for r in runs if r.n_params < top], [r for r in runs if r.n_params == top])]
    if protocol == "largest_D":
        group = lambda r: r.name.rsplit("/step", 1)[0]  # noqa: E731
        last = {}
        for r in runs:
            last[group(r)] = max(last.get(group(r), 0.0), r.tokens)
        return [([r for r in runs if r.tokens < last[group(r)]],
                 [r for r in runs if r.tokens == last[group(r)]])]
    if protocol == "leave_run_out":
        names = sorted({r.name.rsplit("/step", 1)[0] for r in runs})
        order = np.random.default_rng(seed).permutation(len(names))
        k = min(folds, len(names))
        fold_of = {names[j]: i % k for i, j in enumerate(order)}
        return [([r for r in runs if fold_of[r.name.rsplit("/step", 1)[0]] != f],
                 [r for r in runs if fold_of[r.name.rsplit("/step", 1)[0]] == f])
                for f in range(k)]
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def _law_dict(law: Any) -> dict[str, float | None]:
    return dataclasses.asdict(law)


def fit_and_report(runs: Sequence[laws.Run], out: str | pathlib.Path, *,
                   protocols: Sequence[str] = PROTOCOLS, folds: int = 4, num_starts: int = 32,
                   seed: int = 0, plots: bool = True, wall_s: float | None = None,
                   note: str = "") -> dict[str, Any]:
    """Fits each law present in ``runs`` (kumar rows: no exp_bits; sun rows: with them) on all
    of its rows and under each held-out protocol; writes ``fit.json``, ``report.md`` and the
    plots into ``out``; returns the fit.json dict. A fit that cannot run (too few rows, a
    constant field) is recorded with its reason instead of raising."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"protocols must be a subset of {PROTOCOLS}, got {bad}")
    result: dict[str, Any] = {}
    fitted: dict[str, Any] = {}
    for kind, law_cls in (("kumar", laws.KumarLaw), ("sun", laws.SunLaw)):
        rows = [r for r in runs if _kind(r) == kind]
        if not rows:
            continue
        entry: dict[str, Any] = {"rows": len(rows), "held_out": {}}
        try:
            fit = law_cls.fit(rows, seed=seed, num_starts=num_starts)
            fitted[kind] = fit.params
            entry["fit"] = {"params": _law_dict(fit.params), "rel_rmse": fit.rel_rmse,
                            "max_rel_error": fit.max_rel_error, "rmse": fit.rmse}
        except ValueError as e:
            entry["fit"] = {"error": str(e)}
        for protocol in protocols:
            errs, n_test, n_train, reasons = [], 0, [], []
            for train_rows, test_rows in held_out_splits(rows, protocol, folds, seed):
                if not train_rows or not test_rows:
                    reasons.append("empty train or test set")
                    continue
                try:
                    h = laws.held_out_error(law_cls, train_rows, test_rows, seed=seed,
                                            num_starts=num_starts)
                except ValueError as e:
                    reasons.append(str(e))
                    continue
                errs.append(h.rel_errors)
                n_test += len(test_rows)
                n_train.append(len(train_rows))
            if errs:
                rel = np.concatenate(errs)
                entry["held_out"][protocol] = {
                    "test_rows": n_test, "train_rows": n_train, "folds": len(errs),
                    "mean_abs_rel_error": float(np.mean(np.abs(rel))),
                    "max_abs_rel_error": float(np.max(np.abs(rel))),
                    "mean_rel_error": float(np.mean(rel)), "skipped": reasons}
            else:
                entry["held_out"][protocol] = {"error": "; ".join(sorted(set(reasons)))}
        result[kind] = entry
    result["wall_s"] = wall_s
    (out / "fit.json").write_text(json.dumps(result, indent=1))
    pngs = _plots(runs, fitted, out) if plots else []
    (out / "report.md").write_text(_report(runs, result, pngs, note))
    return result


def _plot_kumar_bits(law: laws.KumarLaw, rows: Sequence[laws.Run], path: pathlib.Path) -> str:
    """Loss against bits of weights / activations / KV cache (one panel each) at every model's
    last checkpoint: runs as points, the law as lines, float32 runs at the right edge."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fields = [f for f in ("w_bits", "a_bits", "kv_bits")
              if any(getattr(r, f) is not None for r in rows)]
    fp_x = 10.0
    fig, axes = plt.subplots(1, max(len(fields), 1), figsize=(5 * max(len(fields), 1), 4.2),
                             dpi=110, squeeze=False)
    try:
        d_last = {n: max(r.tokens for r in rows if r.n_params == n)
                  for n in {r.n_params for r in rows}}
        for ax, field in zip(axes[0], fields):
            for n in sorted(d_last):
                at = [r for r in rows if r.n_params == n and r.tokens == d_last[n]]
                fp = [r for r in at if r.w_bits is None and r.a_bits is None
                      and r.kv_bits is None]
                q = [r for r in at if getattr(r, field) is not None
                     and sum(getattr(r, f) is not None for f in ("w_bits", "a_bits",
                                                                 "kv_bits")) == 1]
                bits = np.arange(2.0, 9.01, 0.25)
                base = laws.Run(n, d_last[n], 1.0)
                pred = law.predict_runs([dataclasses.replace(base, **{field: float(b)})
                                         for b in bits])
                (line,) = ax.plot(bits, pred, "-", label=f"N={n:.3g}")
                ax.axhline(float(law.predict_runs([base])[0]), color=line.get_color(),
                           linestyle=":", linewidth=0.8)
                ax.scatter([getattr(r, field) for r in q], [r.loss for r in q], s=28,
                           color=line.get_color(), edgecolors="k", linewidths=0.4, zorder=3)
                ax.scatter([fp_x] * len(fp), [r.loss for r in fp], s=40, marker="*",
                           color=line.get_color(), edgecolors="k", linewidths=0.4, zorder=3)
            ax.set_xticks(list(range(2, 10)) + [fp_x],
                          [str(b) for b in range(2, 10)] + ["fp32"])
            ax.set_xlabel(f"{field} (integer QAT)")
            ax.set_ylabel("held-out loss")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Kumar et al. law vs runs at the last checkpoint (dotted: law at fp32)")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return str(path)


def _plots(runs: Sequence[laws.Run], fitted: dict[str, Any], out: pathlib.Path) -> list[str]:
    pngs = []
    for kind, law in fitted.items():
        rows = [r for r in runs if _kind(r) == kind]
        if kind == "kumar":
            pngs.append(_plot_kumar_bits(law, rows, out / "kumar_bits.png"))
            field = next((f for f in ("w_bits", "a_bits", "kv_bits")
                          if any(getattr(r, f) is not None for r in rows)), "w_bits")
            pngs.append(laws.plot_fit(law, rows, out / "kumar_data.png", bits_field=field,
                                      title="Kumar et al. law: loss vs bits and vs data D"))
        else:
            for field in ("man_bits", "exp_bits", "block_size"):
                pngs.append(laws.plot_fit(law, rows, out / f"sun_{field}.png",
                                          bits_field=field,
                                          title=f"Sun et al. law: loss vs {field} and vs D"))
    return pngs


def _precision(r: laws.Run) -> str:
    if r.exp_bits is not None:
        return f"E{r.exp_bits}M{r.man_bits} B{r.block_size}"
    parts = [f"{k}{int(v)}" for k, v in (("W", r.w_bits), ("A", r.a_bits), ("KV", r.kv_bits))
             if v is not None]
    return " ".join(parts) or "fp32"


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _report(runs: Sequence[laws.Run], result: dict[str, Any], pngs: list[str],
            note: str) -> str:
    titles = {"kumar": "Kumar et al. (integer QAT of weights / activations / KV cache)",
              "sun": "Sun et al. (floating-point ExMy formats with block size B)"}
    forms = {"kumar": "`L = A N_eff^-alpha + B D^-beta + E`, `N_eff = N prod_i (1 - exp(-P_i / "
                      "gamma_i))`",
             "sun": "`L = n/N^alpha + d/D^beta + eps + D^beta/N^alpha log2(B) / (gamma "
                    "(E+.5)^delta (M+.5)^nu)`"}
    lines = ["# bitscale: precision scaling laws on a sweep of small runs", ""]
    if note:
        lines += [note, ""]
    if result.get("wall_s") is not None:
        lines += [f"Sweep time: {result['wall_s']:.0f} s (wall-clock training + evaluation "
                  "time of each run in the table, summed; fits not included).", ""]
    for kind in ("kumar", "sun"):
        if kind not in result:
            continue
        entry, rows = result[kind], [r for r in runs if _kind(r) == kind]
        lines += [f"## {titles[kind]}", "", f"Law: {forms[kind]}; {len(rows)} rows.", ""]
        fit = entry["fit"]
        law = None
        if "error" in fit:
            lines += [f"**Not fitted:** {fit['error']}", ""]
        else:
            law = (laws.KumarLaw if kind == "kumar" else laws.SunLaw)(**fit["params"])
            lines += ["Fit on all rows (Huber on log-loss, multi-start L-BFGS): in-sample "
                      f"relative RMSE {fit['rel_rmse']:.4f}, max |relative error| "
                      f"{fit['max_rel_error']:.4f}.", "",
                      markdown_table(list(fit["params"]),
                                     [[_fmt(v) for v in fit["params"].values()]],
                                     align=["r"] * len(fit["params"])), ""]
        held = []
        for protocol, h in entry["held_out"].items():
            if "error" in h:
                held.append([protocol, "—", "—", "—", "—", "—", f"not applicable: {h['error']}"])
            else:
                held.append([protocol, h["folds"], "/".join(map(str, h["train_rows"])),
                             h["test_rows"], f"{100 * h['mean_abs_rel_error']:.2f}%",
                             f"{100 * h['max_abs_rel_error']:.2f}%",
                             f"mean signed {100 * h['mean_rel_error']:+.2f}%"])
        lines += ["Held-out prediction (relative error of the predicted loss on rows the fit "
                  "did not see):", "",
                  markdown_table(("protocol", "fits", "train rows", "test rows",
                                  "mean abs rel err", "max abs rel err", "note"), held), ""]
        pred = law.predict_runs(rows) if law is not None else [None] * len(rows)
        table = [[r.name, f"{r.n_params:.0f}", f"{r.tokens:.0f}", _precision(r),
                  f"{r.loss:.4f}", "—" if p is None else f"{p:.4f}",
                  "—" if p is None else f"{100 * (p - r.loss) / r.loss:+.2f}%"]
                 for r, p in zip(rows, pred)]
        lines += ["<details><summary>Runs</summary>", "",
                  markdown_table(("run", "N", "D (tokens)", "precision", "loss", "fit",
                                  "fit rel err"), table), "</details>", ""]
    if pngs:
        lines += ["## Plots", ""] + [f"![{pathlib.Path(p).stem}]({pathlib.Path(p).name})"
                                     for p in pngs] + [""]
    return "\n".join(lines)


def _describe(plan: SweepPlan, sweeps: Sequence[str]) -> str:
    parts = [f"Runs: char-level Llama (`configs/laws_sweep.py`, 2-digit multiplication with "
             f"worked steps), batch 32, constant LR 3e-3 after {plan.warmup_steps} warmup "
             f"steps, seed {plan.seed}; each run evaluated at steps "
             f"{', '.join(map(str, plan.eval_steps))} (D = answer tokens trained on up to "
             f"the checkpoint). N = non-embedding parameters. Loss = answer cross-entropy "
             f"(nats/token) on {plan.eval_problems} held-out problems under the run's own "
             f"quantized forward pass."]
    if "kumar" in sweeps:
        parts.append(f"Kumar sweep: sizes {', '.join(s.name for s in plan.kumar_sizes)} x "
                     f"precisions {', '.join(p.name for p in plan.kumar_precisions)} "
                     "(int fake quantization, per-channel / per-token absmax scales, STE).")
    if "sun" in sweeps:
        parts.append(f"Sun sweep: sizes {', '.join(s.name for s in plan.sun_sizes)} x "
                     f"formats {', '.join(f.spec for f in plan.sun_formats)} (weights and "
                     "activations of the projections, float32 block scales, STE).")
    return "\n".join(parts)


def define_flags() -> dict[str, flags.FlagHolder]:
    return {
        "out": flags.DEFINE_string("out", "runs/laws", "Output directory."),
        "sweep": flags.DEFINE_list("sweep", list(SWEEPS), "Sub-sweeps to run: kumar, sun."),
        "quick": flags.DEFINE_bool("quick", False, "A handful of 8-step runs (code path only)."),
        "from_runs": flags.DEFINE_string("from_runs", None, "Refit and re-render from this "
                                         "runs.jsonl instead of training."),
        "kumar_sizes": flags.DEFINE_list("kumar_sizes", None, "Kumar sizes '<hidden>x<layers>' "
                                         "(default 32x2,64x2,96x2)."),
        "sun_sizes": flags.DEFINE_list("sun_sizes", None, "Sun sizes (default 64x1,64x2)."),
        "eval_steps": flags.DEFINE_list("eval_steps", None, "Evaluated checkpoints (steps; "
                                        "the run trains to the last; default 100,200,300,400)."),
        "eval_problems": flags.DEFINE_integer("eval_problems", None, "Held-out problems."),
        "seed": flags.DEFINE_integer("seed", 0, "Seed of every run and of the fits."),
        "fit_starts": flags.DEFINE_integer("fit_starts", 32, "Multi-start L-BFGS starts."),
        "folds": flags.DEFINE_integer("folds", 4, "Folds of the leave_run_out protocol."),
        "protocols": flags.DEFINE_list("protocols", list(PROTOCOLS), "Held-out protocols."),
        "config": flags.DEFINE_string("config", None, "Base config file (default: "
                                      "configs/laws_sweep.py)."),
        "fresh": flags.DEFINE_bool("fresh", False, "Retrain runs already in <out>/runs.jsonl."),
    }


def plan_from_args(args: dict[str, Any]) -> SweepPlan:
    """The `SweepPlan` of the command line (``--quick`` and the size / step overrides)."""
    over: dict[str, Any] = {"seed": int(args.get("seed") or 0)}
    for key in ("kumar_sizes", "sun_sizes"):
        if args.get(key):
            over[key] = parse_sizes(args[key])
    if args.get("eval_steps"):
        try:
            over["eval_steps"] = tuple(int(s) for s in args["eval_steps"])
        except ValueError:
            raise ValueError(f"--eval_steps must be integers, got {args['eval_steps']}") from None
        over["warmup_steps"] = min(SweepPlan.warmup_steps, max(over["eval_steps"][-1] // 10, 1))
    if args.get("eval_problems") is not None:
        over["eval_problems"] = int(args["eval_problems"])
    return plan_for(bool(args.get("quick")), **over)


def main(args: dict[str, Any]) -> dict[str, Any]:
    """The command line: train (or ``--from_runs``), fit, write the report."""
    out = pathlib.Path(args["out"])
    sweeps = check_sweeps(args.get("sweep") or SWEEPS)
    protocols = PROTOCOLS if args.get("protocols") is None else args["protocols"]
    fit_kw = {"protocols": protocols, "folds": int(args.get("folds", 4)),
              "num_starts": int(args.get("fit_starts", 32)), "seed": int(args.get("seed") or 0)}
    if int(fit_kw["folds"]) < 2:
        raise ValueError(f"--folds must be >= 2, got {fit_kw['folds']}")
    if args.get("from_runs"):
        src = pathlib.Path(args["from_runs"])
        if not src.exists():
            raise ValueError(f"--from_runs: {src} does not exist")
        runs = [r for r in laws.load_runs(src) if _kind(r) in sweeps]
        if not runs:
            raise ValueError(f"--from_runs: {src} holds no rows of the sweeps {sweeps}")
        out.mkdir(parents=True, exist_ok=True)
        if src.resolve() != (out / "runs.jsonl").resolve():
            laws.save_runs(runs, out / "runs.jsonl")
        sweep = json.loads((src.parent / "sweep.json").read_text()) if (
            src.parent / "sweep.json").exists() else {}
        note, wall = sweep.get("note", f"Refitted from `{src}`."), sweep.get("wall_s")
    else:
        plan = plan_from_args(args)
        res = run_sweep(out, sweeps, plan, args.get("config"), fresh=bool(args.get("fresh")))
        runs, note = res["runs"], _describe(plan, sweeps)
        # per-run timings: this invocation's, and the earlier ones of the runs it reused
        prev = (json.loads((out / "sweep.json").read_text()).get("runs", [])
                if (out / "sweep.json").exists() else [])
        names = {r.name.rsplit("/step", 1)[0] for r in runs}
        fresh = {m["name"] for m in res["meta"]}
        meta = [m for m in prev if m["name"] in names and m["name"] not in fresh] + res["meta"]
        wall = float(sum(m["total_s"] for m in meta))
        (out / "sweep.json").write_text(json.dumps(
            {"plan": dataclasses.asdict(plan), "sweeps": sweeps, "wall_s": wall,
             "invocation_s": res["wall_s"], "runs": meta, "note": note,
             "machine": f"{jax.devices()[0].platform}, {os.cpu_count()} cores, jax "
             f"{jax.__version__}"}, indent=1))
    t0 = time.perf_counter()
    result = fit_and_report(runs, out, wall_s=wall, note=note, **fit_kw)
    print(f"wrote {out / 'report.md'} ({len(runs)} rows; fits took "
          f"{time.perf_counter() - t0:.0f} s)", flush=True)
    for kind in ("kumar", "sun"):
        for protocol, h in result.get(kind, {}).get("held_out", {}).items():
            if "error" not in h:
                print(f"  {kind} {protocol}: mean |rel err| {100 * h['mean_abs_rel_error']:.2f}% "
                      f"max {100 * h['max_abs_rel_error']:.2f}% ({h['test_rows']} rows)",
                      flush=True)
    return result


if __name__ == "__main__":
    from bitscale._cli import launch_study

    launch_study(define_flags, main)
