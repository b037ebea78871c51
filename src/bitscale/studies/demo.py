"""`make demo`: the built-in study, end to end on a CPU in under 15 minutes.

Writes ``<out>/report.md`` (default ``runs/demo``) with one section per study, each using the
models trained in the first:

1. precision vs accuracy (`bitscale.studies.precision`): the same ~2M-parameter Llama trained on
   2-digit addition and multiplication with worked steps (``configs/demo.py``: a task it does
   not solve in its budget) under fp32, bf16, fp8, mxfp4 and int4@g128, evaluated by greedy
   accuracy, with a loss-curve plot;
2. test-time scaling (`bitscale.studies.tts`): N samples per held-out problem from every
   recipe's model (shared-prefill best-of-N), pass@k with power-law coverage fits, majority
   vote and imperfect-verifier accuracy against k, K*;
3. reproducibility (`bitscale.studies.repro`): the fp32 model's sampled outputs (the same key
   per problem everywhere) under other precisions (bf16, fp16, LayerCast, fp8), batch sizes
   and accumulation orders (a GPU-like batch-dependent split-K), against the fp32 batch-1
   reference, with the batch-invariant mode as control, plus logit-level distances;
4. RL in low precision (`bitscale.studies.rl`): GRPO vs MC-GRPO at G = 2 and 8 under bf16 and
   fp8, from the fp32 run's final model (``RL_INIT_STEP`` None; the task is far from solved,
   so there is reward left to gain);
5. quantization error by format (`bitscale.studies.formats`, seconds).

    python -m bitscale.studies.demo [--out=runs/demo] [--steps=N] [--eval_problems=N]
        [--recipes=fp32,bf16,...] [--tts_problems=N] [--tts_samples=N] [--repro_problems=N]
        [--quick]

``--quick`` runs the same code path on a tiny budget (a few steps, a few problems): it is what
the test suite runs. Progress goes to stdout (one line per recipe and stage) and stderr (the
training progress bar).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

from absl import flags

from bitscale.studies import formats, precision, repro, rl, tts
from bitscale.train import restore_model

__all__ = ["DemoBudget", "QUICK", "run", "section"]

# The RL runs start from this checkpoint of the baseline run (configs/demo.py checkpoints every
# 100 steps); None: its final model. On the addition-only task the final model was nearly
# perfect, leaving no reward to gain; the present task leaves plenty at the end of training.
RL_INIT_STEP: int | None = None
# (policies, batch sizes, orders, accumulation dtypes) blocks of the reproducibility grid.
# ``batch_split_k`` emulates GPU GEMM heuristics whose split-K count follows the batch (8
# splits at batch 1, 1 at 16), the cause of batch-size nondeterminism the paper measures on
# GPUs; what the CPU's own kernels do with the batch shows in the ``native`` cells.
REPRO_GRID = (
    (("fp32", "bf16", "fp16", "layercast", "fp8", "fp32_batch_invariant"), (1, 16), ("native",),
     ("float32",)),
    (("fp32", "bf16"), (1, 16), ("batch_split_k",), ("float32",)),
)
QUICK_REPRO_GRID = ((("bf16", "fp32_batch_invariant"), (4,), ("native",), ("float32",)),)
# Sampled decoding, the same key per problem in every cell: a numerical difference changes an
# output when it moves a sampled token across its boundary, which greedy decoding of a small,
# confident model almost never does (the logit-level distances are reported either way).
REPRO_DECODING = "temperature:1.0"
REPRO_TITLE = "Reproducibility: precision, batch size and reduction order"


@dataclasses.dataclass(frozen=True)
class DemoBudget:
    """How much of each study the demo runs (the defaults are `make demo`'s).

    Attributes:
      steps: train.steps of every recipe (None: configs/demo.py's).
      eval_problems, tts_problems, tts_samples, repro_problems: held-out problems of the
        precision, test-time-scaling and reproducibility sections, and samples per problem.
      recipes: the precision recipes (`bitscale.studies.precision.RECIPES`).
      quick: the tiny budget of the test suite (small grids, one RL run from the final model).
    """

    steps: int | None = None
    eval_problems: int = 200
    tts_problems: int = 32
    tts_samples: int = 64
    repro_problems: int = 32
    recipes: tuple[str, ...] = tuple(precision.RECIPES)
    quick: bool = False

    def __post_init__(self):
        object.__setattr__(self, "recipes", tuple(self.recipes))
        unknown = [r for r in self.recipes if r not in precision.RECIPES]
        if unknown or not self.recipes:
            raise ValueError(f"DemoBudget: unknown recipes {unknown or list(self.recipes)}; "
                             f"valid: {list(precision.RECIPES)}")
        for name in ("eval_problems", "tts_problems", "tts_samples", "repro_problems"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DemoBudget: {name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and int(self.steps) < 1:
            raise ValueError(f"DemoBudget: steps must be >= 1 or None, got {self.steps}")

    def quickened(self) -> DemoBudget:
        """This budget capped at `QUICK`'s sizes, with ``quick`` set."""
        q = QUICK
        return dataclasses.replace(
            self, quick=True, steps=self.steps or q.steps,
            eval_problems=min(self.eval_problems, q.eval_problems),
            tts_problems=min(self.tts_problems, q.tts_problems),
            tts_samples=min(self.tts_samples, q.tts_samples),
            repro_problems=min(self.repro_problems, q.repro_problems))


QUICK = DemoBudget(steps=4, eval_problems=8, tts_problems=4, tts_samples=4, repro_problems=4,
                   quick=True)
QUICK_FORMATS = ("fp8_e4m3", "mxfp4")  # the quick format study: one scaled, one block format
RL_BUDGET = {"steps": 6, "prompts_per_step": 8, "eval_examples": 32}
RL_QUICK = dict(rl.QUICK, groups=(2,), policies=("fp8",))


def _rl_start(prec: dict[str, Any], quick: bool):
    """The RL runs' starting model: the baseline recipe's step-``RL_INIT_STEP`` checkpoint
    (its final model when that is None, the run is shorter or ``quick``)."""
    base = precision.baseline(prec)
    cfg = base["cfg"]
    model, step = base["model"], int(cfg.train.steps)
    if not quick and RL_INIT_STEP is not None and step > RL_INIT_STEP:
        model, step = restore_model(str(prec["out"] / base["recipe"]), cfg.model,
                                    step=RL_INIT_STEP)
    print(f"[rl] starting from the {base['recipe']} model at step {step}", flush=True)
    return model, cfg


def run(out: str | pathlib.Path, budget: DemoBudget = DemoBudget()) -> dict[str, Any]:
    """Runs every study into ``out``; returns each study's results (keys ``precision``,
    ``tts``, ``repro``, ``rl``, ``formats``) and ``wall_s``."""
    t0 = time.perf_counter()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prec = precision.run(out, budget.recipes, budget.steps, budget.eval_problems)
    cfg, task, tok = prec["cfg"], prec["task"], prec["tokenizer"]
    max_prompt, max_new = int(cfg.data.max_prompt_len), int(cfg.data.max_len) - 2

    test = prec["test"][:budget.tts_problems]
    tts_results = tts.run({r["recipe"]: r["model"] for r in prec["recipes"]}, test, task, tok,
                          out, settings=tts.TTSSettings(n=budget.tts_samples, seed=int(cfg.seed)),
                          max_prompt_len=max_prompt, max_new_tokens=max_new)

    blocks = QUICK_REPRO_GRID if budget.quick else REPRO_GRID
    grid = [c for block in blocks for c in repro.make_grid(*block)]
    base = precision.baseline(prec)
    repro_results = repro.run(
        base["model"], task, tok, prec["test"][:budget.repro_problems], grid,
        max_prompt_len=max_prompt, max_new_tokens=max_new,
        progress=lambda msg: print(f"[repro] {msg}", flush=True), strategy=REPRO_DECODING,
        seed=int(cfg.seed))
    repro_results["model_recipe"] = base["recipe"]

    model, rl_cfg = _rl_start(prec, budget.quick)
    rl_results = rl.run(model, rl_cfg, task, tok, out,
                        **(RL_QUICK if budget.quick else RL_BUDGET))
    print("format study ...", flush=True)
    fmt = formats.run(specs=QUICK_FORMATS) if budget.quick else formats.run()
    return {"precision": prec, "tts": tts_results, "repro": repro_results, "rl": rl_results,
            "formats": fmt, "out": out, "wall_s": time.perf_counter() - t0}


def _repro_intro(result: dict[str, Any]) -> str:
    return (f"Decoding ({result['decoding']}, the same key per problem in every cell) of the "
            f"`{result['model_recipe']}` model of the precision study on "
            f"{result['n_problems']} held-out problems, re-run under each cell's "
            "precision policy, batch size and (emulated) matmul accumulation order, and "
            "compared token by token with the fp32 batch-1 run (Yuan et al., \"Give Me FP32 "
            "or Give Me Death?\", arXiv:2506.09501). `fp32_batch_invariant` runs every row "
            "through the same batch-1 program, so its outputs cannot depend on the batch; "
            "`batch_split_k` cells emulate a GPU GEMM whose split-K count follows the batch "
            "size; `native` cells show what this machine's own kernels do with it.")


# Studies too long for the demo's budget: (what, launch recipe, where its measured output is).
LONGER_STUDIES = (
    ("Training stability: seed x learning-rate grid for fp32 / bf16 / fp8 / mxfp4 and "
     "mantissa-only vs exponent-only reductions of one ExMy format (Lee et al., \"To FP8 and "
     "Back Again\")", "bash experiments/stability.sh", "docs/stability.md"),
    ("Precision scaling laws (Kumar et al.; Sun et al.) fitted to a sweep of small runs, "
     "with held-out prediction error", "bash experiments/laws_sweep.sh", "docs/laws.md"),
    ("DCO vs cross-entropy: pass@N over training steps with seed bands (Chen et al., "
     "\"Rethinking Fine-Tuning when Scaling Test-Time Compute\")", "bash experiments/dco.sh",
     "docs/dco.md"),
    ("4-bit training recipes (QuEST, Quartet, NVIDIA NVFP4, Quartet II) vs BF16",
     "python -m bitscale.studies.recipes --steps=300 --seeds=0,1", "docs/benchmarks.md"),
)


def longer_studies_section(heading: str = "##") -> str:
    """Where the studies that do not fit the demo's budget are launched and recorded (no
    numbers: none of them ran in this run)."""
    lines = [f"{heading} Beyond the demo's budget", "",
             "These studies need more than the demo's 15 CPU minutes. Each is an `experiments/` "
             "recipe; its measured output is recorded, with the command, in the file named. "
             "None of them ran as part of this report.", ""]
    lines += [f"- {what}: `{cmd}` -> `{doc}`" for what, cmd, doc in LONGER_STUDIES]
    return "\n".join(lines + [""])


def section(results: dict[str, Any]) -> str:
    """The whole report: a title and every study's section."""
    out = pathlib.Path(results["out"])
    repro.write_report(results["repro"], str(out), title=REPRO_TITLE,
                       intro=_repro_intro(results["repro"]), heading="##")
    sections = [
        precision.section(results["precision"]),
        tts.section(results["tts"]),
        repro.section(results["repro"], title=REPRO_TITLE, intro=_repro_intro(results["repro"]),
                      heading="##"),
        rl.section(results["rl"]),
        formats.section(results["formats"]),
        longer_studies_section(),
    ]
    head = ["# bitscale demo report", "",
            "Generated by `make demo` (`python -m bitscale.studies.demo`); every number below "
            f"was measured in this run ({results['wall_s']:.0f} s in all).", ""]
    return "\n".join(head) + "\n" + "\n".join(sections)


def define_flags() -> dict[str, flags.FlagHolder]:
    d = DemoBudget()
    return {
        "out": flags.DEFINE_string("out", "runs/demo", "Output directory."),
        "steps": flags.DEFINE_integer("steps", d.steps, "Override train.steps of every recipe "
                                      "(default: configs/demo.py's)."),
        "eval_problems": flags.DEFINE_integer("eval_problems", d.eval_problems,
                                              "Held-out problems of the precision section."),
        "recipes": flags.DEFINE_list("recipes", list(d.recipes), "Precision recipes."),
        "tts_problems": flags.DEFINE_integer("tts_problems", d.tts_problems,
                                             "Held-out problems of the test-time-scaling "
                                             "section."),
        "tts_samples": flags.DEFINE_integer("tts_samples", d.tts_samples,
                                            "Samples per problem (N)."),
        "repro_problems": flags.DEFINE_integer("repro_problems", d.repro_problems,
                                               "Held-out problems of the reproducibility "
                                               "section."),
        "quick": flags.DEFINE_bool("quick", False, "Tiny budget through the same code path."),
    }


def main(args: dict[str, Any]) -> str:
    """Runs the demo with the command line's budget; writes ``<out>/report.md``."""
    t0 = time.perf_counter()
    budget = DemoBudget(steps=args["steps"], eval_problems=args["eval_problems"],
                        tts_problems=args["tts_problems"], tts_samples=args["tts_samples"],
                        repro_problems=args["repro_problems"], recipes=tuple(args["recipes"]))
    if args["quick"]:
        budget = budget.quickened()
    results = run(args["out"], budget)
    report = section(results)
    out = pathlib.Path(args["out"])
    (out / "report.md").write_text(report)
    print(f"wrote {out / 'report.md'} in {time.perf_counter() - t0:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    from bitscale._cli import launch_study

    launch_study(define_flags, main)
