"""Test-time scaling of trained models: N samples per problem, pass@k, votes and verifiers.

`collect` draws N samples per held-out problem with the best-of-N sampler (one prefill per
prompt, the KV cache broadcast to N) and scores them with the task's checker; `analyze` turns
the [problems, N] grids into curves; `run` does both for several models (the `make demo` recipes)
and `section` writes the report section (pass@k of every model on one plot, majority vote and
imperfect-verifier accuracy against k, K* for a false-positive cost). `run_checkpoint` and the
command line do the same for one trained checkpoint:

    python -m bitscale.studies.tts --config=configs/demo.py --checkpoint=runs/demo/fp32 \\
        --workdir=/tmp/tts --n=64 --problems=64 [--strategy=top_p:0.95] [--policy=bf16]

which writes ``<workdir>/samples.jsonl`` (one object per problem: prompt, reference answer, the
N completions, their correctness, weak-verifier verdicts and log-probs), ``<workdir>/curves.json``
(`analyze`: pass@k with bootstrap bands, power-law fit, majority / log-prob vote / verifier
accuracy against k, the imperfect-verifier limit and K*), ``<workdir>/tts.md`` and its PNG
plots. ``--checkpoint`` is a `bitscale.train` workdir (or its checkpoints directory) trained
with ``--config``; ``--policy`` samples under another precision policy.

References:
  Brown et al., "Large Language Monkeys: Scaling Inference Compute with Repeated Sampling",
    arXiv:2407.21787 (coverage and its exponentiated power law);
  Stroebl et al., "Inference Scaling fLaws", arXiv:2411.17501 (imperfect verifiers, K*);
  Wang et al., arXiv:2203.11171 (majority vote / self-consistency).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from bitscale import data as bdata
from bitscale import sampling, tts
from bitscale.studies.report import markdown_table, plot_curves
from bitscale.train import restore_model

__all__ = ["TTSSettings", "analyze", "collect", "run", "run_checkpoint", "section"]


@dataclasses.dataclass(frozen=True)
class TTSSettings:
    """What `collect` and `analyze` do.

    Attributes:
      n: samples per problem (k runs over powers of two up to n).
      strategy: a `bitscale.sampling` strategy string (``temperature:1.0``, ``top_p:0.95``).
      completeness, soundness: the simulated imperfect verifier.
      weak_modulus: the weak verifier checks the answer modulo this (10: the last digit).
      fp_cost: utility cost of an accepted wrong answer (a correct one earns 1) for K*.
      prompt_batch: prompts per sampler call; chunk_size: samples decoded at once (None: n).
      seed: sampling, bootstrap and verifier randomness.
    """

    n: int = 64
    strategy: str = "temperature:1.0"
    completeness: float = 0.9
    soundness: float = 0.9
    weak_modulus: int = 10
    fp_cost: float = 1.0
    prompt_batch: int = 16
    chunk_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"TTSSettings: n must be an int >= 1, got {self.n!r}")
        if self.prompt_batch < 1:
            raise ValueError(f"TTSSettings: prompt_batch must be >= 1, got {self.prompt_batch}")
        if self.fp_cost < 0:
            raise ValueError(f"TTSSettings: fp_cost must be >= 0, got {self.fp_cost}")
        sampling.parse_strategy(self.strategy)  # unknown strategies fail here
        tts.ImperfectVerifier(self.completeness, self.soundness)
        tts.ResidueVerifier(self.weak_modulus)

    @property
    def ks(self) -> tuple[int, ...]:
        ks = [1 << i for i in range(self.n.bit_length()) if 1 << i <= self.n]
        return tuple(ks if ks[-1] == self.n else ks + [self.n])


def collect(model, examples: Sequence[bdata.Example], task: Any, tokenizer: bdata.Tokenizer, *,
            settings: TTSSettings, max_prompt_len: int, max_new_tokens: int) -> dict:
    """N samples of every problem, decoded and scored.

    Returns a dict of host arrays: ``completions`` ([P][N] strings), ``correct`` bool [P, N]
    (``task.check``), ``weak`` bool [P, N] (`tts.ResidueVerifier`), ``answers`` int32 [P, N]
    (`tts.answer_codes`, -1: no answer), ``seq_logp`` float32 [P, N] (sum of the sampled tokens'
    log-probs), ``finished`` bool [P, N] (False: truncated at ``max_new_tokens``).
    """
    examples = list(examples)
    if not examples:
        raise ValueError("collect: empty list of examples")
    key = jax.random.key(settings.seed)
    b = min(settings.prompt_batch, len(examples))
    completions, logp, finished = [], [], []
    for pb in bdata.prompt_batches(examples, tokenizer, b, max_prompt_len):
        out = sampling.sample_n(model, pb.prompt, pb.prompt_mask, settings.n,
                                strategy=settings.strategy, key=jax.random.fold_in(key, pb.start),
                                max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                                pad_id=tokenizer.pad_id, chunk_size=settings.chunk_size)
        toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
        lp, fin = np.asarray(out.log_probs), np.asarray(out.finished)
        for i in range(pb.real):
            completions.append([tokenizer.decode(toks[i, j, :lens[i, j]].tolist(),
                                                 errors="replace") for j in range(settings.n)])
        logp.append(lp.sum(-1)[:pb.real])
        finished.append(fin[:pb.real])
    correct = tts.task_correctness(task, completions, examples)
    weak = tts.ResidueVerifier(settings.weak_modulus)
    weak_ok = np.array([[weak.check(c, ex) for c in row]
                        for row, ex in zip(completions, examples)], bool)
    answers = np.asarray(tts.answer_codes(tts.final_answers(completions)), np.int32)
    return {"completions": completions, "correct": np.asarray(correct, bool), "weak": weak_ok,
            "answers": answers, "seq_logp": np.concatenate(logp).astype(np.float32),
            "finished": np.concatenate(finished)}


def analyze(samples: dict, settings: TTSSettings) -> dict:
    """Curves over k (`TTSSettings.ks`) from `collect`'s grids.

    Returns a dict with ``ks``; ``coverage`` (pass@k, unbiased) with bootstrap ``coverage_lo`` /
    ``coverage_hi`` (95%, over problems) and the power-law ``fit`` (a, b; None when the curve is
    saturated; ``max_error``: its largest |fit - pass@k| over the points in (0, 1)); selection
    accuracy with k samples (averaged over 16 random k-subsets):
    ``majority``, ``logprob_vote``, ``verifier`` (first sample the imperfect verifier accepts)
    and ``weak_verifier`` (first sample passing the residue check); ``limit`` (the k -> inf
    accuracy of resampling with the imperfect verifier, averaged over problems, closed form);
    ``k_star`` (the K* maximising expected utility with cost ``fp_cost`` per false positive for
    the mixture of per-problem correctness rates) and ``pass1`` (the mean rate).
    """
    correct = np.asarray(samples["correct"], bool)
    p, n = correct.shape
    if n != settings.n:
        raise ValueError(f"analyze: samples have N={n}, settings.n={settings.n}")
    ks = settings.ks
    key = jax.random.key(settings.seed + 1)
    k_band, k_vote, k_ver, k_curve = jax.random.split(key, 4)
    cov = np.asarray(tts.coverage_curve(correct, ks), np.float64)
    bands = tts.bootstrap_coverage(correct, ks, k_band)
    try:
        fit = tts.fit_power_law(ks, cov, saturated="drop")
        fit = {"a": float(fit.a), "b": float(fit.b)}
        pts = (cov > 0) & (cov < 1)  # the points a power law in (0, 1) can fit
        fit["max_error"] = float(np.max(np.abs(
            np.exp(fit["a"] * np.asarray(ks, np.float64)[pts] ** fit["b"]) - cov[pts])))
    except ValueError:  # fewer than two unsaturated points
        fit = None
    answers = np.asarray(samples["answers"])
    valid = answers >= 0
    verifier = tts.ImperfectVerifier(settings.completeness, settings.soundness)
    accepted = np.asarray(verifier.accept(correct, k_ver))
    weak = np.asarray(samples["weak"], bool)
    curve = lambda sel, arrays: np.asarray(  # noqa: E731
        tts.accuracy_curve(sel, arrays, ks, k_curve), np.float64)
    rates = correct.mean(axis=1)
    limit = np.asarray(tts.accuracy_limit(rates, settings.completeness, settings.soundness))
    opt = tts.optimal_num_samples(rates, None, settings.completeness, settings.soundness,
                                  reward=1.0, fp_cost=settings.fp_cost, k_max=max(4 * n, 64))
    return {
        "ks": list(ks), "coverage": cov.tolist(),
        "coverage_lo": np.asarray(bands.lo).tolist(), "coverage_hi": np.asarray(bands.hi).tolist(),
        "fit": fit,
        "majority": curve(tts.majority_vote, (answers, correct, valid)).tolist(),
        "logprob_vote": curve(tts.logprob_vote,
                              (answers, correct, samples["seq_logp"], valid)).tolist(),
        "verifier": curve(tts.select_first_accepted, (accepted, correct)).tolist(),
        "weak_verifier": curve(tts.select_first_accepted, (weak, correct)).tolist(),
        "limit": float(limit.mean()), "k_star": int(opt.k_star), "pass1": float(rates.mean()),
        "problems": p, "n": n, "truncated": float(1.0 - np.mean(samples["finished"])),
    }


TABLE_HEADERS = ("recipe", "pass@1", "pass@{n}", "majority@{n}", "log-prob vote@{n}",
                 "verifier@{n}", "weak verifier@{n}", "verifier limit", "K*", "power law a, b")


def run(models: Mapping[str, Any], examples: Sequence[bdata.Example], task: Any,
        tokenizer: bdata.Tokenizer, out: str | pathlib.Path, *, settings: TTSSettings,
        max_prompt_len: int, max_new_tokens: int, verbose: bool = True) -> dict[str, Any]:
    """`collect` and `analyze` for every model of ``models`` (name -> `Llama`) on the same
    problems; writes ``<out>/tts.json``.

    Returns:
      dict with ``curves`` (name -> `analyze`'s dict), ``settings``, ``problems`` and ``out``.
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        got = collect(model, examples, task, tokenizer, settings=settings,
                      max_prompt_len=max_prompt_len, max_new_tokens=max_new_tokens)
        curves[name] = c = analyze(got, settings)
        if verbose:
            print(f"[tts] {name}: pass@1 {c['pass1']:.3f}  pass@{settings.n} "
                  f"{c['coverage'][-1]:.3f}  majority@{settings.n} {c['majority'][-1]:.3f}  "
                  f"K* {c['k_star']}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    (out / "tts.json").write_text(json.dumps(curves, indent=1))
    return {"curves": curves, "settings": settings, "problems": len(list(examples)), "out": out}


def section(results: dict[str, Any], heading: str = "##") -> str:
    """The report section of `run`'s results: a table and two PNGs (``pass_at_k.png``,
    ``selection.png``, written to the run's ``out``)."""
    per_recipe, settings = results["curves"], results["settings"]
    out, problems = pathlib.Path(results["out"]), results["problems"]
    n = settings.n
    headers = [h.format(n=n) for h in TABLE_HEADERS]
    rows = []
    for name, r in per_recipe.items():
        fit = "saturated" if r["fit"] is None else f"{r['fit']['a']:.3f}, {r['fit']['b']:.3f}"
        rows.append([name, f"{r['pass1']:.3f}", f"{r['coverage'][-1]:.3f}",
                     f"{r['majority'][-1]:.3f}", f"{r['logprob_vote'][-1]:.3f}",
                     f"{r['verifier'][-1]:.3f}", f"{r['weak_verifier'][-1]:.3f}",
                     f"{r['limit']:.3f}", str(r["k_star"]), fit])
    plot_curves({name: (r["ks"], r["coverage"]) for name, r in per_recipe.items()},
                str(out / "pass_at_k.png"), title=f"pass@k ({problems} held-out problems)",
                xlabel="k (samples per problem)", ylabel="pass@k", logx=True,
                bands={name: (r["coverage_lo"], r["coverage_hi"])
                       for name, r in per_recipe.items()})
    sel_curves, styles = {}, {}
    for name, r in per_recipe.items():
        sel_curves[f"{name} majority"] = (r["ks"], r["majority"])
        sel_curves[f"{name} verifier"] = (r["ks"], r["verifier"])
        styles[f"{name} verifier"] = "--"
    plot_curves(sel_curves, str(out / "selection.png"), xlabel="k (samples per problem)",
                ylabel="accuracy of the selected sample", logx=True, styles=styles,
                title=f"majority vote (solid) and imperfect verifier (dashed, "
                      f"c={settings.completeness}, s={settings.soundness})")
    lines = [
        f"{heading} Test-time scaling: best-of-N by precision", "",
        (f"{n} samples per problem (`{settings.strategy}`, best-of-N: one prefill per "
         f"prompt, the KV cache broadcast to the {n} samples) on {problems} held-out problems, "
         "from each recipe's trained model."), "",
        markdown_table(headers, rows),
        "- **pass@k**: unbiased estimator over the N samples (Chen et al. 2021), averaged over "
        "problems; the plot shades a 95% bootstrap band over problems. **power law**: "
        "`pass@k = exp(a k^b)` fitted to the unsaturated points (Large Language Monkeys).",
        "- **majority / log-prob vote**: the most frequent final answer among k samples (ties: "
        "the earliest), or weighted by the sequence probability; averaged over 16 random "
        "k-subsets.",
        (f"- **verifier**: the first of k samples accepted by a simulated imperfect verifier "
         f"(completeness {settings.completeness}, soundness {settings.soundness}); **weak "
         f"verifier**: the first whose answer matches the reference modulo "
         f"{settings.weak_modulus} (a partial check: every correct answer passes, and so do "
         "wrong ones with the right last digit)."),
        ("- **verifier limit**: the accuracy of resampling with that verifier as k -> inf, "
         "`c r / (c r + (1 - s)(1 - r))` per problem with r its sample accuracy, averaged; "
         f"**K\\***: the number of samples maximising expected utility (+1 per correct answer, "
         f"-{settings.fp_cost:g} per accepted wrong one) for this mixture of problems "
         "(Inference Scaling fLaws)."),
        *reading(per_recipe, n),
        "", "![pass@k](pass_at_k.png)", "", "![selection](selection.png)", ""]
    return "\n".join(lines)


def reading(per_recipe: Mapping[str, dict], n: int) -> list[str]:
    """Bullet lines stating, per recipe, what the curves show (computed from them): how far
    pass@k rises, how well the power law fits, and how close the imperfect verifier gets to its
    limit; a saturated or flat curve is said to be one."""
    lines = ["- **Reading** (computed from the table):"]
    for name, r in per_recipe.items():
        p1, pn = r["coverage"][0], r["coverage"][-1]
        if pn >= 1.0:
            rise = f"pass@k saturates (pass@{n} = 1.000): no coverage left to gain"
        elif pn <= p1:
            rise = f"pass@k does not rise ({p1:.3f} at k=1 and {pn:.3f} at k={n})"
        else:
            ratio = f" ({pn / p1:.1f}x)" if p1 > 0 else ""
            rise = f"pass@k rises from {p1:.3f} (k=1) to {pn:.3f} (k={n}){ratio}"
        fit = r.get("fit")
        fit_s = ("no power-law fit (fewer than two unsaturated points)" if fit is None else
                 f"the power law fits within {fit.get('max_error', float('nan')):.3f}")
        ver = (f"verifier@{n} {r['verifier'][-1]:.3f} vs its k -> inf limit "
               f"{r['limit']:.3f}")
        lines.append(f"  - `{name}`: {rise}; {fit_s}; {ver}.")
    return lines


def run_checkpoint(cfg: Any, checkpoint: str, workdir: str, settings: TTSSettings, *,
                   problems: int, split: str = "test", policy: str | None = None,
                   step: int | None = None, max_new_tokens: int | None = None) -> dict:
    """Samples the held-out ``split`` with the model of ``checkpoint`` (a `bitscale.train` run of
    ``cfg``; under ``policy`` if given), scores and writes everything into ``workdir``; returns
    `analyze`'s dict plus ``checkpoint``, ``step``, ``policy`` and ``strategy``."""
    if problems < 1:
        raise ValueError(f"problems must be >= 1, got {problems}")
    model, step = restore_model(checkpoint, cfg.model, policy, step=step)
    task = bdata.make_task(cfg.data)
    tok = bdata.CharTokenizer()
    examples = task.generate(split, problems, int(cfg.seed))
    max_new = int(max_new_tokens or int(cfg.data.max_len) - 2)
    logging.info("sampling %d x %d from %s (step %d) under %s", problems, settings.n, checkpoint,
                 step, model.policy.name)
    samples = collect(model, examples, task, tok, settings=settings,
                      max_prompt_len=int(cfg.data.max_prompt_len), max_new_tokens=max_new)
    curves = analyze(samples, settings)
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w") as f:
        for i, ex in enumerate(examples):
            f.write(json.dumps({
                "prompt": ex.prompt, "answer": ex.answer,
                "completions": samples["completions"][i],
                "correct": samples["correct"][i].tolist(), "weak": samples["weak"][i].tolist(),
                "seq_logp": samples["seq_logp"][i].tolist(),
                "finished": samples["finished"][i].tolist()}) + "\n")
    curves = {**curves, "checkpoint": os.path.abspath(checkpoint), "step": step,
              "policy": model.policy.name, "strategy": settings.strategy}
    (out / "curves.json").write_text(json.dumps(curves, indent=1))
    text = section({"curves": {model.policy.name: curves}, "settings": settings,
                    "problems": problems, "out": out}, heading="#")
    (out / "tts.md").write_text(text)
    return curves


def define_flags() -> dict[str, flags.FlagHolder]:
    f = flags
    holders = {
        "config": config_flags.DEFINE_config_file("config", None, "The training get_config() "
                                                  "file.", lock_config=True),
        "workdir": f.DEFINE_string("workdir", None, "Output directory."),
        "checkpoint": f.DEFINE_string("checkpoint", None, "bitscale.train workdir (or its "
                                      "checkpoints dir) to sample from."),
        "step": f.DEFINE_integer("step", None, "Checkpoint step (default: the latest)."),
        "policy": f.DEFINE_string("policy", None, "Precision policy to sample under "
                                  "(default: the trained one)."),
        "n": f.DEFINE_integer("n", 64, "Samples per problem."),
        "problems": f.DEFINE_integer("problems", 64, "Held-out problems."),
        "split": f.DEFINE_enum("split", "test", list(bdata.SPLITS), "Problem split."),
        "strategy": f.DEFINE_string("strategy", "temperature:1.0", "Sampling strategy."),
        "max_new_tokens": f.DEFINE_integer("max_new_tokens", None, "Tokens per sample "
                                           "(default: data.max_len - 2)."),
        "completeness": f.DEFINE_float("completeness", 0.9, "Imperfect verifier completeness."),
        "soundness": f.DEFINE_float("soundness", 0.9, "Imperfect verifier soundness."),
        "fp_cost": f.DEFINE_float("fp_cost", 1.0, "Cost of an accepted wrong answer (for K*)."),
        "chunk_size": f.DEFINE_integer("chunk_size", None, "Samples decoded at once "
                                       "(default: all N)."),
        "seed": f.DEFINE_integer("seed", 0, "Sampling and verifier seed."),
    }
    flags.mark_flags_as_required(["config", "workdir", "checkpoint"])
    return holders


def main(args: dict[str, Any]) -> None:
    settings = TTSSettings(n=args["n"], strategy=args["strategy"],
                           completeness=args["completeness"], soundness=args["soundness"],
                           fp_cost=args["fp_cost"], chunk_size=args["chunk_size"],
                           seed=args["seed"])
    curves = run_checkpoint(args["config"], args["checkpoint"], args["workdir"], settings,
                            problems=args["problems"], split=args["split"],
                            policy=args["policy"], step=args["step"],
                            max_new_tokens=args["max_new_tokens"])
    logging.info("pass@1 %.3f, pass@%d %.3f, majority@%d %.3f, K* %d -> %s", curves["pass1"],
                 settings.n, curves["coverage"][-1], settings.n, curves["majority"][-1],
                 curves["k_star"], args["workdir"])


if __name__ == "__main__":
    from bitscale._cli import launch_study

    launch_study(define_flags, main)
