"""The reproducibility study: greedy evaluation of one model across a grid of runtime settings.

A `Cell` is one runtime configuration: a precision policy (``fp32``, ``bf16``, ``fp16``,
``layercast``, ``fp8``, ``fp32_batch_invariant``, ...), an evaluation batch size and a
reduction order for every matmul (``native``: the backend's own GEMM; or an emulated
``sequential`` / ``pairwise`` / ``split_k:<s>`` with an accumulation dtype, `bitscale.repro`).
`run` re-casts the model's parameters to each cell's policy, decodes every problem
greedily at the cell's batch size, scores it with the task checker and compares its outputs
token by token with the reference cell's (default: ``fp32``, native order, the smallest batch
size); `section` renders the result as markdown and `write_report` writes ``repro.json``,
``repro.md`` and ``repro_divergence.png``.

It reports, per cell: accuracy, output lengths, the fraction of problems whose output differs
from the reference, the distribution of first-divergent token indices and the logit-level
distance to the reference (KL, max |Δ log p|, argmax flips; teacher forced); per policy, per
configuration (policy x order across batch sizes) and over the whole grid: accuracy mean and
standard deviation (Std@Acc), output-length spread and divergence within the group.

The command line runs the study a ``configs/repro.py``-style config describes
(`run_from_config`):

    python -m bitscale.studies.repro --config=configs/repro.py --workdir=/tmp/repro \\
        [--checkpoint=<bitscale.train workdir>]

The model comes from ``--checkpoint`` (a `bitscale.train` run directory, or its
``checkpoints/``, written with the config's ``run``), else is trained for ``run.train.steps``
steps into ``<workdir>/train`` when ``train_model`` is set (rerunning reuses it), else is
randomly initialized (a smoke run: greedy outputs of an untrained model are noise, but the
numerics of the comparison are real). Override fields with ``--config.grid.batch_sizes='(1, 8)'``;
the config is locked, so a misspelt key fails.

References:
  Yuan et al., "Give Me FP32 or Give Me Death? Challenges and Solutions for Reproducible
    Reasoning", arXiv:2506.09501 (runtime configurations: GPU count, batch size, precision;
    Std@Acc, Avg_Std@Output_Length, Div_Index).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from flax import nnx
from ml_collections import config_flags

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale import repro, sampling
from bitscale.data import Example, Tokenizer, prompt_batches
from bitscale.nn import resolve_policy
from bitscale.studies.report import markdown_table, plot_curves
from bitscale.train import restore_model, train
from bitscale.train.evaluate import greedy_decode

__all__ = ["BATCH_SPLIT_K", "NATIVE", "Cell", "findings", "greedy_outputs", "load_model",
           "make_grid", "run_from_config", "run", "section", "teacher_forced_log_probs",
           "write_report"]

NATIVE = "native"
BATCH_SPLIT_K = "batch_split_k"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One runtime configuration of the study.

    Attributes:
      policy: a policy name (`bitscale.nn.resolve_policy`, repro names included).
      batch_size: evaluation batch size (prompts are always padded to the same length).
      order: ``native`` (one `lax.dot_general`), an emulated order for every matmul
        (``sequential``, ``pairwise``, ``split_k:<s>``), or ``batch_split_k``: split-K whose
        split count follows the rows of each product, as GPU GEMM heuristics pick it
        (`bitscale.repro.BatchDependentSplitK`: 8 splits at batch 1, 1 at batch >= 16 in
        decoding), so the numerics change with the batch size.
      acc_dtype: accumulation dtype of the emulated order (``native`` needs float32).
    """

    policy: str
    batch_size: int
    order: str = NATIVE
    acc_dtype: str = "float32"

    def __post_init__(self):
        resolve_policy(self.policy)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        object.__setattr__(self, "acc_dtype", repro.check_acc_dtype(self.acc_dtype))
        if self.order == BATCH_SPLIT_K:
            pass
        elif self.order == NATIVE:
            if self.acc_dtype != "float32":
                raise ValueError("the native order accumulates as the backend does; an "
                                 f"accumulation dtype ({self.acc_dtype}) needs an emulated order")
        else:
            try:
                order = repro.parse_order(self.order)
            except ValueError as e:
                raise ValueError(f"{e} (or {NATIVE!r} / {BATCH_SPLIT_K!r})") from None
            object.__setattr__(self, "order", str(order))

    @property
    def config(self) -> str:
        """Policy, order and accumulation dtype: the cell without its batch size."""
        acc = "" if self.acc_dtype == "float32" else f"@{self.acc_dtype}"
        return f"{self.policy}/{self.order}{acc}"

    @property
    def name(self) -> str:
        return f"{self.config}/b{self.batch_size}"

    def make_policy(self) -> bnn.Policy:
        policy = resolve_policy(self.policy)
        if self.order == NATIVE:
            return policy
        if self.order == BATCH_SPLIT_K:
            return repro.with_reduction(policy, repro.BatchDependentSplitK(
                acc_dtype=self.acc_dtype), name=f"{policy.name}+{self.order}")
        return repro.with_reduction(policy, repro.Reduction(self.order, self.acc_dtype),
                              name=f"{policy.name}+{self.order}")


