"""The stability study: its divergence rule on hand-made curves and a forced NaN, the formats of
its ExMy reduction policies against independent grids, and ``--quick`` end to end."""

from __future__ import annotations

import itertools
import json
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import bitscale as bs
from bitscale.numerics.specs import resolve_spec
from bitscale.studies import stability as study
from bitscale.studies.report import parse_markdown_table


# ---- the divergence rule ----------------------------------------------------------------------

def test_classify_hand_made_curves():
    thr = 2.0
    trained = [4.0] * 5 + [1.0] * 95
    r = study.classify(trained, thr)
    assert not r["diverged"] and r["reason"] is None and r["final_loss"] == pytest.approx(1.0)
    assert r["initial_loss"] == 4.0 and r["min_loss"] == pytest.approx(1.0)
    # learned, then fell back to the frequencies at step 61 and stayed there
    collapsed = [1.0] * 60 + [2.5] * 40
    r = study.classify(collapsed, thr)
    assert r["diverged"] and r["reason"] == "collapsed" and r["final_loss"] == pytest.approx(2.5)
    # trailing means (window 10) stay below 2.0 through step 65 (mean of 1.0 x5, 2.5 x5 = 1.75)
    # and reach 2.0 at step 67 (4 x 1.0 + 6 x 2.5 = 1.9 at 66; 2.05 at 67)
    assert r["step"] == 67
    assert r["max_loss"] == pytest.approx(2.5)
    never = [3.0] * 50
    r = study.classify(never, thr)
    assert r["diverged"] and r["reason"] == "collapsed" and r["step"] is None
    # a spike that recovers before the last tenth is not a divergence
    spike = [1.0] * 40 + [9.0] * 10 + [1.0] * 50
    r = study.classify(spike, thr)
    assert not r["diverged"] and r["max_loss"] == pytest.approx(9.0)
    # exactly at the threshold counts as collapsed
    assert study.classify([2.0] * 20, thr)["diverged"]
    r = study.classify([4.0, 3.0], thr, nonfinite_step=3)
    assert r["diverged"] and r["reason"] == "non-finite" and r["step"] == 3
    assert r["final_loss"] is None
    with pytest.raises(ValueError, match="finite"):
        study.classify([1.0, float("nan")], thr)


def test_unigram_entropy_matches_a_direct_count():
    cfg = study.study_config(None, "fp32", 0.01, 0)
    h = study.unigram_entropy(cfg, n_batches=2)
    from bitscale import data as bdata
    d = cfg.data
    exs = [bdata.make_task(d).example("train", 0, i) for i in range(2 * cfg.train.batch_size)]
    tok = bdata.CharTokenizer()
    # answer tokens: the target text and EOS, after the prompt
    ids = [t for e in exs for t in tok.encode(e.target)] + [tok.eos_id] * len(exs)
    p = np.bincount(ids) / len(ids)
    p = p[p > 0]
    assert h == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-9)


# ---- the ExMy reduction policies --------------------------------------------------------------

def _grid(e: int, m: int) -> np.ndarray:
    """Every finite non-negative value of ExMy with the OCP 'fn' convention (only S.1..1.1..1 is
    NaN), enumerated from its bit patterns."""
    bias = 2 ** (e - 1) - 1
    vals = []
    for ecode, mcode in itertools.product(range(2 ** e), range(2 ** m)):
        if ecode == 2 ** e - 1 and mcode == 2 ** m - 1:
            continue  # the NaN code
        if ecode == 0:
            vals.append(mcode / 2 ** m * 2.0 ** (1 - bias))
        else:
            vals.append((1 + mcode / 2 ** m) * 2.0 ** (ecode - bias))
    return np.array(sorted(vals))


# (max finite, smallest subnormal) of each family format, by hand from its bit layout
HAND = {"e4m3": (448.0, 2.0 ** -9), "e4m2": (384.0, 2.0 ** -8), "e4m1": (256.0, 2.0 ** -7),
        "e3m3": (28.0, 2.0 ** -5), "e2m3": (7.0, 2.0 ** -3)}


