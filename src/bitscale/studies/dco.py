"""DCO vs cross-entropy: pass@N against training steps on a finite pool, bands over seeds.

For each loss (``ce`` and ``dco<N>``) and seed, trains the study config (``configs/dco.py``: a
small Llama on a pool of a few hundred problems, seen for many epochs; the same pool, init and
data order for both losses of a seed) and, at every checkpoint, samples N completions of each of
a fixed set of held-out problems with fixed keys (temperature 1; `bitscale.studies.tts.collect`),
and measures pass@k for k = 1..N (unbiased estimator), greedy accuracy on the held-out problems
and on pool problems, and the model's confidence (mean per-token probability of its samples; the
share of the N samples giving the most frequent answer):

    python -m bitscale.studies.dco [--out=runs/dco] [--steps=1500] [--seeds=0,1,2] [--n=16]
        [--problems=128] [--evals=6] [--config=configs/dco.py] [--quick]
    python -m bitscale.studies.dco --from_json=runs/dco/results.json   # re-render the report

``<out>/results.json`` holds every measurement (per loss, seed and step: the per-problem counts
of correct samples, from which every pass@k is computed), ``<out>/report.md`` the table and the
verdict, ``<out>/pass_at_n.png`` pass@N and pass@1 against steps with min-max bands over seeds,
``<out>/pass_at_k.png`` pass@k against k at the pass@N peak and at the last step.

References:
  Chen et al., "Rethinking Fine-Tuning when Scaling Test-Time Compute: Limiting Confidence
    Improves Mathematical Reasoning", arXiv:2502.07154 (DCO; pass@N falling with CE training).
  Chen et al., "Evaluating Large Language Models Trained on Code", arXiv:2107.03374 (pass@k).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags

from bitscale import data as bdata
from bitscale import tts
from bitscale.nn import ModelConfig
from bitscale.studies._configs import default_config_path, load_config
from bitscale.studies.report import markdown_table, plot_curves
from bitscale.studies.tts import TTSSettings, collect
from bitscale.train import evaluate, restore_model, train
from bitscale.train.metrics import read_metrics

__all__ = ["load_results", "losses", "measure", "pass_curves", "run",
           "save_results", "section", "study_config", "verdict"]

MICRO = ModelConfig(arch="llama", vocab_size=128, hidden_size=64, intermediate_size=128,
                    num_layers=1, num_heads=2, num_kv_heads=1, max_position_embeddings=128,
                    rope_theta=10000.0)
"""``--quick``'s model: one layer (half the compilation of the study's two)."""
QUICK = {"steps": 8, "seeds": (0,), "n": 4, "problems": 6, "evals": 2, "pool": 16,
         "model": MICRO}
"""``--quick``: the same code path in seconds (a smoke run; its numbers mean nothing)."""


def losses(n: int) -> tuple[str, str]:
    """The two losses compared: ``("ce", "dco<n>")``."""
    return ("ce", f"dco{int(n)}")


def study_config(config: str | pathlib.Path | None, loss: str, seed: int, steps: int,
                 evals: int, pool: int | None = None, model: Any = None) -> Any:
    """``get_config(loss)`` of the config file (default ``configs/dco.py``) with ``seed``,
    ``train.steps``, checkpoints every ``steps // evals`` steps (all kept), the warmup at most a
    tenth of the steps and, when given, the pool size and model overridden."""
    if evals < 1 or steps < evals:
        raise ValueError(f"need 1 <= evals <= steps, got evals={evals}, steps={steps}")
    cfg = load_config(config or default_config_path("dco"), loss, steps)
    with cfg.unlocked():
        cfg.seed = int(seed)
        cfg.train.checkpoint_every = int(steps) // int(evals)
        cfg.train.max_to_keep = int(evals) + 1
        cfg.train.progress = False
        if pool is not None:
            cfg.data.train_examples = int(pool)
        if model is not None:
            cfg.model = model
    return cfg


def held_out(task: Any, problems: int, seed: int = 0) -> list[bdata.Example]:
    """``problems`` distinct test-split problems (by prompt), the same for every run."""
    out, seen, i = [], set(), 0
    while len(out) < problems:
        ex = task.example("test", seed, i)
        i += 1
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out


def measure(model: Any, test: Sequence[bdata.Example], pool: Sequence[bdata.Example], task: Any,
            cfg: Any, n: int, sample_seed: int = 0) -> dict[str, Any]:
    """One checkpoint's numbers: ``counts`` (correct samples of N per held-out problem),
    ``greedy`` (held-out greedy accuracy), ``pool_greedy`` (greedy accuracy on ``pool``),
    ``token_prob`` (geometric-mean probability per sampled token), ``mode_share`` (mean share of
    the N samples giving the problem's most frequent final answer; samples with none count for
    no answer)."""
    tok = bdata.CharTokenizer()
    max_prompt, max_new = int(cfg.data.max_prompt_len), int(cfg.data.max_len) - 2
    settings = TTSSettings(n=int(n), strategy="temperature:1.0", prompt_batch=len(test),
                           seed=int(sample_seed))
    got = collect(model, test, task, tok, settings=settings, max_prompt_len=max_prompt,
                  max_new_tokens=max_new)
    lengths = np.array([[len(c) for c in row] for row in got["completions"]], np.float64)
    lengths = np.maximum(lengths + got["finished"], 1.0)  # + the EOS token where one ended it
    modes = [max(Counter(a for a in row.tolist() if a >= 0).values(), default=0) / n
             for row in got["answers"]]
    kw = dict(max_prompt_len=max_prompt, max_new_tokens=max_new)
    return {
        "counts": got["correct"].sum(axis=1).astype(int).tolist(),
        "greedy": evaluate.accuracy(model, test, task, tok, batch_size=len(test),
                                    **kw)["accuracy"],
        "pool_greedy": evaluate.accuracy(model, pool, task, tok, batch_size=len(pool),
                                         **kw)["accuracy"],
        "token_prob": float(np.exp(np.mean(got["seq_logp"] / lengths))),
        "mode_share": float(np.mean(modes)),
    }


def _train_and_measure(cfg: Any, workdir: pathlib.Path, test: list, n: int,
                       pool_probe: int) -> dict[str, Any]:
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    train(cfg, str(workdir))
    train_s = time.perf_counter() - t0
    task = bdata.make_task(cfg.data)
    pool = task.generate(cfg.data.split, int(cfg.data.train_examples), int(cfg.seed))
    probe = pool[:pool_probe]
    every, steps = int(cfg.train.checkpoint_every), int(cfg.train.steps)
    out: dict[str, Any] = {"seed": int(cfg.seed), "steps": [], "counts": [], "greedy": [],
                           "pool_greedy": [], "token_prob": [], "mode_share": []}
    for step in range(every, steps + 1, every):
        model, _ = restore_model(str(workdir), cfg.model, step=step)
        m = measure(model, test, probe, task, cfg, n)
        out["steps"].append(step)
        for k, v in m.items():
            out[k].append(v)
    rows = read_metrics(str(workdir / "metrics.jsonl"))
    out["loss_curve"] = ([r["step"] for r in rows], [r["loss"] for r in rows])
    out["train_s"], out["eval_s"] = train_s, time.perf_counter() - t0 - train_s
    return out


def run(out: str | pathlib.Path, steps: int = 1500, seeds: Sequence[int] = (0, 1, 2),
        n: int = 16, problems: int = 128, evals: int = 6,
        config: str | pathlib.Path | None = None, pool: int | None = None, model: Any = None,
        verbose: bool = True) -> dict[str, Any]:
    """Trains every (loss, seed) into ``out/<loss>/seed<k>`` and measures every checkpoint.

    Returns ``{"runs": {loss: [per-seed dict: steps, counts [E][P], greedy, pool_greedy,
    token_prob, mode_share, loss_curve, train_s, eval_s]}, "n", "problems", "pool", "seeds",
    "steps", "setup", "wall_s", "machine", "out"}``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or n < 1 or problems < 1:
        raise ValueError(f"need seeds, n >= 1 and problems >= 1; got {seeds}, {n}, {problems}")
    t0 = time.perf_counter()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = losses(n)
    base = study_config(config, names[1], seeds[0], steps, evals, pool, model)
    test = held_out(bdata.make_task(base.data), problems)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for seed in seeds:
        for name in names:
            cfg = study_config(config, name, seed, steps, evals, pool, model)
            r = _train_and_measure(cfg, out / name / f"seed{seed}", test, n,
                                   pool_probe=min(problems, int(cfg.data.train_examples)))
            runs[name].append(r)
            if verbose:
                curve = pass_curves(np.array(r["counts"]), n)
                print(f"[{name} seed {seed}] pass@{n} by step: "
                      + "  ".join(f"{s}: {v:.3f}" for s, v in zip(r["steps"], curve[:, -1]))
                      + f"  (train {r['train_s']:.0f} s, eval {r['eval_s']:.0f} s)", flush=True)
    m = base.model
    setup = {"task": _task_words(base), "pool": int(base.data.train_examples),
             "batch_size": int(base.train.batch_size), "lr": float(base.optim.lr),
             "model": f"hidden {m.hidden_size}, {m.num_layers} layers, MLP {m.intermediate_size}",
             "dco_n": int(n)}
    machine = (f"{jax.devices()[0].platform} ({os.cpu_count()} cores), jax {jax.__version__}")
    return {"runs": runs, "n": int(n), "problems": int(problems), "seeds": seeds,
            "steps": int(steps), "setup": setup, "wall_s": time.perf_counter() - t0,
            "machine": machine, "out": out}


