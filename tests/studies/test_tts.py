"""`python -m bitscale.studies.tts` (`tts.run_checkpoint`): N samples per problem from a trained
checkpoint, scored, with the curves written; bad settings fail clearly."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the TTS plots need matplotlib")

from bitscale import tts
from bitscale.studies import tts as tts_study
from bitscale.config_file import load_module
from bitscale.data import Arithmetic
from bitscale import train

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tiny_config():
    mod = load_module(ROOT / "configs" / "tiny.py")
    cfg = mod.get_config()
    cfg.train.steps = 2
    cfg.train.batch_size = 2
    cfg.train.progress = False
    return cfg


def test_sample_run_writes_samples_and_curves(tmp_path):
    cfg = tiny_config()
    train.train(cfg, str(tmp_path / "run"))
    settings = tts_study.TTSSettings(n=4, prompt_batch=2)
    curves = tts_study.run_checkpoint(cfg, str(tmp_path / "run"), str(tmp_path / "out"),
                                     settings, problems=3, max_new_tokens=12)
    rows = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["completions"]) == 4 for r in rows)
    test = Arithmetic(digits=2).generate("test", 3, 0)
    assert [r["prompt"] for r in rows] == [e.prompt for e in test]  # the held-out split
    correct = np.array([r["correct"] for r in rows])
    # the curves are recomputed from the stored verdicts: pass@k of the grid, independently
    want = [np.mean([tts.pass_at_k_np(4, int(c), k) for c in correct.sum(1)]) for k in (1, 2, 4)]
    np.testing.assert_allclose(curves["coverage"], want, atol=1e-6)
    assert curves["step"] == 2 and curves["policy"] == "fp32"
    saved = json.loads((tmp_path / "out" / "curves.json").read_text())
    assert saved["ks"] == [1, 2, 4]
    for f in ("tts.md", "pass_at_k.png", "selection.png"):
        assert (tmp_path / "out" / f).exists()


def test_bad_settings_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"n must be an int >= 1, got 0"):
        tts_study.TTSSettings(n=0)
    with pytest.raises(ValueError, match="strategy"):
        tts_study.TTSSettings(strategy="beam:4")
    with pytest.raises(ValueError, match="completeness"):
        tts_study.TTSSettings(completeness=1.5)
    with pytest.raises(train.CheckpointError, match="does not exist"):
        tts_study.run_checkpoint(tiny_config(), str(tmp_path / "none"), str(tmp_path / "o"),
                   tts_study.TTSSettings(n=2), problems=1)


def test_cli_requires_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    proc = subprocess.run([sys.executable, "-m", "bitscale.studies.tts",
                           f"--config={ROOT / 'configs' / 'tiny.py'}", f"--workdir={tmp_path}"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "checkpoint" in proc.stderr


def test_analyze_fit_error_and_reading():
    """On a verdict grid whose problems have known rates, the curve is the unbiased pass@k,
    the fit's max_error is |exp(a k^b) - pass@k| written out, and the reading states the rise,
    a saturated curve and a flat one."""
    rng = np.random.default_rng(0)
    rates = np.repeat([0.0, 0.03, 0.1, 0.4, 0.9], 4)
    correct = rng.random((20, 32)) < rates[:, None]
    samples = {"correct": correct, "answers": np.where(correct, 7, 3).astype(np.int32),
               "weak": correct, "seq_logp": np.zeros((20, 32), np.float32),
               "finished": np.ones((20, 32), bool)}
    settings = tts_study.TTSSettings(n=32)
    r = tts_study.analyze(samples, settings)
    want = [np.mean([tts.pass_at_k_np(32, int(c), k) for c in correct.sum(1)])
            for k in settings.ks]
    np.testing.assert_allclose(r["coverage"], want, atol=1e-6)
    a, b = r["fit"]["a"], r["fit"]["b"]
    err = max(abs(np.exp(a * k ** b) - c) for k, c in zip(settings.ks, want) if 0 < c < 1)
    assert r["fit"]["max_error"] == pytest.approx(err, abs=1e-6)
    flat = dict(r, coverage=[0.25] * len(r["ks"]))
    full = dict(r, coverage=r["coverage"][:-1] + [1.0])
    lines = tts_study.reading({"rising": r, "flat": flat, "full": full}, 32)
    assert f"rises from {want[0]:.3f} (k=1) to {want[-1]:.3f} (k=32)" in lines[1]
    assert "does not rise" in lines[2] and "saturates" in lines[3]