def make_grid(policies: Iterable[str], batch_sizes: Iterable[int],
              orders: Iterable[str] = (NATIVE,),
              acc_dtypes: Iterable[str] = ("float32",)) -> list[Cell]:
    """Every (policy, order, accumulation dtype, batch size) combination, as `Cell` objects;
    ``native`` is combined with float32 only."""
    cells = []
    for p, o, a, b in itertools.product(policies, orders, acc_dtypes, batch_sizes):
        if o == NATIVE and repro.check_acc_dtype(a) != "float32":
            continue
        cells.append(Cell(str(p), int(b), str(o), str(a)))
    return cells


def greedy_outputs(model, examples: Sequence[Example], tokenizer: Tokenizer, *,
                   batch_size: int, max_prompt_len: int, max_new_tokens: int,
                   strategy: "str | sampling.Strategy | None" = None,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [N, max_new_tokens], lengths [N])`` of greedy decoding in fixed-shape batches
    ``[batch_size, max_prompt_len]`` (as `bitscale.train.evaluate.accuracy` batches: the last
    batch is filled with copies of its first example, whose outputs are dropped).

    With a sampling ``strategy`` (`bitscale.sampling.parse_strategy`), problem ``i`` is sampled
    with the key ``fold_in(key(seed), i)`` whatever its batch and row, so two runs differ only
    through their numerics.
    """
    strategy = None if strategy in (None, "greedy") else sampling.parse_strategy(strategy)
    base = jax.random.key(int(seed))
    toks, lens = [], []
    for pb in prompt_batches(examples, tokenizer, batch_size, max_prompt_len):
        if strategy is None:
            t, n = greedy_decode(model, pb.prompt, pb.prompt_mask, max_new_tokens,
                                 tokenizer.eos_id, tokenizer.pad_id)
        else:
            idx = np.minimum(np.arange(pb.start, pb.start + batch_size), pb.start + pb.real - 1)
            keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)
            out = sampling.sample(model, pb.prompt, pb.prompt_mask, strategy=strategy, key=keys,
                                  max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                                  pad_id=tokenizer.pad_id)
            t, n = out.tokens, out.lengths
        toks.append(np.asarray(t)[:pb.real])
        lens.append(np.asarray(n)[:pb.real])
    return np.concatenate(toks), np.concatenate(lens)


@nnx.jit
def _log_probs(model, tokens, mask):
    return jax.nn.log_softmax(model(tokens, attention_mask=mask).astype(jnp.float32), axis=-1)


def teacher_forced_log_probs(model, examples: Sequence[Example], tokenizer: Tokenizer,
                             outputs: tuple[np.ndarray, np.ndarray], *, batch_size: int,
                             max_prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(log_probs float32 [N, T, V], mask bool [N, T])``: the model's next-token distribution
    at every generated position of ``outputs`` (``(tokens [N, T], lengths [N])``, e.g. the
    reference run's), fed prompt + output in one forward pass per batch of the
    `greedy_outputs` shape. Position ``t`` is the distribution of output token ``t`` given the
    prompt and tokens ``< t``; ``mask`` marks ``t < length``. These are the numerics of a
    prefill (all positions in one pass), not of cached token-by-token decoding: a reduction
    that depends on a product's rows (``batch_split_k``) differs between the two."""
    toks, lens = np.asarray(outputs[0]), np.asarray(outputs[1])
    n, t = toks.shape
    if len(examples) != n or lens.shape != (n,):
        raise ValueError(f"teacher_forced_log_probs: {len(examples)} examples but outputs of "
                         f"shape {toks.shape} / lengths {lens.shape}")
    valid = np.arange(t)[None] < lens[:, None]
    out = []
    for pb in prompt_batches(examples, tokenizer, batch_size, max_prompt_len):
        idx = np.minimum(np.arange(pb.start, pb.start + batch_size), pb.start + pb.real - 1)
        seq = np.concatenate([pb.prompt, np.where(valid[idx], toks[idx], tokenizer.pad_id)], 1)
        mask = np.concatenate([pb.prompt_mask, valid[idx]], 1).astype(np.int32)
        lp = _log_probs(model, jnp.asarray(seq, jnp.int32), jnp.asarray(mask))
        p = pb.prompt.shape[1]
        out.append(np.asarray(lp[:, p - 1:p + t - 1])[:pb.real])
    return np.concatenate(out), valid