def _task_words(cfg: Any) -> str:
    d = cfg.data
    if d.task == "arithmetic":
        names = {"+": "addition", "-": "subtraction", "*": "multiplication"}
        ops = " / ".join(names[o] for o in (tuple(d.get("ops", ())) or tuple(names)))
        return f"{d.digits}-digit {ops} with {d.get('style', 'verbose')} worked steps"
    return str(d.task)


def pass_curves(counts: np.ndarray, n: int) -> np.ndarray:
    """pass@k for k = 1..n, averaged over problems: ``counts`` [..., P] correct samples of n
    per problem -> [..., n] (the unbiased estimator, `bitscale.tts.pass_at_k_np`, float64)."""
    counts = np.asarray(counts)
    ks = np.arange(1, n + 1)
    per = tts.pass_at_k_np(n, counts[..., None], ks)  # [..., P, n], float64
    return per.mean(axis=-2)


def _stats(results: dict[str, Any], name: str) -> dict[str, np.ndarray]:
    """Per-seed arrays [S, E] of pass@1, pass@N and the other measurements of one loss."""
    rs, n = results["runs"][name], results["n"]
    curves = np.stack([pass_curves(np.array(r["counts"]), n) for r in rs])  # [S, E, n]
    out = {"pass1": curves[..., 0], "passn": curves[..., -1], "curves": curves,
           "steps": np.array(rs[0]["steps"])}
    for k in ("greedy", "pool_greedy", "token_prob", "mode_share"):
        out[k] = np.array([r[k] for r in rs], np.float64)
    return out


