"""The precision scaling-law sweep: N and D accounting against independent counts, policies
built from bit widths against hand / ml_dtypes grids, a two-run end-to-end sweep, and the
fit + report path on synthetic runs (``--from_runs``)."""

from __future__ import annotations

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from bitscale import data as bdata
from bitscale import laws
from bitscale import nn as bnn
from bitscale.numerics import fake_quant
from bitscale.studies import laws_sweep as sweep
from tests.laws.helpers import KUMAR_TRUTH, noisy


@pytest.mark.parametrize("hidden, layers", [(32, 1), (64, 2), (96, 3)])
def test_non_embedding_params_match_the_formula(hidden, layers):
    # per layer: q, k, v, o (h x h each: heads x 32 = h, as many KV heads as heads), gate / up /
    # down (h x 4h each), two RMSNorm scales; plus the final norm. Embedding and lm head excluded.
    want = layers * (4 * hidden ** 2 + 3 * 4 * hidden ** 2 + 2 * hidden) + hidden
    cfg = sweep.run_config(sweep.Size(hidden, layers), bnn.resolve_policy("fp32"),
                           sweep.QUICK_PLAN)
    assert sweep.non_embedding_params(cfg.model) == want


def _fake_quant(x: np.ndarray, spec) -> np.ndarray:
    """``fake_quant`` along the last axis, compiled (eager dispatch of the scale arithmetic is
    slower than one compilation)."""
    return np.asarray(jax.jit(lambda v: fake_quant(v, spec, axis=-1))(x))


def test_kumar_policy_quantizes_to_the_integer_grids():
    pol = sweep.kumar_policy(sweep.KumarPrecision(w_bits=3, a_bits=4, kv_bits=5))
    x = np.asarray(jax.random.normal(jax.random.key(0), (6, 64)), np.float32)
    amax = np.abs(x).max(-1, keepdims=True)
    for path in bnn.module_paths(sweep.run_config(sweep.Size(32, 2), pol,
                                                  sweep.QUICK_PLAN).model):
        rule = pol.rule_for(path)
        if path.endswith("_proj"):
            assert (rule.weight.name, rule.act.name) == ("int3@channel", "int4@channel"), path
        elif path.endswith("kv_cache"):
            assert (rule.weight, rule.act.name) == (None, "int5@channel"), path
        else:  # lm head, qk / pv products: float32
            assert not rule.quantized, path
    for spec, qmax in (("int3@channel", 3), ("int4@channel", 7), ("int5@channel", 15)):
        codes = _fake_quant(x, spec) / (amax / qmax)  # restricted symmetric: scale = amax / qmax
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
        assert set(np.round(codes).astype(int).ravel()) <= set(range(-qmax, qmax + 1))
        assert np.abs(codes).max() == pytest.approx(qmax, abs=1e-4)
    assert not sweep.kumar_policy(sweep.KumarPrecision()).rule_for("layers.0.mlp.up_proj").quantized


@pytest.mark.parametrize("fmt, dtype", [(sweep.SunFormat(2, 1, 8), ml_dtypes.float4_e2m1fn),
                                        (sweep.SunFormat(3, 2, 16), ml_dtypes.float6_e3m2fn),
                                        (sweep.SunFormat(2, 3, 32), ml_dtypes.float6_e2m3fn)])
def test_sun_policy_quantizes_blocks_to_the_minifloat_grid(fmt, dtype):
    pol = sweep.sun_policy(fmt)
    rule = pol.rule_for("layers.0.attn.q_proj")
    want = f"e{fmt.exp_bits}m{fmt.man_bits}_ext@g{fmt.block_size}"
    assert rule.weight.name == rule.act.name == want
    assert not pol.rule_for("lm_head").quantized
    x = np.asarray(jax.random.normal(jax.random.key(1), (4, 64)), np.float32)
    blocks = x.reshape(4, -1, fmt.block_size)
    grid_max = float(ml_dtypes.finfo(dtype).max)  # OCP FP4 / FP6: no Inf / NaN codes (_ext)
    scale = np.abs(blocks).max(-1, keepdims=True) / grid_max
    q = _fake_quant(x, rule.weight).reshape(blocks.shape) / scale
    # every scaled element is representable in the ml_dtypes format (a cast is exact) ...
    np.testing.assert_allclose(q.astype(dtype).astype(np.float32), q, rtol=1e-5, atol=1e-6)
    # ... and is the nearest point of the format's grid to the scaled input
    grid = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    grid = np.unique(grid[np.isfinite(grid)])
    dist = np.abs((blocks / scale)[..., None] - grid).min(-1)
    assert np.all(np.abs(q - blocks / scale) <= dist + 1e-5)


def test_plan_and_flag_validation():
    with pytest.raises(ValueError, match="block size 64 of e2m1_b64 does not divide"):
        sweep.SweepPlan(sun_sizes=(sweep.Size(32, 1),), sun_formats=(sweep.SunFormat(2, 1, 64),))
    with pytest.raises(ValueError, match="eval_steps must be increasing"):
        sweep.SweepPlan(eval_steps=(200, 100))
    with pytest.raises(ValueError, match="'<hidden>x<layers>'"):
        sweep.parse_sizes("64,2")
    with pytest.raises(ValueError, match="hidden must be a multiple of 32"):
        sweep.parse_sizes("48x2")
    with pytest.raises(ValueError, match="sweep must be a non-empty subset"):
        sweep.check_sweeps(["kumar", "chinchilla"])
    with pytest.raises(ValueError, match="kv_bits must be None or an int in 2..16"):
        sweep.KumarPrecision(kv_bits=1)
    plan = sweep.plan_from_args({"quick": True, "kumar_sizes": ["32x1"], "eval_steps": ["3", "6"]})
    assert plan.kumar_sizes == (sweep.Size(32, 1),) and plan.eval_steps == (3, 6)


