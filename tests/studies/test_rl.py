"""The "RL in low precision" report section: one real run on a tiny budget (the `--quick` path:
a random tiny Llama, 2 RL steps of 2 prompts, MC-GRPO at G = 2 under fp8; each run compiles its
own sampler and step, so the test runs one), and the section's table and plots for a full grid
of synthetic results."""

from __future__ import annotations

import math
import pathlib

import pytest

pytest.importorskip("matplotlib", reason="the section's plots need matplotlib")

import ml_collections
from flax import nnx

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale.config_file import load_module
from bitscale.studies import rl as rl_study
from bitscale.studies.report import parse_markdown_table
from bitscale.data import make_task

ROOT = pathlib.Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLUMNS = ("reward step 1", "final reward", "accuracy before", "accuracy after",
           "mean abs dlogp", "step time (s)")


def tiny_config() -> ml_collections.ConfigDict:
    mod = load_module(ROOT / "configs" / "tiny.py")
    cfg = mod.get_config()
    with cfg.unlocked():
        cfg.data.digits = 1
        cfg.data.ops = ("+",)
        cfg.data.style = "compact"
        cfg.data.max_len = 48
    return cfg


def test_quick_run(tmp_path, capsys):
    cfg = tiny_config()
    model = bnn.Llama(cfg.model, "fp32", rngs=nnx.Rngs(0))
    results = rl_study.run(model, cfg, make_task(cfg.data), bdata.CharTokenizer(), tmp_path,
                           **rl_study.QUICK, groups=(2,), algorithms=("mc_grpo",),
                           policies=("fp8",))
    assert list(results["runs"]) == ["mc_grpo G=2 fp8"] and results["steps"] == 2
    md = rl_study.section(results)
    assert md.startswith("## RL in low precision")
    rows = parse_markdown_table(md)
    assert [r["run"] for r in rows] == ["mc_grpo G=2 fp8"]
    for col in COLUMNS:
        assert math.isfinite(float(rows[0][col])), col
    assert 0.0 <= float(rows[0]["accuracy after"]) <= 1.0
    for png in ("rl_reward.png", "rl_accuracy.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC
        assert f"]({png})" in md
    assert "[rl 1/1] mc_grpo G=2 fp8:" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "rl").iterdir()] == ["mc_grpo_g2_fp8"]
    assert (tmp_path / "rl" / "mc_grpo_g2_fp8" / "metrics.jsonl").exists()


def test_section_of_the_full_grid(tmp_path):
    results = {}
    for i, (alg, g, pol) in enumerate([(a, g, p) for p in ("bf16", "fp8")
                                       for a in ("grpo", "mc_grpo") for g in (2, 8)]):
        results[f"{alg} G={g} {pol}"] = {
            "algorithm": alg, "group": g, "policy": pol, "steps": [1, 2, 3, 4],
            "reward": [0.2, 0.3, 0.4, 0.5 + 0.01 * i], "eval_steps": [0, 2, 4],
            "eval_acc": [0.5, 0.55, 0.6], "final_reward": 0.5 + 0.01 * i, "acc_before": 0.5,
            "acc_after": 0.6, "mismatch": 1e-6 * i, "step_s": 0.1 * (i + 1)}
    md = rl_study.section({"runs": results, "out": tmp_path, "steps": 4, "prompts_per_step": 8,
                           "eval_examples": 64, "max_new_tokens": 32, "lr": 1e-4,
                           "ppo_epochs": 1, "wall_s": 12.0})
    rows = parse_markdown_table(md)
    assert [r["run"] for r in rows] == list(results)
    assert [r["G"] for r in rows] == ["2", "8"] * 4
    assert rows[0]["reward step 1"] == "0.200" and rows[-1]["final reward"] == "0.570"
    assert "8 runs took 12 s" in md
    assert (tmp_path / "rl_reward.png").read_bytes()[:8] == PNG_MAGIC
