"""Training loop: the loss falls, kill-and-resume is bit-identical, a NaN stops the run without
touching the last good checkpoint, a corrupt/mismatched checkpoint fails clearly, and the CLI
rejects a misspelt config override.

Runs are 12 steps of 8 sequences (two micro-batches of 4) with checkpoints every 4 steps.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from flax import nnx
from tests.train.helpers import assert_trees_equal

from bitscale.config_file import load_module
from bitscale.nn import Llama, make_mesh
from bitscale.train import (Checkpointer, CheckpointError, RunConfig, create_train_state,
                            make_optimizer, train)

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS, EVERY = 12, 4


def _tiny_module():
    mod = load_module(ROOT / "configs" / "tiny.py")
    return mod


def small_config(**train_overrides):
    cfg = _tiny_module().get_config()
    cfg.train.steps = STEPS
    cfg.train.checkpoint_every = EVERY
    cfg.train.log_every = 2
    cfg.train.batch_size = 8
    cfg.train.grad_accum = 2
    cfg.train.progress = False
    cfg.optim.warmup_steps = 2
    for k, v in train_overrides.items():
        setattr(cfg.train, k, v)
    return cfg


def read_rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("full"))
    result = train(small_config(), workdir)
    return workdir, result


def test_loss_falls_and_files_written(full_run):
    workdir, result = full_run
    rows = read_rows(workdir)
    assert [r["step"] for r in rows] == [1, 2, 4, 6, 8, 10, 12]
    assert all(isinstance(r["loss"], float) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, rows
    assert result["step"] == STEPS and not result["stopped"]
    assert int(result["state"].step) == STEPS
    assert Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [4, 8, 12]


@pytest.mark.parametrize("kill_after", [6])
def test_kill_and_resume_is_bit_identical(full_run, tmp_path, kill_after):
    workdir_a, result_a = full_run
    workdir = str(tmp_path / "b")
    part = train(small_config(stop_after=kill_after), workdir)
    assert part["stopped"] and part["step"] == kill_after
    # The "killed" run logged step 6 but only checkpoint 4 exists; the restart redoes 5..12.
    assert Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 4
    rest = train(small_config(), workdir)
    assert rest["resumed_from"] == 4 and rest["step"] == STEPS
    assert_trees_equal(result_a["state"], rest["state"])
    rows_a, rows_b = read_rows(workdir_a), read_rows(workdir)
    assert rows_b == rows_a  # same steps, same full-precision values, no duplicates
    # Rerunning a finished run is a no-op that returns the same final state.
    again = train(small_config(), workdir)
    assert again["resumed_from"] == STEPS
    assert_trees_equal(result_a["state"], again["state"])


def test_nan_stops_and_keeps_last_good_checkpoint(full_run, tmp_path):
    workdir_a, _ = full_run
    workdir = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match=r"step 8\b"):
        train(small_config(debug_nan_at_step=8), workdir)  # a checkpoint step: must not save it
    ck = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ck.all_steps() == [4]
    assert max(r["step"] for r in read_rows(workdir)) < 8
    run = RunConfig.of(small_config())
    _, like, shardings = create_train_state(
        Llama(run.model, run.policy, rngs=nnx.Rngs(run.seed)),
        make_optimizer(run.optim, run.train.steps, seed=run.seed), make_mesh(), seed=run.seed)
    restored, meta = ck.restore(4, like, shardings)
    ref, _ = Checkpointer(os.path.join(workdir_a, "checkpoints")).restore(4, like, shardings)
    assert meta["step"] == 4 and meta["position"] == 4
    assert_trees_equal(ref, restored)


def test_corrupt_checkpoint_gives_clear_error(full_run, tmp_path):
    workdir_a, _ = full_run
    workdir = str(tmp_path / "corrupt")
    shutil.copytree(workdir_a, workdir)
    ckdir = os.path.join(workdir, "checkpoints")
    for dirpath, _, files in os.walk(os.path.join(ckdir, "12")):
        for name in files:
            with open(os.path.join(dirpath, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(CheckpointError, match=rf"{ckdir}.*12"):
        train(small_config(), workdir)


def test_mismatched_checkpoint_gives_clear_error(full_run, tmp_path):
    workdir_a, _ = full_run
    workdir = str(tmp_path / "mismatch")
    shutil.copytree(workdir_a, workdir)
    cfg = small_config()
    cfg.optim.master_spec = "bf16"  # adds optimizer state the checkpoint lacks
    with pytest.raises(CheckpointError, match=r"config .* changed.*optim\.master_spec"):
        train(cfg, workdir)  # the saved config.json catches it first
    os.remove(os.path.join(workdir, "config.json"))  # a workdir without one: the state check
    with pytest.raises(CheckpointError, match=r"does not match this run's state") as e:
        train(cfg, workdir)
    assert os.path.join(workdir, "checkpoints") in str(e.value)


def test_resume_with_changed_schedule_fails(full_run, tmp_path):
    workdir_a, _ = full_run
    workdir = str(tmp_path / "steps")
    shutil.copytree(workdir_a, workdir)
    with pytest.raises(CheckpointError, match=r"train\.steps: 12 -> 20"):
        train(small_config(steps=20), workdir)


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    return subprocess.run([sys.executable, "-m", "bitscale.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_cli_rejects_misspelt_override(tmp_path):
    proc = _cli(f"--config={ROOT / 'configs' / 'tiny.py'}", f"--workdir={tmp_path / 'x'}",
                "--config.optim.lrr=0.1", cwd=tmp_path)
    assert proc.returncode != 0
    assert "lrr" in proc.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_cli_runs_with_overrides(tmp_path):
    workdir = tmp_path / "cli"
    proc = _cli(f"--config={ROOT / 'configs' / 'tiny.py'}", f"--workdir={workdir}",
                "--config.train.steps=2", "--config.train.batch_size=2",
                "--config.train.checkpoint_every=1", "--config.optim.lr=0.01", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(str(workdir))
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["lr"] > 0


@pytest.mark.slow
def test_resume_bit_identical_with_quantized_policy_and_qat_optimizer(tmp_path):
    """MXFP4 policy (SR key threaded per step), bf16 SR master weights, per-path LR scales."""
    def cfg(**kw):
        c = small_config(**{"steps": 4, "checkpoint_every": 2, **kw})
        c.policy = "mxfp4"
        c.optim.master_spec = "bf16"
        c.optim.lr_scales = ((".*mlp.*", 0.5),)
        return c

    a = train(cfg(), str(tmp_path / "a"))
    train(cfg(stop_after=3), str(tmp_path / "b"))
    b = train(cfg(), str(tmp_path / "b"))
    assert b["resumed_from"] == 2
    assert_trees_equal(a["state"], b["state"])
    assert read_rows(str(tmp_path / "a")) == read_rows(str(tmp_path / "b"))
