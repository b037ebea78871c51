"""Train-loop options: the DCO and Masked Thought losses selected from the config, the tasks
wired into the loop, the mesh from the config, and validation of the ``loss`` section.

The step's reported loss is checked against an independent float64 numpy computation from the
model's logits (log-softmax by hand, DCO as ``-log(-expm1(N log1p(-p)))``).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale.config_file import load_module
from bitscale import train as T
from bitscale.train import train
from bitscale.train._step import BATCH_FIELDS
from bitscale.train.metrics import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(**loss):
    mod = load_module(ROOT / "configs" / "tiny.py")
    cfg = mod.get_config()
    cfg.train.batch_size = 4
    cfg.train.steps = 10
    cfg.train.progress = False
    cfg.optim.warmup_steps = 2
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    return cfg


def first_step(cfg):
    """(reported loss of step 1, float64 per-sequence answer log-probs, token count)."""
    run = T.RunConfig.of(cfg)
    mesh = run.mesh.make()
    tx = T.make_optimizer(run.optim, run.train.steps)
    graphdef, state, shardings = T.create_train_state(
        bnn.Llama(run.model, run.policy, rngs=nnx.Rngs(run.seed)), tx, mesh)
    params = jax.tree.map(np.asarray, jax.device_get(state.params))  # before donation
    step = T.make_train_step(graphdef, tx, T.make_schedule(run.optim, run.train.steps),
                             loss=run.loss, train=run.train, state_shardings=shardings,
                             mesh=mesh)
    batch = next(bdata.batches(bdata.make_task(cfg.data), "train", cfg.train.batch_size, 0,
                               bdata.CharTokenizer(), max_prompt_len=cfg.data.max_prompt_len,
                               max_len=cfg.data.max_len))
    _, metrics = step(state, {k: np.asarray(batch.arrays[k])[None] for k in BATCH_FIELDS})
    model = nnx.merge(graphdef, params)
    a = batch.arrays
    logits = np.asarray(model(a["tokens"], attention_mask=a["full_mask"]), np.float64)[:, :-1]
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    tgt = a["tokens"][:, 1:]
    picked = np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
    m = a["loss_mask"][:, 1:].astype(np.float64)
    return float(metrics["loss"]), (picked * m).sum(-1), m.sum()


def test_ce_loss_is_token_mean():
    loss, seq_logp, n_tok = first_step(tiny_config())
    np.testing.assert_allclose(loss, -seq_logp.sum() / n_tok, rtol=2e-5)


@pytest.mark.parametrize("n", [1, 4])
def test_dco_loss_matches_formula(n):
    loss, seq_logp, _ = first_step(tiny_config(kind="dco", dco_n=n))
    p = np.exp(seq_logp)  # tiny at init; float64 keeps it
    want = -np.log(-np.expm1(n * np.log1p(-p)))
    np.testing.assert_allclose(loss, want.mean(), rtol=2e-5)
    if n == 1:
        np.testing.assert_allclose(loss, -seq_logp.mean(), rtol=2e-5)  # DCO(N=1) is CE


def test_masked_thought_changes_inputs_and_ramps_from_zero():
    base, _, _ = first_step(tiny_config())
    masked, _, _ = first_step(tiny_config(masked_thought_rate=0.5))
    ramped, _, _ = first_step(tiny_config(masked_thought_rate=0.5, masked_thought_ramp=0.5))
    assert masked != base  # half the answer inputs replaced: a different loss
    assert ramped == base  # the ramp starts at rate 0 on the first step


def test_short_dco_run_with_masked_thought_learns(tmp_path):
    cfg = tiny_config(kind="dco", dco_n=4, masked_thought_rate=0.2, masked_thought_ramp=0.5)
    cfg.train.steps = 12
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = 100
    out = train(cfg, str(tmp_path))
    assert out["step"] == 12 and np.isfinite(out["metrics"]["loss"])
    rows = [r["loss"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))]
    assert rows[-1] < rows[0]


@pytest.mark.parametrize("task,cls,extra", [
    ("countdown", bdata.Countdown, {"n_numbers": 3}),
    ("modular", bdata.ModularArithmetic, {"modulus": 13}),
    ("arithmetic", bdata.Arithmetic, {"digits": 2})])
def test_tasks_from_config(task, cls, extra):
    cfg = tiny_config()
    with cfg.unlocked():
        cfg.data.task = task
        for k, v in extra.items():
            cfg.data[k] = v
    t = bdata.make_task(cfg.data)
    assert isinstance(t, cls)
    for k, v in extra.items():
        assert getattr(t, k) == v


def test_countdown_trains_in_the_loop(tmp_path):
    cfg = tiny_config()
    with cfg.unlocked():
        cfg.data.task = "countdown"
        cfg.data.n_numbers = 3
        cfg.data.max_prompt_len = 112
        cfg.data.max_len = 192
    cfg.train.steps = 2
    out = train(cfg, str(tmp_path))
    assert out["step"] == 2 and np.isfinite(out["metrics"]["loss"])


def test_bad_loss_and_task_settings(tmp_path):
    with pytest.raises(ValueError, match=r"loss.kind .*\('ce', 'dco'\).*'dcoo'"):
        T.RunConfig.of(tiny_config(kind="dcoo"))
    with pytest.raises(ValueError, match=r"dco_n must be >= 1, got 0"):
        T.RunConfig.of(tiny_config(kind="dco", dco_n=0))
    with pytest.raises(ValueError, match=r"masked_thought_rate must be in \[0, 1\), got 1.5"):
        T.RunConfig.of(tiny_config(masked_thought_rate=1.5))
    cfg = tiny_config()
    cfg.data.task = "sudoku"
    with pytest.raises(ValueError, match=r"data.task must be one of .*'sudoku'"):
        train(cfg, str(tmp_path))


def test_mesh_from_config():
    cfg = tiny_config()
    mesh = T.RunConfig.of(cfg).mesh.make()
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    cfg.mesh.tensor = 3
    with pytest.raises(ValueError, match="devices"):
        T.RunConfig.of(cfg).mesh.make()


def test_restore_model_from_a_run(tmp_path):
    cfg = tiny_config()
    cfg.train.steps = 2
    out = train(cfg, str(tmp_path))
    model, step = T.restore_model(str(tmp_path), cfg.model)
    assert step == 2
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                    jax.tree.leaves(out["state"].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    bf, _ = T.restore_model(str(tmp_path / "checkpoints"), cfg.model, "bf16")
    assert bf.policy.name == "bf16"
    assert {str(x.dtype) for x in jax.tree.leaves(nnx.state(bf, nnx.Param))} == {"bfloat16"}
    with pytest.raises(T.CheckpointError, match=r"no checkpoint for step 7 .*available: \[2\]"):
        T.restore_model(str(tmp_path), cfg.model, step=7)
    with pytest.raises(T.CheckpointError, match="does not exist"):
        T.restore_model(str(tmp_path / "missing"), cfg.model)
    # a model config other than the run's is named, not restored into garbage
    other = dataclasses.replace(cfg.model, num_layers=3)
    with pytest.raises(T.CheckpointError, match=r"num_layers: 2 \(run\) vs 3 \(given\)"):
        T.restore_model(str(tmp_path), other)


def test_config_selects_a_policy_registered_by_the_config_file(tmp_path):
    cfg = tiny_config()  # configs/tiny.py registers W4A4_MLP_FP8_ATTN at import
    cfg.policy = "w4a4_mlp_fp8_attn"
    cfg.train.steps = 2
    out = train(cfg, str(tmp_path))
    assert np.isfinite(out["metrics"]["loss"])
    model, _ = T.restore_model(str(tmp_path), cfg.model)
    assert model.policy.name == "w4a4_mlp_fp8_attn"
    assert model.layers[0].mlp.up_proj.rule.weight.name == "mxfp4"
