"""The DCO vs cross-entropy study: ``--quick`` end to end (train on a pool, sample, report,
re-render from JSON), its pass@k table against the estimator written out with `math.comb` on the
saved correctness counts, and its verdict.

(`python -m bitscale.studies.dco` / experiments/dco.sh is the experiment. DCO's gradient weight
``F = N p (1-p)^(N-1) / (1 - (1-p)^N)`` is checked against the paper's formula, in float64 and
by finite differences, in tests/train/test_losses.py.)
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bitscale.studies import dco as study
from bitscale.studies.report import parse_markdown_table


def comb_pass_at_k(counts, n: int, k: int) -> float:
    """Mean over problems of 1 - C(n - c, k) / C(n, k), with Python integers."""
    return float(np.mean([1.0 - math.comb(n - int(c), k) / math.comb(n, k) for c in counts]))


def assert_cell(text: str, values: list[float]) -> None:
    """A table cell ``mean ± sd`` (3 decimals) holds the mean and sd (ddof 1) of ``values``."""
    v = np.asarray(values)
    got = [float(x) for x in text.split(" ± ")]
    want = [v.mean(), v.std(ddof=1)] if len(v) > 1 else [v.mean()]
    assert len(got) == len(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-4 + 1e-9)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("dco")
    results = study.main({"quick": True, "out": str(out), "config": None, "from_json": None})
    return out, results


def test_quick_end_to_end(quick):
    out, results = quick
    for name in ("report.md", "results.json", "pass_at_n.png", "pass_at_k.png"):
        assert (out / name).exists(), name
    q = study.QUICK
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["runs"]) == ["ce", f"dco{q['n']}"]
    every = q["steps"] // q["evals"]
    for rs in saved["runs"].values():
        (r,) = rs
        assert r["steps"] == list(range(every, q["steps"] + 1, every))
        assert np.array(r["counts"]).shape == (q["evals"], q["problems"])
        assert all(0 <= c <= q["n"] for row in r["counts"] for c in row)
    for name in saved["runs"]:
        assert (out / name / "seed0" / "checkpoints").is_dir()
    rows = parse_markdown_table((out / "report.md").read_text())
    assert len(rows) == 2 * q["evals"]
    # --from_json renders the same report from the saved numbers.
    text = (out / "report.md").read_text()
    again = study.main({"from_json": str(out / "results.json")})
    assert (out / "report.md").read_text() == text and again["n"] == q["n"]


def synthetic(tmp_path, n=8, problems=10, seeds=(0, 1, 2), steps=(10, 20, 30, 40),
              levels=None):
    """Results with random per-problem counts whose success rate per (loss, step) follows
    ``levels[loss]``."""
    rng = np.random.default_rng(0)
    levels = levels or {"ce": [0.2, 0.3, 0.2, 0.1], "dco8": [0.2, 0.25, 0.25, 0.25]}
    runs = {}
    for name, lv in levels.items():
        runs[name] = []
        for s in seeds:
            counts = [rng.binomial(n, p, size=problems).tolist() for p in lv]
            runs[name].append({"seed": s, "steps": list(steps), "counts": counts,
                               "greedy": [0.1] * len(steps), "pool_greedy": [0.5] * len(steps),
                               "token_prob": [0.9] * len(steps),
                               "mode_share": [0.5] * len(steps),
                               "loss_curve": ([1, 2], [1.0, 0.5]), "train_s": 1.0,
                               "eval_s": 1.0})
    return {"runs": runs, "n": n, "problems": problems, "seeds": list(seeds),
            "steps": steps[-1], "setup": {"task": "t", "pool": 16, "batch_size": 4, "lr": 1e-3,
                                          "model": "m", "dco_n": n},
            "wall_s": 1.0, "machine": "cpu", "out": tmp_path}


def test_pass_table_matches_comb_on_saved_counts(tmp_path):
    res = synthetic(tmp_path)
    n = res["n"]
    study.save_results(res, tmp_path / "results.json")
    back = study.load_results(tmp_path / "results.json")
    rows = parse_markdown_table(study.section(back))
    assert len(rows) == 2 * 4
    for row in rows:
        name, step = row["loss"].strip("`"), int(row["step"])
        per_seed = [r for r in back["runs"][name]]
        e = per_seed[0]["steps"].index(step)
        for k, col in ((1, "pass@1"), (n, f"pass@{n}")):
            ref = [comb_pass_at_k(r["counts"][e], n, k) for r in per_seed]
            assert_cell(row[col], ref)
    # Every k, not only the table's two.
    counts = np.array(back["runs"]["ce"][1]["counts"])
    curves = study.pass_curves(counts, n)
    ref = [[comb_pass_at_k(c, n, k) for k in range(1, n + 1)] for c in counts]
    np.testing.assert_allclose(curves, ref, atol=1e-6)


def test_verdict_reads_the_bands(tmp_path):
    n, p = 8, 10
    # ce: every seed's pass@8 is 1 at the peak and 0 at the end; dco stays at 1.
    full, none = [n] * p, [0] * p
    res = synthetic(tmp_path, n=n, problems=p)
    for r in res["runs"]["ce"]:
        r["counts"] = [none, full, none, none]
    for r in res["runs"]["dco8"]:
        r["counts"] = [none, full, full, full]
    ver = study.verdict(res)
    assert ver["ce"]["falls"] and ver["ce"]["peak_step"] == 20 and ver["ce"]["drop"] == 1.0
    assert ver["ce"]["below_steps"] == [30, 40] and ver["ce"]["drops"] == [1.0] * 3
    assert not ver["dco8"]["falls"] and ver["dco8"]["drop"] == 0.0
    assert ver["dco8"]["below_steps"] == []
    assert "**appears**" in study.section(res)
    # Overlapping bands: one ce seed ends as high as another seed's peak -> not a fall.
    res["runs"]["ce"][0]["counts"] = [none, [1] * p, none, [1] * p]
    res["runs"]["ce"][1]["counts"] = [none, full, none, full[:5] + none[5:]]
    ver = study.verdict(res)
    assert not ver["ce"]["falls"] and ver["ce"]["drop"] > 0 and ver["ce"]["below_steps"] == [30]
    assert "**does not appear**" in study.section(res)
