"""RL rollouts, step and loop: REINFORCE equivalence of the step's gradient, MC-GRPO pivot
exclusion, a short seeded RL run that raises the reward, kill-and-resume bit-identical, the NaN
guard, a mismatched init checkpoint, a bf16 reference under an fp8 policy, and clear errors.

Everything starts from one module-scoped SFT checkpoint: the tiny Llama (configs/tiny.py sizes)
trained for 150 steps on 1-digit addition with compact worked steps (greedy accuracy ~0.7,
sampled reward ~0.55 on train prompts).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from bitscale import data as bdata
from bitscale import nn as bn
from bitscale import rl
from bitscale.config_file import load_module
from bitscale.train.checkpoint import Checkpointer, CheckpointError
from bitscale.train import restore_model, train
from bitscale.train.metrics import read_metrics
from tests.train.helpers import assert_trees_equal

ROOT = pathlib.Path(__file__).resolve().parents[2]

INF = math.inf
TOK = bdata.CharTokenizer()
DATA = dict(task="arithmetic", digits=1, ops=("+",), style="compact", split="train",
            max_prompt_len=24, max_len=48)


def _load(name: str):
    mod = load_module(ROOT / "configs" / f"{name}.py")
    return mod


def sft_config(steps: int = 150) -> ml_collections.ConfigDict:
    cfg = _load("tiny").get_config()
    with cfg.unlocked():
        for k, v in DATA.items():
            cfg.data[k] = v
    cfg.train.steps = steps
    cfg.train.checkpoint_every = 100000
    cfg.train.max_to_keep = 1
    cfg.train.progress = False
    cfg.optim.warmup_steps = 10
    return cfg


def rl_config(init: str, *, policy: str = "fp32", lr: float = 1e-4, seed: int = 0,
              **rl_overrides) -> ml_collections.ConfigDict:
    """The tiny model on 1-digit addition with an ``rl`` section (small defaults)."""
    base = _load("tiny").get_config()
    cfg = ml_collections.ConfigDict()
    cfg.model = base.model
    cfg.policy = policy
    cfg.seed = seed
    cfg.data = ml_collections.ConfigDict(DATA)
    cfg.mesh = ml_collections.ConfigDict(base.mesh.to_dict())
    cfg.optim = ml_collections.ConfigDict(base.optim.to_dict())
    cfg.optim.lr = lr
    cfg.optim.warmup_steps = 0            # constant lr from the first update
    cfg.optim.end_lr_ratio = 1.0
    cfg.optim.weight_decay = 0.0
    settings = dict(init_checkpoint=init, group_size=4, prompts_per_step=4, steps=4,
                    max_new_tokens=24, checkpoint_every=2, log_ref_kl=False, progress=False)
    settings.update(rl_overrides)
    cfg.rl = ml_collections.ConfigDict({**dataclasses.asdict(rl.RLConfig()), **settings})
    cfg.lock()
    return cfg


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> str:
    workdir = str(tmp_path_factory.mktemp("sft"))
    train(sft_config(), workdir)
    return workdir


@pytest.fixture(scope="module")
def sft_model(sft):
    model, _ = restore_model(sft, sft_config().model)
    return model


@pytest.fixture(scope="module")
def rollout_4x4(sft_model) -> rl.Rollout:
    """4 train prompts x 4 samples from the SFT model (shared: one sampler compilation)."""
    return sample_batch(sft_model, p=4, n=4)


def grad_capture() -> optax.GradientTransformation:
    """An optax transform whose state after an update is the gradient (params unchanged)."""
    return optax.GradientTransformation(
        lambda p: jax.tree.map(jnp.zeros_like, p),
        lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))


def sample_batch(model, p: int, n: int, seed: int = 0) -> rl.Rollout:
    task = bdata.Arithmetic(digits=1, ops=("+",), style="compact")
    examples = task.generate("train", p, seed)
    prompt, mask = rl.prompt_arrays(examples, TOK, 24)
    return rl.rollout(model, prompt, mask, examples, task, TOK,
                      config=rl.RolloutConfig(n=n, max_new_tokens=24), key=jax.random.key(seed))


def grad_step(model, config: rl.RLStepConfig):
    """``batch -> (gradient, metrics)`` of one jitted RL step at ``model``'s parameters."""
    graphdef, params = nnx.split(model, nnx.Param)
    tx = grad_capture()
    step = rl.make_rl_step(graphdef, tx, config)

    def run(batch: dict):
        state = rl.RLState(jax.tree.map(jnp.copy, params), tx.init(params), jnp.int32(0),
                           jax.random.key_data(jax.random.key(0)))
        new, metrics = step(state, None, {k: jnp.asarray(v) for k, v in batch.items()})
        return new.opt_state, metrics

    return run