def _check(task, tokenizer: Tokenizer, tokens: np.ndarray, example: Example) -> bool:
    """``task.check`` of the decoded output; False when the output holds ids the tokenizer
    cannot decode (an untrained model whose vocabulary is larger than the tokenizer's)."""
    try:
        text = tokenizer.decode(tokens.tolist())
    except ValueError:
        return False
    return bool(task.check(text, example))


def _evaluate(model, cell: Cell, examples, task, tokenizer, max_prompt_len: int,
              max_new_tokens: int, strategy=None, seed: int = 0) -> dict[str, Any]:
    t0 = time.perf_counter()
    cell_model = bnn.with_policy(model, cell.make_policy())
    toks, lens = greedy_outputs(cell_model, examples, tokenizer, batch_size=cell.batch_size,
                                max_prompt_len=max_prompt_len, max_new_tokens=max_new_tokens,
                                strategy=strategy, seed=seed)
    correct = [_check(task, tokenizer, toks[i, :lens[i]], ex) for i, ex in enumerate(examples)]
    return {"cell": cell.name, "config": cell.config, "policy": cell.policy,
            "order": cell.order, "acc_dtype": cell.acc_dtype, "batch_size": cell.batch_size,
            "accuracy": float(np.mean(correct)), "correct": correct,
            "lengths": lens.tolist(), "mean_length": float(np.mean(lens)),
            "seconds": time.perf_counter() - t0, "_outputs": (toks, lens), "_model": cell_model}


def _group(rows: list[dict]) -> dict[str, Any]:
    runs = [r["_outputs"] for r in rows]
    g = repro.group_divergence(runs)
    return {"cells": [r["cell"] for r in rows],
            "accuracy": repro.std_at_acc([r["accuracy"] for r in rows]),
            "length": repro.length_spread([r["lengths"] for r in rows]),
            "diverged_fraction": g["diverged_fraction"],
            "first_divergence": g["summary"],
            "diverged_from_reference": float(np.mean([r["diverged_fraction"] for r in rows]))}


