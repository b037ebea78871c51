"""`make demo` end to end on a tiny budget (`--quick`): the same code path as the real run,
two recipes, a few steps, a few problems and samples; and the command line's flags."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib", reason="the demo report's plots need matplotlib")

from bitscale.studies import demo
from bitscale.studies.report import parse_markdown_table

ROOT = pathlib.Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tables(report: str) -> list[list[dict]]:
    """Every markdown table of the report, in order."""
    blocks, cur = [], []
    for line in report.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            blocks.append(parse_markdown_table("\n".join(cur)))
            cur = []
    return blocks


@pytest.mark.slow
def test_quick_demo_writes_every_section(tmp_path, capsys):
    recipes = ["fp32", "int4_g128"]
    defaults = dataclasses.asdict(demo.DemoBudget())
    args = {**defaults, "out": str(tmp_path), "recipes": recipes, "quick": True}
    returned = demo.main(args)  # what `python -m bitscale.studies.demo --quick` runs

    out = capsys.readouterr().out
    for i, name in enumerate(recipes, 1):
        assert f"[{i}/{len(recipes)}] {name}:" in out
        assert f"[tts] {name}:" in out
    report = (tmp_path / "report.md").read_text()
    assert report == returned
    for heading in ("## Precision vs accuracy", "## Test-time scaling",
                    "## Reproducibility", "## RL in low precision",
                    "## Quantization error by format", "## Beyond the demo's budget"):
        assert heading in report
    tables = _tables(report)
    precision, tts, repro_cells, formats = tables[0], tables[1], tables[2], tables[-1]

    assert [r["recipe"] for r in precision] == recipes
    for r in precision:
        for col in ("final loss", "accuracy", "answer ppl", "bits/weight", "step-time ratio"):
            assert math.isfinite(float(r[col])), (col, r)
        assert 0.0 <= float(r["accuracy"]) <= 1.0
    assert {r["recipe"]: float(r["bits/weight"]) for r in precision} == {
        "fp32": 32.0, "int4_g128": 4.25}  # 4 bits + one bf16 scale per 128 weights
    assert float(precision[0]["step-time ratio"]) == 1.0

    assert [r["recipe"] for r in tts] == recipes
    curves = json.loads((tmp_path / "tts.json").read_text())
    for name in recipes:
        c = curves[name]
        assert c["ks"] == [1, 2, 4] and c["n"] == 4 and c["problems"] == 4
        cov = c["coverage"]
        assert all(0.0 <= x <= 1.0 for x in cov) and cov == sorted(cov)  # pass@k rises with k
        assert c["k_star"] >= 1
    assert any(r["spec"] == "mxfp4" for r in formats)
    for _, cmd, doc in demo.LONGER_STUDIES:  # every recipe and record it names exists
        assert (ROOT / doc).exists(), doc
        script = cmd.split()[1] if cmd.startswith("bash ") else None
        assert script is None or (ROOT / script).exists(), script

    cells = {r["cell"].strip("`"): r for r in repro_cells}
    assert set(cells) == {"bf16/native/b4", "fp32_batch_invariant/native/b4"}
    for row in cells.values():
        assert 0.0 <= float(row["diverged vs ref"]) <= 1.0
        assert float(row["mean KL"]) >= 0.0
    repro = json.loads((tmp_path / "repro.json").read_text())
    assert repro["n_problems"] == 4 and repro["reference"]["cell"] == "fp32/native/b4"
    assert repro["reference"]["logits"]["mean_kl"] == 0.0  # the reference against itself
    assert repro["decoding"] == "Temperature(t=1.0)"

    assert "[rl 1/2] grpo G=2 fp8:" in out and "[rl 2/2] mc_grpo G=2 fp8:" in out
    for png in ("loss_curves.png", "pass_at_k.png", "selection.png", "repro_divergence.png",
                "rl_reward.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC, png
    for name in recipes:
        assert (tmp_path / name / "metrics.jsonl").exists()


def test_command_line_flags_are_the_budget():
    """``python -m bitscale.studies.demo`` has one flag per budget field (and ``--out``), and a
    bad recipe fails before any training."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    cmd = [sys.executable, "-m", "bitscale.studies.demo"]
    proc = subprocess.run(cmd + ["--helpshort"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # absl's help exits with status 1
    for name in [f.name for f in dataclasses.fields(demo.DemoBudget)] + ["out"]:
        assert f"--{name}" in proc.stdout, name
    proc = subprocess.run(cmd + ["--recipes=fp33", f"--out={ROOT / 'runs' / 'never'}"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "fp33" in proc.stderr