# --------------------------------------------------------------------------------------------
# Rollout layout and the step


def test_teacher_forced_batch_layout():
    prompt = np.array([[0, 1, 7], [1, 8, 9]])
    pmask = (prompt != 0).astype(np.int32)
    toks = np.array([[[5, 2, 6], [4, 4, 4]], [[2, 6, 6], [3, 2, 0]]])     # [P=2, n=2, T=3]
    lp = -np.arange(1, 13, dtype=np.float32).reshape(2, 2, 3)
    lens = np.array([[2, 3], [1, 2]])
    b = rl.teacher_forced_batch(prompt, pmask, toks, lp, lens, pad_id=0)
    np.testing.assert_array_equal(b["tokens"], [[0, 1, 7, 5, 2, 0], [0, 1, 7, 4, 4, 4],
                                                [1, 8, 9, 2, 0, 0], [1, 8, 9, 3, 2, 0]])
    np.testing.assert_array_equal(b["attention_mask"], [[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1],
                                                        [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(b["completion_mask"], [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1],
                                                         [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0]])
    np.testing.assert_array_equal(b["sampler_logp"][0], [0, 0, 0, -1, -2, 0])
    with pytest.raises(ValueError, match=r"lengths \(2,\) must be \[P, n\]"):
        rl.teacher_forced_batch(prompt, pmask, toks, lp, lens[0], pad_id=0)


def test_step_gradient_equals_reinforce(sft_model, rollout_4x4):
    """eps = inf, beta = 0: the step's gradient is REINFORCE's -sum(A logp) / #tokens."""
    model = sft_model
    rewards = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    batch = dict(rollout_4x4.batch, rewards=rewards)
    config = rl.RLStepConfig(algorithm="grpo", group_size=4, use_ref=False,
                             loss=rl.PolicyLossConfig(eps_low=INF, eps_high=INF, beta=0.0))
    grads, metrics = grad_step(model, config)(batch)

    r = batch["rewards"].astype(np.float64)  # GRPO by hand: (r - mean) / (sample std + 1e-6)
    adv = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    adv = jnp.asarray(adv.reshape(-1), jnp.float32)
    tokens, attn = jnp.asarray(batch["tokens"]), jnp.asarray(batch["attention_mask"])
    mask = jnp.asarray(batch["completion_mask"][:, 1:], jnp.float32)
    graphdef, params = nnx.split(model, nnx.Param)

    def reinforce(p):
        logits = nnx.merge(graphdef, p)(tokens, attention_mask=attn)[:, :-1]
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[:, 1:, None], -1)[..., 0]
        return -jnp.sum(adv[:, None] * logp * mask) / jnp.sum(mask)

    want = jax.jit(jax.grad(reinforce))(params)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(want))
    assert scale > 0
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)
    assert float(metrics["clip_frac"]) == 0.0 and float(metrics["num_tokens"]) == float(mask.sum())
    assert float(metrics["mismatch_mean_abs_diff"]) < 1e-4  # sampler and trainer agree (fp32)


def test_mc_grpo_pivot_is_excluded(sft_model, rollout_4x4):
    """G = 2: 3 samples per prompt (rows regrouped from the shared rollout); the pivot's tokens
    do not touch the gradient."""
    model = sft_model
    rewards = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.2], [0.3, 0.9, 0.0]], np.float32)
    pivots = [2, 2, 0]  # the median of each row
    batch = {k: v[:9] for k, v in rollout_4x4.batch.items() if k != "rewards"}
    batch["rewards"] = rewards
    config = rl.RLStepConfig(algorithm="mc_grpo", group_size=2, use_ref=False)
    run = grad_step(model, config)
    grads, metrics = run(batch)
    assert float(metrics["num_seqs"]) == 3 * 2

    def corrupt(rows):
        b = {k: np.array(v) for k, v in batch.items()}
        rng = np.random.default_rng(0)
        for row in rows:
            on = b["completion_mask"][row] != 0
            b["tokens"][row, on] = rng.integers(3, 90, on.sum())
        return b

    same, _ = run(corrupt([3 * p + g for p, g in enumerate(pivots)]))
    assert_trees_equal(grads, same)
    other, _ = run(corrupt([0]))  # a non-pivot row does count
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(other)))