def test_one_run_sweep_counts_tokens_and_reports(tmp_path):
    plan = sweep.plan_for(True, kumar_sizes=(sweep.Size(32, 1),),
                          kumar_precisions=(sweep.KumarPrecision(w_bits=3),),
                          eval_steps=(3, 6), eval_problems=16)
    res = sweep.run_sweep(tmp_path, ["kumar"], plan)
    runs = res["runs"]
    assert [r.name for r in runs] == ["kumar/h32_l1/w3/step3", "kumar/h32_l1/w3/step6"]
    assert [(r.w_bits, r.a_bits, r.kv_bits) for r in runs] == [(3, None, None)] * 2
    # D: the answer tokens of the data stream, counted independently of the training loop
    cfg = sweep.run_config(plan.kumar_sizes[0], bnn.resolve_policy("fp32"), plan)
    stream = bdata.batches(bdata.make_task(cfg.data), "train", cfg.train.batch_size, cfg.seed,
                           bdata.CharTokenizer(), max_prompt_len=cfg.data.max_prompt_len,
                           max_len=cfg.data.max_len, loss_on="answer")
    counts = np.cumsum([next(stream).arrays["loss_mask"][:, 1:].sum() for _ in range(6)])
    assert [r.tokens for r in runs] == [counts[2], counts[5]]
    assert all(r.n_params == 32 * 16 * 32 + 2 * 32 + 32 for r in runs)
    assert all(np.isfinite(r.loss) and r.loss > 0 for r in runs)
    assert laws.load_runs(tmp_path / "runs.jsonl") == runs
    assert not (tmp_path / "runs" / "kumar" / "h32_l1" / "w3" / "checkpoints").exists()
    again = sweep.run_sweep(tmp_path, ["kumar"], plan)  # reused, not retrained
    assert again["runs"] == runs and again["meta"] == []
    # one N only: the law cannot be fitted, and the report says why instead of failing
    out = sweep.fit_and_report(runs, tmp_path, protocols=["largest_D"], num_starts=2,
                               plots=False)
    assert "gamma_w is then not identifiable" in out["kumar"]["fit"]["error"]
    report = (tmp_path / "report.md").read_text()
    assert "Not fitted" in report and "not applicable" in report


def test_held_out_splits():
    runs = [laws.Run(n, d, 1.0, name=f"r{n:.0f}_{p}/step{d:.0f}")
            for n in (1.0, 2.0, 4.0) for p in range(2) for d in (10.0, 20.0)]
    (train, test), = sweep.held_out_splits(runs, "largest_N")
    assert {r.n_params for r in train} == {1.0, 2.0} and {r.n_params for r in test} == {4.0}
    (train, test), = sweep.held_out_splits(runs, "largest_D")
    assert {r.tokens for r in train} == {10.0} and {r.tokens for r in test} == {20.0}
    folds = sweep.held_out_splits(runs, "leave_run_out", folds=4, seed=0)
    assert len(folds) == 4
    tested = [r.name for _, test in folds for r in test]
    assert sorted(tested) == sorted(r.name for r in runs)  # every row held out exactly once
    for train, test in folds:  # a run's checkpoints are held out together
        assert not {r.name.split("/")[0] for r in train} & {r.name.split("/")[0] for r in test}
    with pytest.raises(ValueError, match="protocol must be one of"):
        sweep.held_out_splits(runs, "random")


def test_from_runs_fits_synthetic_runs_and_renders(tmp_path):
    grid = [laws.Run(n, d, 1.0, w_bits=w, name=f"kumar/n{n:.0f}/w{w}/step{d:.0f}")
            for n in (3e4, 6e4, 1.2e5) for w in (None, 3, 5) for d in (1e5, 2e5, 4e5)]
    runs = noisy(KUMAR_TRUTH, grid, 0.002, seed=0)
    laws.save_runs(runs, tmp_path / "in" / "runs.jsonl")
    res = sweep.main({"out": str(tmp_path / "out"), "sweep": ["kumar"],
                      "from_runs": str(tmp_path / "in" / "runs.jsonl"),
                      "protocols": [], "fit_starts": 2, "seed": 0})
    fit = res["kumar"]["fit"]
    assert fit["params"]["gamma_w"] == pytest.approx(KUMAR_TRUTH.gamma_w, rel=0.1)
    assert fit["params"]["gamma_a"] is None
    assert fit["rel_rmse"] < 0.004  # the 0.2% noise
    saved = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert saved["kumar"]["fit"]["params"] == fit["params"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "gamma_w" in report and "kumar/n30000/w3/step100000" in report
    for png in ("kumar_bits.png", "kumar_data.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="holds no rows of the sweeps"):
        sweep.main({"out": str(tmp_path / "o2"), "sweep": ["sun"],
                    "from_runs": str(tmp_path / "in" / "runs.jsonl")})
