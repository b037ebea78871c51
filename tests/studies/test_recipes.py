"""The recipes study's report logic on synthetic results (the training itself is the train loop's,
tested elsewhere; `python -m bitscale.studies.recipes` is the experiment)."""

from __future__ import annotations

import numpy as np
import pytest

from bitscale.studies import recipes as study
from bitscale.studies.report import parse_markdown_table


def _results(tmp_path, eval_losses: dict[str, list[float]]):
    runs = {name: [{"eval_loss": v, "train_loss": v + 0.01, "step_s": 0.1,
                    "curve": ([0, 1], [2.0, v])} for v in vals]
            for name, vals in eval_losses.items()}
    seeds = list(range(len(eval_losses[study.BASELINE])))
    return {"runs": runs, "recipes": list(runs), "seeds": seeds,
            "cfg": study.study_config(None, study.BASELINE, 10, 0), "wall_s": 1.0, "out": tmp_path}


def test_claims_verdicts():
    gap = {"quartet2_nvfp4": np.array([0.10, 0.11, 0.12]),
           "nvfp4_recipe": np.array([0.20, 0.21, 0.22]),
           "nvfp4": np.array([0.19, 0.25, 0.18]),
           "nvint4_rotated": np.array([0.30, 0.31, 0.32])}
    checks = {(c["lower"], c["higher"]): c for c in study.check_claims(gap)}
    assert checks[("quartet2_nvfp4", "nvfp4_recipe")]["verdict"] == "holds"
    assert checks[("quartet2_nvfp4", "nvfp4_recipe")]["diff"] == pytest.approx(-0.10)
    # paired differences [0.01, -0.04, 0.04]: t = 0.14 < t(0.975, 2) = 4.30
    assert checks[("nvfp4_recipe", "nvfp4")]["verdict"] == "opposite direction, within noise"
    # [0.11, 0.06, 0.14]: mean 0.1033, se 0.0233, t = 4.43 > 4.30
    assert checks[("nvint4_rotated", "nvfp4")]["verdict"] == "reversed"
    assert checks[("nvint4_rotated", "nvfp4")]["t"] == pytest.approx(4.43, abs=0.01)
    assert ("quartet_mxfp4", "mxfp4") not in checks  # not run
    one = study.check_claims({"nvfp4_recipe": np.array([0.1]), "nvfp4": np.array([0.2])})
    assert one[0]["verdict"] == "holds (1 seed)"


def test_section_ranks_by_gap(tmp_path):
    res = _results(tmp_path, {study.BASELINE: [1.0, 1.1], "nvfp4": [1.3, 1.5],
                              "quartet2_nvfp4": [1.1, 1.2], "nvfp4_recipe": [1.2, 1.3]})
    text = study.section(res)
    rows = parse_markdown_table(text)
    assert [r["recipe"] for r in rows] == [f"`{study.BASELINE}`", "`quartet2_nvfp4`",
                                          "`nvfp4_recipe`", "`nvfp4`"]
    assert rows[1][f"gap to {study.BASELINE}"] == "+0.1000 ± 0.0000"
    assert "**holds**" in text and (tmp_path / "loss_curves.png").exists()


def test_results_round_trip_through_json(tmp_path):
    res = _results(tmp_path, {study.BASELINE: [1.0, 1.1], "nvfp4": [1.3, 1.5]})
    study.save_results(res, tmp_path / "results.json")
    back = study.load_results(tmp_path / "results.json")
    assert back["runs"]["nvfp4"][1]["eval_loss"] == 1.5 and back["seeds"] == [0, 1]
    assert study.section(back) == study.section(res)


def test_unknown_recipe_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="quartet2_nvfp4"):
        study.run(tmp_path, recipes=[study.BASELINE, "quartet3"], steps=1, seeds=[0])