def test_with_policy_casts_and_copies(sft_model):
    ref = bn.with_policy(sft_model, "bf16")
    params = jax.tree.leaves(nnx.state(ref, nnx.Param))
    assert {str(x.dtype) for x in params} == {"bfloat16"}
    same = bn.with_policy(sft_model, "fp32")
    a, b = nnx.state(sft_model, nnx.Param), nnx.state(same, nnx.Param)
    assert_trees_equal(a, b)
    assert all(x.unsafe_buffer_pointer() != y.unsafe_buffer_pointer()
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --------------------------------------------------------------------------------------------
# The loop


def test_rl_raises_the_reward(sft, sft_model, tmp_path):
    """15 GRPO steps (16 prompts x 8 samples, 2 PPO epochs) raise the sampled reward on a fixed
    set of train prompts and sampling keys (common random numbers: 64 prompts x 8 samples)."""
    cfg = rl_config(sft, steps=15, prompts_per_step=16, group_size=8, ppo_epochs=2,
                    checkpoint_every=15)
    seen = []
    result = rl.train_rl(cfg, str(tmp_path / "rl"), on_step=lambda s, m: seen.append((s, m)))
    assert [s for s, _ in seen] == list(range(1, 16)) and not result["stopped"]
    for key in ("reward_mean", "accuracy", "mean_length", "truncation_rate", "loss", "grad_norm",
                "clip_frac", "clip_frac_low", "clip_frac_high", "kl_ref", "approx_kl", "lr",
                "mismatch_mean_abs_diff", "mismatch_max_abs_diff", "mismatch_kl_k3"):
        assert all(math.isfinite(m[key]) for _, m in seen), key
    assert max(m["clip_frac"] for _, m in seen) > 0  # the second epoch is clipped somewhere
    rows = read_metrics(str(tmp_path / "rl" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, 16))

    def fixed_reward(model) -> float:
        ro = sample_batch(model, p=64, n=8, seed=123)
        return ro.metrics()["reward_mean"]

    before, after = fixed_reward(sft_model), fixed_reward(result["model"])
    assert 0.1 < before < 0.8
    assert after > before + 0.03, (before, after)


def test_kill_and_resume_is_bit_identical(sft, tmp_path):
    def cfg(**kw):
        return rl_config(sft, eval_every=2, eval_problems=4, **kw)

    a = rl.train_rl(cfg(), str(tmp_path / "a"))
    assert Checkpointer(str(tmp_path / "a" / "checkpoints")).all_steps() == [2, 4]
    assert [s for s, _ in a["eval"]] == [0, 2, 4]
    workdir = str(tmp_path / "b")
    part = rl.train_rl(cfg(stop_after=3), workdir)
    assert part["stopped"] and part["step"] == 3
    rest = rl.train_rl(cfg(), workdir)
    assert rest["resumed_from"] == 2 and rest["step"] == 4
    assert_trees_equal(a["state"], rest["state"])
    rows_a = read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    assert rows_a == read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows_a] == [0, 1, 2, 3, 4] and "eval_accuracy" in rows_a[0]
    with pytest.raises(CheckpointError, match=r"rl\.group_size: 4 -> 2"):
        rl.train_rl(cfg(group_size=2), workdir)


def test_nan_stops_cleanly(sft, tmp_path):
    workdir = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match=r"step 4\b"):
        rl.train_rl(rl_config(sft, debug_nan_at_step=4), workdir)
    assert Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [2]
    assert max(r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))) < 4


def test_bf16_reference_under_fp8_policy_reports_mismatch(sft, tmp_path):
    seen = []
    rl.train_rl(rl_config(sft, policy="fp8", ref_policy="bf16", log_ref_kl=True, beta=0.04,
                          steps=1, checkpoint_every=1),
                str(tmp_path / "fp8"), on_step=lambda s, m: seen.append(m))
    assert len(seen) == 1
    first = seen[0]
    # Step 1: policy and reference hold the same parameters, so kl_ref > 0 is the precision gap.
    assert 0.0 < first["kl_ref"] < 1.0
    for k in ("mismatch_mean_abs_diff", "mismatch_max_abs_diff", "mismatch_kl_k3"):
        assert math.isfinite(first[k]) and first[k] >= 0.0, k
    assert first["mismatch_max_abs_diff"] >= first["mismatch_mean_abs_diff"]


