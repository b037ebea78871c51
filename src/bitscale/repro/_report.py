"""Writes a `run_study` result: ``repro.json``, ``repro.md`` (markdown tables) and
``repro_divergence.png`` (fraction of problems diverged from the reference per token index)."""

from __future__ import annotations

import json
import os
from typing import Any

from bitscale.report import markdown_table, plot_curves


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _div(s: dict) -> str:
    return "-" if not s["count"] else f"{s['median']:.0f} [{s['min']}, {s['max']}]"


def markdown(result: dict[str, Any], *, title: str = "bitscale: reproducibility study",
             intro: str = "", heading: str = "#") -> str:
    """The study report as markdown (three tables plus notes); ``heading`` is the title's
    markdown level (subsections get one more ``#``)."""
    ref = result["reference"]["cell"]
    cells = markdown_table(
        ("cell", "accuracy", "mean length", "diverged vs ref", "first divergence median "
         "[min, max]", "seconds"),
        [[f"`{r['cell']}`", _f(r["accuracy"]), _f(r["mean_length"], "{:.1f}"),
          _f(r["diverged_fraction"]), _div(r["first_divergence_summary"]),
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
        f.write(markdown(result, **kw))
    return paths
