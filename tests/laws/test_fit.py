"""The run table (validation, JSONL), held_out_error's checks, the robust-loss option and
plot_fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitscale.laws import (
    KumarLaw,
    Run,
    SunLaw,
    held_out_error,
    load_runs,
    plot_fit,
    save_runs,
)
from tests.laws.helpers import KUMAR_TRUTH, SUN_TRUTH, kumar_grid, noisy, sun_grid


@pytest.mark.parametrize("kwargs, match", [
    ({"n_params": 0.0}, "n_params must be a finite number > 0, got 0.0"),
    ({"tokens": float("inf")}, "tokens must be a finite number > 0"),
    ({"loss": -1.0}, "loss must be a finite number > 0"),
    ({"w_bits": 0}, r"w_bits must be None \(not quantized\) or a bit width in \(0, 64\]"),
    ({"kv_bits": 65}, "kv_bits must be None"),
    ({"exp_bits": 1.5}, "exp_bits must be None or an integer >= 0, got 1.5"),
    ({"block_size": 0}, "block_size must be None or an integer >= 1"),
    ({"exp_bits": 17}, "exp_bits must be <= 16"),
    ({"n_params": True}, "n_params must be a finite number"),
])
def test_run_validation(kwargs, match):
    base = {"n_params": 1e8, "tokens": 1e10, "loss": 3.0}
    with pytest.raises(ValueError, match=match):
        Run(**{**base, **kwargs})


def test_jsonl_round_trip_and_errors(tmp_path):
    runs = [Run(1e8, 1e10, 3.1, w_bits=4, name="a"),
            Run(2e8, 1e10, 3.0, exp_bits=2, man_bits=1, block_size=32)]
    path = save_runs(runs, tmp_path / "runs.jsonl")
    assert load_runs(path) == runs
    assert json.loads(open(path).readline()) == {"n_params": 1e8, "tokens": 1e10, "loss": 3.1,
                                                 "w_bits": 4, "name": "a"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"n_params": 1e8, "tokens": 1e10, "loss": 3.0}\n\n'
                   '{"n_params": 1e8, "tokens": 1e10, "los": 3.0}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: Run.from_dict: unknown keys \['los'\]"):
        load_runs(bad)
    bad.write_text('{"n_params": -5, "tokens": 1e10, "loss": 3.0}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: Run: n_params must be"):
        load_runs(bad)
    bad.write_text("\n")
    with pytest.raises(ValueError, match="holds no runs"):
        load_runs(bad)


def test_l2_loss_option_also_recovers_noise_free_parameters():
    runs = [r for r in kumar_grid() if r.a_bits is None and r.kv_bits is None]
    fit = KumarLaw.fit(noisy(KUMAR_TRUTH, runs, 0.0, seed=0), loss="l2", num_starts=8)
    assert fit.loss == "l2"
    assert fit.rel_rmse < 1e-5
    assert fit.params.alpha == pytest.approx(KUMAR_TRUTH.alpha, rel=1e-3)
    assert fit.params.gamma_w == pytest.approx(KUMAR_TRUTH.gamma_w, rel=1e-3)


def test_held_out_error_checks_its_arguments():
    runs = noisy(KUMAR_TRUTH, kumar_grid(), 0.0, seed=0)
    with pytest.raises(ValueError, match="law must be a law class such as KumarLaw or SunLaw"):
        held_out_error(KUMAR_TRUTH, runs, runs)
    with pytest.raises(ValueError, match="held_out_error: runs is empty"):
        held_out_error(KumarLaw, runs, [])
    with pytest.raises(ValueError, match="has no exp_bits"):  # Kumar runs lack E, M, B
        held_out_error(SunLaw, runs, runs)


@pytest.mark.parametrize("law, runs", [(KUMAR_TRUTH, kumar_grid()), (SUN_TRUTH, sun_grid())],
                         ids=["kumar", "sun"])
def test_plot_fit_writes_a_png(tmp_path, law, runs):
    runs = noisy(law, runs, 0.003, seed=0)
    path = plot_fit(law, runs, tmp_path / "sub" / "fit.png", title="synthetic")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    if isinstance(law, SunLaw):
        plot_fit(law, runs, tmp_path / "b.png", bits_field="block_size", max_lines=2)
    with pytest.raises(ValueError, match="bits_field must be one of"):
        plot_fit(law, runs, tmp_path / "c.png", bits_field="loss")
    with pytest.raises(ValueError, match="law must be a fitted law"):
        plot_fit(np.zeros(3), runs, tmp_path / "c.png")