def test_init_checkpoint_that_does_not_match_the_model(sft, tmp_path):
    def wrong_model(init):
        cfg = rl_config(init)
        with cfg.unlocked():
            cfg.model = dataclasses.replace(cfg.model, hidden_size=256)
        return cfg

    with pytest.raises(CheckpointError, match=r"another model.*hidden_size: 128.*256"):
        rl.train_rl(wrong_model(sft), str(tmp_path / "a"))
    bare = str(tmp_path / "bare_checkpoints")   # no config.json: the state check catches it
    shutil.copytree(os.path.join(sft, "checkpoints"), bare)
    with pytest.raises(CheckpointError, match=r"does not match the requested \.params"):
        rl.train_rl(wrong_model(bare), str(tmp_path / "b"))


# --------------------------------------------------------------------------------------------
# Errors, configs, launcher


@pytest.mark.parametrize("overrides, match", [
    ({"group_size": 1}, r"group_size=1: grpo needs at least 2"),
    ({"algorithm": "mc_grpo", "group_size": 3}, r"mc_grpo samples G\+1=4 .* odd"),
    ({"algorithm": "ppo"}, r"algorithm='ppo' is unknown; accepted: \['grpo', 'drgrpo'"),
    ({"reward": "fuzzy"}, r"reward='fuzzy' is unknown; accepted: \['binary', 'graded'\]"),
    ({"aggregation": "sum"}, r"aggregation='sum' is unknown"),
    ({"ref_policy": "fp3"}, r"unknown precision policy 'fp3'"),
    ({"ppo_epochs": 0}, r"rl.ppo_epochs must be >= 1"),
])
def test_bad_settings_fail_clearly(overrides, match):
    with pytest.raises(ValueError, match=match):
        rl.read_rl_config(rl_config("", **overrides))


def test_unknown_rl_key_and_step_config_errors():
    cfg = rl_config("")
    with cfg.unlocked():
        cfg.rl.group = 3
    with pytest.raises(ValueError, match=r"unknown cfg.rl keys \['group'\]"):
        rl.read_rl_config(cfg)
    with pytest.raises(ValueError, match=r"G=1: grpo needs at least 2"):
        rl.RLStepConfig(algorithm="grpo", group_size=1)
    with pytest.raises(ValueError, match=r"G\+1=6 rollouts .* odd"):
        rl.RLStepConfig(algorithm="mc_grpo", group_size=5)
    with pytest.raises(ValueError, match=r"unknown RL algorithm 'reinforce'"):
        rl.RLStepConfig(algorithm="reinforce")
    with pytest.raises(ValueError, match=r"unknown reward 'exact'"):
        rl.reward_function("exact", bdata.Arithmetic())


def test_rewards_that_do_not_match_the_rollouts(sft_model, rollout_4x4):
    ro = rollout_4x4
    with pytest.raises(ValueError, match=r"rewards shape \(3, 2\) does not match the rollouts"):
        rl.check_rewards(np.zeros((3, 2), np.float32), ro.batch)
    graphdef, params = nnx.split(sft_model, nnx.Param)
    tx = optax.sgd(0.1)
    step = rl.make_rl_step(graphdef, tx, rl.RLStepConfig(group_size=4, use_ref=False), jit=False)
    state = rl.RLState(params, tx.init(params), jnp.int32(0),
                       jax.random.key_data(jax.random.key(0)))
    bad = dict(ro.batch, rewards=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"rewards shape \(2, 4\) does not match the rollouts: "
                                         r"expected \[P, 4\]"):
        step(state, None, bad)


def test_shipped_configs():
    got = {}
    for name in ("grpo_arith", "drgrpo_arith", "mcgrpo_arith"):
        cfg = _load(name).get_config()
        s = rl.read_rl_config(cfg)
        got[name] = (s.algorithm, s.aggregation, s.beta)
        assert s.init_checkpoint == "" and s.step_config().samples_per_prompt >= 2
        assert bdata.make_task(cfg.data).name == "arithmetic"
        with pytest.raises(AttributeError):
            cfg.rl.not_a_key = 1  # locked
    assert got == {"grpo_arith": ("grpo", "sequence_mean", 0.04),
                   "drgrpo_arith": ("drgrpo", "constant_length", 0.0),
                   "mcgrpo_arith": ("mc_grpo", "sequence_mean", 0.04)}


def test_cli_rejects_misspelt_key(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    proc = subprocess.run(
        [sys.executable, "-m", "bitscale.rl", f"--config={ROOT / 'configs' / 'grpo_arith.py'}",
         f"--workdir={tmp_path / 'x'}", "--config.rl.group_sise=4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert "group_sise" in proc.stderr
    assert not (tmp_path / "x").exists()