def verdict(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per loss: where its seed-mean pass@N peaks and how far it ends below the peak.

    References:
      Chen et al., arXiv:2502.07154 (pass@N falling with longer cross-entropy training).


    ``falls`` is True when the drop exceeds the seed band: every seed's last-step pass@N is below
    every seed's pass@N at the peak step (the min-max bands do not overlap). One seed has no band:
    ``falls`` is then simply ``drop > 0`` and ``one_seed`` is True. ``drops`` are the per-seed
    drops (pass@N at the peak step minus at the last step); ``below_steps`` the later steps whose
    band lies wholly below the peak's (a fall at that step, whether or not it lasts).
    """
    out = {}
    for name in results["runs"]:
        st = _stats(results, name)
        v, steps = st["passn"], st["steps"]
        mean = v.mean(axis=0)
        peak = int(np.argmax(mean))
        drops = v[:, peak] - v[:, -1]
        one = v.shape[0] == 1
        falls = bool(drops[0] > 0) if one else bool(v[:, -1].max() < v[:, peak].min())
        below = [int(steps[e]) for e in range(peak + 1, len(steps))
                 if (v[0, e] < v[0, peak] if one else v[:, e].max() < v[:, peak].min())]
        out[name] = {"peak_step": int(steps[peak]), "peak": float(mean[peak]),
                     "peak_band": (float(v[:, peak].min()), float(v[:, peak].max())),
                     "last_step": int(steps[-1]), "last": float(mean[-1]),
                     "last_band": (float(v[:, -1].min()), float(v[:, -1].max())),
                     "drop": float(mean[peak] - mean[-1]), "drops": drops.tolist(),
                     "falls": falls, "one_seed": one, "below_steps": below,
                     "pass1_last": float(st["pass1"][:, -1].mean())}
    return out


def _pm(v: np.ndarray) -> str:
    return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "")


def _verdict_text(results: dict[str, Any], ver: dict[str, dict[str, Any]]) -> str:
    ce_name, dco_name = list(results["runs"])
    n = results["n"]
    ce, dco = ver[ce_name], ver[dco_name]

    def line(name, v):
        band = "" if v["one_seed"] else (
            f" (seed band {v['peak_band'][0]:.3f}-{v['peak_band'][1]:.3f} at the peak, "
            f"{v['last_band'][0]:.3f}-{v['last_band'][1]:.3f} at the end)")
        how = ("falls by more than the seed band" if v["falls"] and not v["one_seed"] else
               "falls (one seed, no band)" if v["falls"] else
               "does not fall by more than the seed band" if v["drop"] > 0 else
               "does not fall")
        seeds = "" if v["one_seed"] else (
            " (per seed: " + ", ".join(f"{d:+.3f}" for d in v["drops"]) + ")")
        later = (f" Its band lies wholly below the peak's at step(s) "
                 f"{', '.join(map(str, v['below_steps']))}." if v["below_steps"] and not
                 v["one_seed"] else "")
        return (f"`{name}`: pass@{n} peaks at step {v['peak_step']} ({v['peak']:.3f}) and ends "
                f"at {v['last']:.3f} at step {v['last_step']}, a drop of {v['drop']:.3f}"
                f"{seeds}{band}: at the last step it **{how}**.{later}")

    if ce["falls"] and not dco["falls"]:
        summary = (f"The paper's effect **appears**: cross-entropy's pass@{n} falls with longer "
                   f"training while DCO's holds.")
    elif ce["falls"] and dco["falls"]:
        summary = (f"Cross-entropy's pass@{n} falls with longer training, but so does DCO's: the "
                   f"paper's rescue by DCO **does not appear** here.")
    else:
        summary = (f"Cross-entropy's pass@{n} does not end below its peak by more than the "
                   f"seed band: the paper's effect **does not appear** in this run.")
    gap = dco["last"] - ce["last"]
    return " ".join([summary, line(ce_name, ce), line(dco_name, dco),
                     f"At the last step DCO's pass@{n} is {gap:+.3f} from cross-entropy's "
                     f"(pass@1 {dco['pass1_last']:.3f} vs {ce['pass1_last']:.3f})."])


def section(results: dict[str, Any], heading: str = "##") -> str:
    """The markdown of the study (table, verdict, notes) and its two PNGs in ``out``."""
    out, n = pathlib.Path(results["out"]), results["n"]
    names = list(results["runs"])
    stats = {name: _stats(results, name) for name in names}
    rows = []
    for name in names:
        st = stats[name]
        for e, step in enumerate(st["steps"]):
            rows.append([f"`{name}`", int(step), _pm(st["pass1"][:, e]), _pm(st["passn"][:, e]),
                         _pm(st["greedy"][:, e]), _pm(st["pool_greedy"][:, e]),
                         _pm(st["mode_share"][:, e]), _pm(st["token_prob"][:, e])])
    headers = ("loss", "step", "pass@1", f"pass@{n}", "greedy (held-out)", "greedy (pool)",
               "mode share", "token prob")
    curves, bands, styles = {}, {}, {}
    for name in names:
        st = stats[name]
        for key, label, style in (("passn", f"pass@{n}", "-"), ("pass1", "pass@1", "--")):
            v = st[key]
            curves[f"{name} {label}"] = (st["steps"].tolist(), v.mean(axis=0).tolist())
            bands[f"{name} {label}"] = (v.min(axis=0).tolist(), v.max(axis=0).tolist())
            styles[f"{name} {label}"] = style
    seeds = results["seeds"]
    plot_curves(curves, str(out / "pass_at_n.png"), xlabel="training step", ylabel="pass@k",
                title=f"held-out pass@{n} (solid), pass@1 (dashed); min-max over "
                      f"{len(seeds)} seed(s)", bands=bands, styles=styles)
    ver = verdict(results)
    k_curves, k_styles = {}, {}
    ks = list(range(1, n + 1))
    for name in names:
        st = stats[name]
        peak_e = int(np.where(st["steps"] == ver[name]["peak_step"])[0][0])
        k_curves[f"{name} step {ver[name]['peak_step']} (peak)"] = (
            ks, st["curves"][:, peak_e].mean(axis=0).tolist())
        k_curves[f"{name} step {ver[name]['last_step']} (last)"] = (
            ks, st["curves"][:, -1].mean(axis=0).tolist())
        k_styles[f"{name} step {ver[name]['last_step']} (last)"] = "--"
    plot_curves(k_curves, str(out / "pass_at_k.png"), xlabel="k (samples per problem)",
                ylabel="pass@k", logx=True, styles=k_styles,
                title="pass@k at the pass@N peak (solid) and the last step (dashed)")
    s = results["setup"]
    intro = (f"Both losses train the same Llama ({s['model']}) on the same finite pool of "
             f"{s['pool']} problems ({s['task']}; batch {s['batch_size']}, lr {s['lr']:g}, "
             f"{results['steps']} steps, i.e. {results['steps'] * s['batch_size'] / s['pool']:.0f} "
             f"epochs), seeds {seeds} (a seed fixes the init, the pool and the data order, shared "
             f"by both losses). At every checkpoint each model samples {n} completions "
             f"(temperature 1, fixed keys) of the same {results['problems']} held-out problems. "
             f"Cells: mean ± sd over seeds.")
    notes = [
        f"- **pass@k**: the unbiased estimator `1 - C(n-c, k) / C(n, k)` on the {n} samples "
        "per problem, averaged over problems. **greedy (held-out / pool)**: greedy accuracy on "
        "the held-out problems / on the first pool problems (memorisation). **mode share**: "
        f"the share of the {n} samples giving the problem's most frequent final answer (1: every "
        "sample says the same); **token prob**: the geometric-mean probability of the sampled "
        "tokens (the model's confidence in its own samples).",
        f"- `{names[1]}`: DCO, `-log(1 - (1 - p)^{n})` per sequence with p the probability of "
        f"the whole reference completion; its gradient is cross-entropy's times "
        f"`F = N p (1-p)^(N-1) / (1 - (1-p)^N)`, which vanishes once p >> 1/N.",
        f"- machine: {results['machine']}; the study took {results['wall_s']:.0f} s.",
    ]
    lines = [f"{heading} DCO vs cross-entropy: pass@{n} against training steps", "", intro, "",
             markdown_table(headers, rows), _verdict_text(results, ver), "", *notes, "",
             f"![pass@{n} and pass@1 against steps](pass_at_n.png)", "",
             "![pass@k at the peak and the last step](pass_at_k.png)", ""]
    return "\n".join(lines)


def save_results(results: dict[str, Any], path: str | pathlib.Path) -> None:
    """`run`'s numbers as JSON (`load_results` reads them back for ``--from_json``)."""
    data = {k: v for k, v in results.items() if k != "out"}
    pathlib.Path(path).write_text(json.dumps(data))


def load_results(path: str | pathlib.Path) -> dict[str, Any]:
    """`save_results`' file back as `run`'s results (``out``: the file's directory)."""
    path = pathlib.Path(path)
    return {**json.loads(path.read_text()), "out": path.parent}


def define_flags() -> dict[str, flags.FlagHolder]:
    return {
        "out": flags.DEFINE_string("out", "runs/dco", "Output directory."),
        "steps": flags.DEFINE_integer("steps", 1500, "train.steps of every run."),
        "seeds": flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each loss trains once per "
                                   "seed)."),
        "n": flags.DEFINE_integer("n", 16, "Samples per problem, the largest k, and DCO's N."),
        "problems": flags.DEFINE_integer("problems", 128, "Held-out problems."),
        "evals": flags.DEFINE_integer("evals", 6, "Checkpoints measured (every steps/evals)."),
        "config": flags.DEFINE_string("config", None, "get_config(loss) file "
                                      "(default: configs/dco.py)."),
        "quick": flags.DEFINE_bool("quick", False, "Smoke run: a one-layer model, 8 steps, 1 seed, "
                                   "N=4 on 6 problems (numbers mean nothing)."),
        "from_json": flags.DEFINE_string("from_json", None, "Render the report of a saved "
                                         "results.json instead of training."),
    }


def main(args: dict[str, Any]) -> dict[str, Any]:
    if args.get("from_json"):
        results = load_results(args["from_json"])
    elif args.get("quick"):
        q = QUICK
        results = run(args["out"], q["steps"], q["seeds"], q["n"], q["problems"], q["evals"],
                      args.get("config"), pool=q["pool"], model=q["model"])
    else:
        results = run(args["out"], args["steps"], [int(s) for s in args["seeds"]], args["n"],
                      args["problems"], args["evals"], args.get("config"))
    out = pathlib.Path(results["out"])
    save_results(results, out / "results.json")
    (out / "report.md").write_text("# bitscale: DCO vs cross-entropy\n\n" + section(results))
    print(f"wrote {out / 'report.md'} in {results['wall_s']:.0f} s", flush=True)
    return results


if __name__ == "__main__":
    from bitscale._cli import launch_study

    launch_study(define_flags, main)