def run(model: bnn.Llama, task: Any, tokenizer: Tokenizer, examples: Sequence[Example],
        grid: Sequence[Cell], *, max_prompt_len: int, max_new_tokens: int,
        reference: Cell | None = None, progress: Callable[[str], None] | None = None,
        strategy: "str | sampling.Strategy | None" = None, seed: int = 0) -> dict[str, Any]:
    """Greedy (or sampled) evaluation of ``model`` in every cell of ``grid``, compared with
    ``reference``.

    Args:
      model: a `bitscale.nn.Llama` (any policy); each cell gets a copy with the parameters cast
        to the cell policy's storage dtype.
      task: anything with ``check(completion, example) -> bool``.
      examples: the problems (prompts only are used).
      grid: `Cell` objects (see `make_grid`); must not be empty.
      reference: the cell every other is compared with; default ``fp32``, native order, the
        smallest batch size of the grid. Evaluated once even when it is also in the grid.
      progress: called with one line per evaluated cell.
      strategy: None / ``"greedy"``, or a sampling strategy (``"temperature:1.0"``): every cell
        samples problem ``i`` with the same key (`greedy_outputs`), so outputs differ only
        through the cell's numerics.
      seed: the sampling key.
    Returns:
      a JSON-able dict: ``reference``, ``n_problems``, ``max_new_tokens``, ``cells`` (per cell:
      accuracy, lengths, ``diverged_fraction`` and per-problem ``first_divergence`` from the
      reference, with its ``first_divergence_summary``, and ``logits``: the
      `bitscale.repro.logit_distance` of its teacher-forced distributions on the reference's
      outputs, `teacher_forced_log_probs`, to the reference's own), ``grid`` / ``by_policy`` /
      ``by_config`` group summaries (accuracy mean and Std@Acc, length spread, divergence
      within the group) and ``curves`` (per policy, the fraction of problems diverged from the
      reference at or before each token index).
    """
    grid = list(grid)
    if not grid:
        raise ValueError("repro.run: the grid is empty; give at least one Cell (make_grid)")
    if any(not isinstance(c, Cell) for c in grid):
        raise TypeError("repro.run: grid entries must be Cell objects (make_grid)")
    examples = list(examples)
    if not examples:
        raise ValueError("repro.run: no examples")
    grid = list(dict.fromkeys(grid))
    decoding = "greedy" if strategy in (None, "greedy") else str(sampling.parse_strategy(strategy))
    reference = reference or Cell("fp32", min(c.batch_size for c in grid))
    say = progress or (lambda line: None)
    done: dict[Cell, dict] = {}
    ref_lp = None
    for i, cell in enumerate([reference] + [c for c in grid if c != reference]):
        done[cell] = r = _evaluate(model, cell, examples, task, tokenizer, max_prompt_len,
                                   max_new_tokens, strategy, seed)
        # every cell's next-token distributions on the reference's outputs (teacher forced)
        lp, mask = teacher_forced_log_probs(
            r.pop("_model"), examples, tokenizer, done[reference]["_outputs"],
            batch_size=cell.batch_size, max_prompt_len=max_prompt_len)
        ref_lp = lp if ref_lp is None else ref_lp
        r["logits"] = repro.logit_distance(ref_lp, lp, mask)
        say(f"[{i + 1}/{len(grid) + (reference not in grid)}] {cell.name}: accuracy "
            f"{r['accuracy']:.3f}, mean length {r['mean_length']:.1f}, mean KL to the "
            f"reference {r['logits']['mean_kl']:.2e} ({r['seconds']:.1f} s)")
    ref = done[reference]["_outputs"]
    for r in done.values():
        d = repro.divergence(ref, r["_outputs"])
        r.update(diverged_fraction=d["diverged_fraction"], first_divergence=d["first_divergence"],
                 first_divergence_summary=d["summary"])
    rows = [done[c] for c in grid]
    by_policy = {p: _group([r for r in rows if r["policy"] == p])
                 for p in dict.fromkeys(r["policy"] for r in rows)}
    by_config = {c: _group([r for r in rows if r["config"] == c])
                 for c in dict.fromkeys(r["config"] for r in rows)}
    curves = {p: np.mean([repro.divergence_curve(r["first_divergence"], max_new_tokens)
                          for r in rows if r["policy"] == p], axis=0).tolist()
              for p in by_policy}
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("_")}  # noqa: E731
    return {"reference": strip(done[reference]), "n_problems": len(examples),
            "decoding": decoding,
            "max_new_tokens": int(max_new_tokens), "max_prompt_len": int(max_prompt_len),
            "cells": [strip(r) for r in rows], "grid": _group(rows), "by_policy": by_policy,
            "by_config": by_config, "curves": curves}


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _div(s: dict) -> str:
    return "-" if not s["count"] else f"{s['median']:.0f} [{s['min']}, {s['max']}]"


def findings(result: dict[str, Any]) -> list[str]:
    """Bullet lines reading the grid: per policy, how many problems diverged from the
    reference and how far its distributions moved, each stated from the numbers (an effect
    that is absent is said to be absent)."""
    lines = ["- **Reading** (computed from the tables above):"]
    for p in result["by_policy"]:
        rows = [r for r in result["cells"] if r["policy"] == p]
        div = [r["diverged_fraction"] for r in rows]
        kl = [r.get("logits", {}).get("mean_kl", 0.0) for r in rows]
        flips = [r.get("logits", {}).get("argmax_flips", 0.0) for r in rows]
        if max(div) == 0 and max(kl) == 0:
            what = "bit-identical to the reference in every cell (no divergence, KL 0)"
        elif max(div) == 0:
            what = (f"no output diverged, though the distributions moved (mean KL up to "
                    f"{max(kl):.1e}, argmax flips up to {max(flips):.4f})")
        else:
            what = (f"{_span(div, '{:.0%}')} of problems diverged (mean KL "
                    f"{_span(kl, '{:.1e}')})")
        lines.append(f"  - `{p}` over {len(rows)} cell(s): {what}.")
    order = sorted(result["by_policy"], key=lambda q: -result["by_policy"][q][
        "diverged_from_reference"])
    lines.append("  - Policies by mean divergence from the reference: " + " ≥ ".join(
        f"`{q}` ({result['by_policy'][q]['diverged_from_reference']:.0%})" for q in order)
        + ".")
    return lines