@pytest.mark.parametrize("name", study.EXMY_FAMILY)
def test_family_policy_quantizes_wag_to_its_grid(name):
    e, m = int(name[1]), int(name[3])
    assert set(HAND) == set(study.EXMY_FAMILY)
    grid = _grid(e, m)
    assert (grid[-1], grid[1]) == HAND[name]
    rule = study.exmy_policy(name).rules[-1]
    assert rule.weight == rule.act == rule.grad
    spec = resolve_spec(rule.weight)
    assert (spec.elem.ebits, spec.elem.mbits, spec.granularity) == (e, m, "tensor")
    # amax = the format's max: the tensor scale is 1 and the values land on the raw grid
    x = np.concatenate([np.linspace(-grid[-1], grid[-1], 20001), grid, -grid])
    # jitted: one compile instead of eager dispatch of every op of the quantizer
    q = np.asarray(jax.jit(lambda v: bs.fake_quant(v, rule.weight))(jnp.asarray(x, jnp.float32)))
    got = np.unique(np.abs(q))
    np.testing.assert_array_equal(got, grid)
    # nearest: every value is the nearest grid point
    dist = np.abs(x[:, None] - np.sign(x)[:, None] * grid[None, :]).min(axis=1)
    np.testing.assert_allclose(np.abs(x - q), dist, atol=1e-6)


def test_family_grids_against_ml_dtypes():
    e4m3 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    pos = np.unique(np.abs(e4m3[np.isfinite(e4m3)]))
    np.testing.assert_array_equal(pos, _grid(4, 3))
    # OCP FP6 E2M3 has no NaN code, so its grid is ours plus the top code 7.5
    fp6 = np.array(sorted({abs(float(v)) for v in np.linspace(-7.5, 7.5, 4001).astype(
        ml_dtypes.float6_e2m3fn).astype(np.float64)}))
    np.testing.assert_array_equal(fp6, np.append(_grid(2, 3), 7.5))


def test_mantissa_and_exponent_pairs_have_equal_bits():
    pairs = study._pairs(study.POLICIES)
    assert pairs == [(7, "e4m2", "e3m3"), (6, "e4m1", "e2m3")]
    for bits, mant, expo in pairs:
        fm, fe = study.exmy_format(mant), study.exmy_format(expo)
        assert fm.storage_bits == fe.storage_bits == bits
        assert fm.ebits == 4 and fe.mbits == 3


def test_fisher_p_against_hand_values():
    # [[0, 3], [3, 0]]: the only table as extreme, both ways: 2 x 1/C(6, 3) = 0.1
    assert study.fisher_p(0, 3, 3, 3) == pytest.approx(0.1)
    assert study.fisher_p(2, 3, 2, 3) == pytest.approx(1.0)


def test_section_counts_on_synthetic_runs(tmp_path):
    diverged = {("fp32", 0.1): 0, ("fp32", 0.5): 1, ("e4m1", 0.1): 0, ("e4m1", 0.5): 2,
                ("e2m3", 0.1): 2, ("e2m3", 0.5): 3}
    runs = []
    for (p, lr), d in diverged.items():
        for seed in range(3):
            div = seed < d
            runs.append({"policy": p, "lr": lr, "seed": seed, "diverged": div,
                         "reason": "collapsed" if div else None, "step": None,
                         "final_loss": 2.6 if div else 1.0 + seed, "initial_loss": 4.8,
                         "min_loss": 1.0, "max_loss": 4.8, "losses": [4.8, 1.0], "wall_s": 1.0})
    res = {"runs": runs, "policies": ["fp32", "e4m1", "e2m3"], "lrs": [0.1, 0.5],
           "seeds": [0, 1, 2], "steps": 100, "threshold": 2.4, "unigram_entropy": 2.5,
           "wall_s": 1.0, "cfg": study.study_config(None, "fp32", 0.1, 0), "out": tmp_path}
    text = study.section(res)
    rates = parse_markdown_table(text)
    assert [(r["policy"], r["lr 0.1"], r["lr 0.5"]) for r in rates] == [
        ("`fp32`", "0/3", "1/3"), ("`e4m1`", "0/3", "2/3"), ("`e2m3`", "2/3", "3/3")]
    pair = parse_markdown_table(text[text.index("Mantissa-only"):])
    assert pair == [{"bits": "6", "mantissa-only: diverged": "`e4m1`: 2/6",
                     "exponent-only: diverged": "`e2m3`: 5/6",
                     "Fisher p": f"{study.fisher_p(2, 6, 5, 6):.2f}",
                     "mantissa-only: mean final loss": f"{np.mean([1, 2, 3, 2.6, 2.6, 3]):.3f}",
                     "exponent-only: mean final loss": f"{np.mean([2.6] * 5 + [3]):.3f}"}]
    summary = parse_markdown_table(text[text.index("Per policy"):])
    assert summary[2]["lowest lr with a divergence"] == "0.1"
    assert summary[1]["lowest lr with rate >= 1/2"] == "0.5"
    assert summary[0]["lowest lr with rate >= 1/2"] == "-"


