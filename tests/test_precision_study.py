"""The precision study end to end on a tiny budget: same code path, 2 recipes, few steps."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("matplotlib", reason="bitscale.precision_study writes its loss-curve PNG with "
                    "matplotlib, which is not installed")

from bitscale import precision_study as demo
from bitscale.report import parse_markdown_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_writes_report_and_png(tmp_path, capsys):
    recipes = ["fp32", "int4_g128"]
    demo.main(["--out", str(tmp_path), "--steps", "4", "--recipes", *recipes,
               "--eval-problems", "8"])

    out = capsys.readouterr().out
    for i, name in enumerate(recipes, 1):
        assert f"[{i}/{len(recipes)}] {name}:" in out
    report = (tmp_path / "report.md").read_text()
    rows = parse_markdown_table(report)
    assert [r["recipe"] for r in rows] == recipes
    for r in rows:
        for col in ("final loss", "accuracy", "answer ppl", "bits/weight", "step-time ratio"):
            assert math.isfinite(float(r[col])), (col, r)
        assert 0.0 <= float(r["accuracy"]) <= 1.0
    bits = {r["recipe"]: float(r["bits/weight"]) for r in rows}
    assert bits == {"fp32": 32.0, "int4_g128": 4.25}
    assert float(rows[0]["step-time ratio"]) == 1.0
    assert "![training loss curves](loss_curves.png)" in report

    png = tmp_path / "loss_curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    for name in recipes:
        assert (tmp_path / name / "metrics.jsonl").exists()