def _span(values: list[float], fmt: str) -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def section(result: dict[str, Any], *, title: str = "bitscale: reproducibility study",
            intro: str = "", heading: str = "#") -> str:
    """The study report as markdown (three tables plus notes); ``heading`` is the title's
    markdown level (subsections get one more ``#``)."""
    ref = result["reference"]["cell"]
    def logits(r: dict, key: str, fmt: str = "{:.2e}") -> str:
        return _f(r.get("logits", {}).get(key), fmt)

    cells = markdown_table(
        ("cell", "accuracy", "mean length", "diverged vs ref", "first divergence median "
         "[min, max]", "mean KL", "max abs Δ log p", "argmax flips", "seconds"),
        [[f"`{r['cell']}`", _f(r["accuracy"]), _f(r["mean_length"], "{:.1f}"),
          _f(r["diverged_fraction"]), _div(r["first_divergence_summary"]),
          logits(r, "mean_kl"), logits(r, "max_abs"), logits(r, "argmax_flips", "{:.4f}"),
          _f(r["seconds"], "{:.1f}")] for r in result["cells"]])

    def group_rows(groups: dict) -> list[list[str]]:
        return [[f"`{k}`", str(len(g["cells"])),
                 f"{g['accuracy']['mean']:.3f} ± {g['accuracy']['std']:.3f}",
                 _f(g["length"]["avg_std"], "{:.2f}"), _f(g["diverged_fraction"]),
                 _div(g["first_divergence"]), _f(g["diverged_from_reference"])]
                for k, g in groups.items()]

    heads = ("cells", "accuracy mean ± Std@Acc", "Avg_Std@length", "diverged within group",
             "Div_Index median [min, max]", "mean diverged vs ref")
    by_policy = markdown_table(("policy",) + heads, group_rows(result["by_policy"]))
    by_config = markdown_table(("policy / order (across batch sizes)",) + heads,
                               group_rows(result["by_config"]))
    whole = markdown_table(("grid",) + heads, group_rows({"all cells": result["grid"]}))
    notes = [
        f"- Reference cell: `{ref}` (accuracy {result['reference']['accuracy']:.3f}); "
        f"{result['n_problems']} problems, {result.get('decoding', 'greedy')} decoding "
        f"(the same key per problem in every cell) of at most "
        f"{result['max_new_tokens']} tokens, prompts left-padded to "
        f"{result['max_prompt_len']} tokens in every cell.",
        "- Cell names are `policy/order/b<batch>`: `native` is the backend's own GEMM; "
        "`sequential`, `pairwise`, `split_k:<s>` emulate that accumulation order in every "
        "matmul (float32 partial sums unless `@<dtype>` says otherwise).",
        "- **diverged**: fraction of problems whose generated tokens differ (from the reference, "
        "or anywhere within the group). **Div_Index**: index of the first differing generated "
        "token (per problem, earliest over the group). **Std@Acc**: sample standard deviation "
        "of accuracy over the group's cells. **Avg_Std@length**: per-problem standard deviation "
        "of output length over the cells, averaged over problems.",
        "- **Logit-level distance** (teacher forced: every cell reads the reference cell's "
        "outputs at its own batch size): **mean KL** = KL(p_ref || p_cell) per generated "
        "position in nats, **max abs Δ log p** over positions and vocabulary, **argmax flips** "
        "= fraction of positions whose most likely token changes. It shows numerical "
        "differences too small to change a sampled or greedy token. These are prefill "
        "numerics (one pass over prompt + output), so `batch_split_k` cells, whose split "
        "count follows the rows of a product, differ from fp32 only in token-by-token "
        "decoding (their outputs), not here.",
        *findings(result),
    ]
    sub = heading + "#"
    parts = [f"{heading} {title}", ""]
    if intro:
        parts += [intro, ""]
    parts += [f"{sub} Per cell", "", cells, f"{sub} Per policy", "", by_policy,
              f"{sub} Per configuration, across batch sizes", "", by_config, f"{sub} Whole grid",
              "", whole, *notes, "", "![divergence from the reference](repro_divergence.png)", ""]
    return "\n".join(parts)