def test_invalid_grids_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="fp32"):
        study.run(tmp_path, policies=["fp33"])
    with pytest.raises(ValueError, match="positive"):
        study.run(tmp_path, lrs=[0.1, -1.0])
    with pytest.raises(ValueError, match="positive"):
        study.run(tmp_path, lrs=[])
    with pytest.raises(ValueError, match="seeds"):
        study.run(tmp_path, seeds=[])
    with pytest.raises(ValueError, match="e9m3"):
        study.run(tmp_path, policies=["e9m3"])


# ---- end to end -------------------------------------------------------------------------------

_CONFIG = """
import dataclasses
from configs.stability import get_config as _base


def get_config(policy="fp32"):
    cfg = _base(policy)
    with cfg.unlocked():
        cfg.model = dataclasses.replace(cfg.model, num_layers=1)  # compiles faster
        if getattr(policy, "name", policy) == "e2m3":
            cfg.train.debug_nan_at_step = 4  # the NaN-guard drill: loss of step 4 is NaN
    return cfg
"""


def test_quick_end_to_end_with_a_forced_nan(tmp_path, monkeypatch):
    """``--quick`` through `main` on a 2-run grid (the real `QUICK` grid trains 6 runs: too slow
    for the suite) whose ``e2m3`` run has a NaN loss forced at step 4; then ``--from_json``."""
    (tmp_path / "cfg.py").write_text(_CONFIG)
    monkeypatch.setattr(study, "QUICK", {"policies": ("fp32", "e2m3"), "lrs": (1.0,),
                                         "seeds": (0,), "steps": 6})
    args = {"out": str(tmp_path / "out"), "policies": ["fp32"], "lrs": ["0.5"], "seeds": ["3"],
            "steps": 500, "quick": True, "config": str(tmp_path / "cfg.py"),
            "compile_cache": "", "from_json": None}
    study.main(args)
    out = tmp_path / "out"
    data = json.loads((out / "results.json").read_text())
    assert data["policies"] == ["fp32", "e2m3"] and data["lrs"] == [1.0] and data["steps"] == 6
    fp32, e2m3 = data["runs"]
    assert len(fp32["losses"]) == 6 and all(math.isfinite(v) for v in fp32["losses"])
    assert fp32["diverged"] == (fp32["final_loss"] >= data["threshold"])
    assert e2m3["diverged"] and e2m3["reason"] == "non-finite" and e2m3["step"] == 4
    assert len(e2m3["losses"]) == 3 and e2m3["final_loss"] is None
    assert not (out / "runs" / "e2m3" / "lr1" / "seed0" / "checkpoints").exists()
    text = (out / "report.md").read_text()
    rows = parse_markdown_table(text)
    assert [r["policy"] for r in rows] == ["`fp32`", "`e2m3`"]
    assert rows[0]["lr 1"] == f"{int(fp32['diverged'])}/1" and rows[1]["lr 1"] == "1/1"
    assert (out / "final_loss.png").exists()
    study.main({**args, "from_json": str(out / "results.json")})
    assert (out / "report.md").read_text() == text