def write_report(result: dict[str, Any], workdir: str, **kw) -> dict[str, str]:
    """Writes ``repro.json``, ``repro.md`` and ``repro_divergence.png`` under ``workdir``."""
    os.makedirs(workdir, exist_ok=True)
    paths = {k: os.path.join(workdir, f) for k, f in
             (("json", "repro.json"), ("md", "repro.md"), ("png", "repro_divergence.png"))}
    with open(paths["json"], "w") as f:
        json.dump(result, f, indent=1)
    n = result["max_new_tokens"]
    plot_curves({p: (list(range(n)), ys) for p, ys in result["curves"].items()}, paths["png"],
                title=f"divergence from {result['reference']['cell']}",
                xlabel="generated token index",
                ylabel="fraction of problems diverged (mean over cells)")
    with open(paths["md"], "w") as f:
        f.write(section(result, **kw))
    return paths


def load_model(run_cfg, checkpoint: str | None = None) -> bnn.Llama:
    """The model of a `bitscale.train` config: restored from ``checkpoint`` (the latest step of
    a run directory or of its ``checkpoints/``), or randomly initialized when None."""
    if checkpoint is None:
        return bnn.Llama(run_cfg.model, run_cfg.policy, rngs=nnx.Rngs(int(run_cfg.seed)))
    model, _ = restore_model(checkpoint, run_cfg.model, trained_policy=run_cfg.policy)
    return model


def run_from_config(cfg, workdir: str, checkpoint: str | None = None,
                    progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Runs the study a ``configs/repro.py``-style config describes; writes the report files
    under ``workdir`` and returns the `run` result (plus ``source`` and ``files``)."""
    run_cfg = cfg.run
    if checkpoint:
        model, source = load_model(run_cfg, checkpoint), f"checkpoint `{checkpoint}`"
    elif cfg.train_model:
        train_dir = os.path.join(workdir, "train")
        train(run_cfg, train_dir)
        model = load_model(run_cfg, train_dir)
        source = f"trained {run_cfg.train.steps} steps (`bitscale.train`, {train_dir})"
    else:
        model, source = load_model(run_cfg), f"random init (seed {run_cfg.seed}; smoke run)"
    task = bdata.make_task(run_cfg.data)
    tok = bdata.CharTokenizer()
    examples = task.generate(cfg.eval.split, int(cfg.eval.num_problems), int(cfg.eval.seed))
    grid = make_grid(cfg.grid.policies, cfg.grid.batch_sizes, cfg.grid.orders,
                     cfg.grid.acc_dtypes)
    ref = cfg.reference
    reference = Cell(ref.policy, int(ref.batch_size), ref.order, ref.acc_dtype)
    result = run(model, task, tok, examples, grid, reference=reference,
                 max_prompt_len=int(cfg.eval.max_prompt_len),
                 max_new_tokens=int(cfg.eval.max_new_tokens), progress=progress,
                 strategy=cfg.eval.get("strategy", "greedy"),
                 seed=int(cfg.eval.get("sample_seed", 0)))
    m = run_cfg.model
    n_params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    result["source"] = source
    intro = (f"Model: Llama, {n_params / 1e6:.2f}M parameters (hidden {m.hidden_size}, "
             f"{m.num_layers} layers, {m.num_heads}/{m.num_kv_heads} heads), {source}. Task: "
             f"{task.name} ({cfg.eval.split} split), {len(examples)} problems. Machine: "
             f"{jax.devices()[0].platform}, jax {jax.__version__}.")
    result["files"] = write_report(result, workdir, intro=intro)
    return result


def define_flags() -> dict[str, flags.FlagHolder]:
    holders = {
        "config": config_flags.DEFINE_config_file("config", None, "Path to a get_config() "
                                                  "file (configs/repro.py).", lock_config=True),
        "workdir": flags.DEFINE_string("workdir", None, "Output directory (report, trained "
                                       "model)."),
        "checkpoint": flags.DEFINE_string(
            "checkpoint", None, "A bitscale.train run directory (or its checkpoints/) to "
            "evaluate; default: train the config's run into <workdir>/train (train_model) or "
            "random init."),
    }
    flags.mark_flags_as_required(["config", "workdir"])
    return holders


def main(args: dict[str, Any]) -> None:
    result = run_from_config(args["config"], args["workdir"], args["checkpoint"])
    logging.info("wrote %s", ", ".join(result["files"].values()))
    print("wrote " + ", ".join(result["files"].values()), flush=True)


if __name__ == "__main__":
    from bitscale._cli import launch_study

    launch_study(define_flags, main)
