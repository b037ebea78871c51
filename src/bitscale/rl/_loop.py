"""The RL loop: `train_rl(config, workdir)` samples, scores and updates, resumably.

Each step ``s`` (1-based) takes the next ``rl.prompts_per_step`` prompts of the task's train split
(a deterministic, resumable stream position), samples G completions of each with the current
policy (`bitscale.rl.rollout`; G + 1 for MC-GRPO), scores them with the task's verifier and runs
the jitted RL step (`bitscale.rl.make_rl_step`). Habits of `bitscale.train.train`: the state is
donated; metrics of step ``s`` reach the host after step ``s + 1`` is dispatched (and before
every checkpoint); a non-finite loss or gradient norm stops the run naming the step, before
anything containing it is saved; checkpoints hold the whole state plus the prompt position, so a
killed run restarted with the same command ends bit-identical to an uninterrupted one; a resumed
run whose config changed is refused.

Start: ``rl.init_checkpoint`` is a `bitscale.train` workdir (its ``config.json`` says how its
optimizer state is laid out; its model must be ``cfg.model``). The policy starts from its
parameters cast to ``cfg.policy``'s dtype, the frozen reference from the same parameters cast
to ``rl.ref_policy``'s (which may be another precision, e.g. a bf16 reference for an fp8
policy). An empty ``init_checkpoint`` starts from a random initialisation (with a warning).

Sampling key of step ``s``: ``fold_in(fold_in(key(seed), _ROLLOUT_STREAM), s)``.

References:
  Shao et al., "DeepSeekMath" (GRPO), arXiv:2402.03300.
  Schulman et al., "Proximal Policy Optimization Algorithms", arXiv:1707.06347.
  nanodo (https://github.com/google-deepmind/nanodo): pure jitted step, metrics one step late.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bitscale import data as bdata
from bitscale import nn as bnn
from bitscale.rl._losses import AGGREGATIONS, KL_ESTIMATORS, PolicyLossConfig
from bitscale.rl._rollout import REWARDS, RolloutConfig, rollout
from bitscale.rl._step import ALGORITHMS, RLState, RLStepConfig, make_rl_step
from bitscale.train import StepDriver, evaluate
from bitscale.train.checkpoint import CheckpointError, Checkpointer
from bitscale.train.loop import (
    check_resume_config,
    create_train_state,
    make_mesh,
    make_schedule,
    make_task,
    restore_model,
)
from bitscale.train.metrics import MetricsWriter, Progress

__all__ = ["RL_DEFAULTS", "RLSettings", "rl_settings", "train_rl"]

_ROLLOUT_STREAM = 0x524F4C4C  # fold_in constant of the sampling keys
# Jitted steps of recent runs, keyed by everything they depend on (graphs, step settings, the
# optimizer config, shardings): a run resumed in the same process does not recompile.
_STEP_CACHE: dict = {}
_STEP_CACHE_SIZE = 4

# Every key of the ``cfg.rl`` section with its default.
RL_DEFAULTS: dict[str, Any] = {
    "algorithm": "grpo", "group_size": 8, "prompts_per_step": 8, "steps": 100, "ppo_epochs": 1,
    "eps_low": 0.2, "eps_high": 0.2, "beta": 0.0, "kl_estimator": "k3",
    "aggregation": "token_mean", "ref_policy": "", "log_ref_kl": True, "reward": "binary",
    "truncation_reward": 0.0, "strategy": "temperature:1.0", "max_new_tokens": 32,
    "chunk_size": 0, "init_checkpoint": "", "eval_every": 0, "eval_problems": 64,
    "checkpoint_every": 50, "max_to_keep": 2, "log_every": 1, "stop_after": 0,
    "debug_nan_at_step": 0, "progress": True,
}
# ``cfg.rl`` keys that may change between a run and its resumption (they do not change the state).
RESUMABLE_RL_KEYS = ("stop_after", "progress", "log_every", "checkpoint_every", "max_to_keep",
                     "debug_nan_at_step")


@dataclasses.dataclass(frozen=True)
class RLSettings:
    """The validated ``cfg.rl`` section (see `RL_DEFAULTS` for the keys and configs/grpo_arith.py
    for what each means)."""

    algorithm: str
    group_size: int
    prompts_per_step: int
    steps: int
    ppo_epochs: int
    eps_low: float
    eps_high: float
    beta: float
    kl_estimator: str
    aggregation: str
    ref_policy: Any
    log_ref_kl: bool
    reward: str
    truncation_reward: float
    strategy: str
    max_new_tokens: int
    chunk_size: int
    init_checkpoint: str
    eval_every: int
    eval_problems: int
    checkpoint_every: int
    max_to_keep: int
    log_every: int
    stop_after: int
    debug_nan_at_step: int
    progress: bool

    def step_config(self) -> RLStepConfig:
        loss = PolicyLossConfig(eps_low=float(self.eps_low), eps_high=float(self.eps_high),
                                beta=float(self.beta), kl_estimator=self.kl_estimator,
                                aggregation=self.aggregation, max_len=int(self.max_new_tokens))
        return RLStepConfig(algorithm=self.algorithm, group_size=int(self.group_size),
                            ppo_epochs=int(self.ppo_epochs), loss=loss,
                            use_ref=bool(self.beta > 0 or self.log_ref_kl),
                            debug_nan_at_step=int(self.debug_nan_at_step))

    def rollout_config(self) -> RolloutConfig:
        return RolloutConfig(n=self.step_config().samples_per_prompt, strategy=self.strategy,
                             max_new_tokens=int(self.max_new_tokens), reward=self.reward,
                             truncation_reward=float(self.truncation_reward),
                             chunk_size=int(self.chunk_size) or None)


def rl_settings(cfg) -> RLSettings:
    """`RLSettings` of ``cfg.rl`` (absent keys take `RL_DEFAULTS`), validated.

    Raises:
      ValueError: no ``rl`` section, an unknown key, an unknown algorithm / reward / KL estimator /
        aggregation / sampling strategy / precision policy, G < 2, an even G + 1 for MC-GRPO, or a
        count out of range; the message names the value and what is accepted.
    """
    section = cfg.get("rl", None) if hasattr(cfg, "get") else None
    if section is None:
        raise ValueError("the config has no `rl` section (see configs/grpo_arith.py)")
    unknown = sorted(set(section.keys()) - set(RL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown cfg.rl keys {unknown}; valid: {sorted(RL_DEFAULTS)}")
    v = dict(RL_DEFAULTS)
    v.update({k: section[k] for k in section.keys()})
    if v["algorithm"] not in ALGORITHMS:
        raise ValueError(f"rl.algorithm={v['algorithm']!r} is unknown; accepted: "
                         f"{list(ALGORITHMS)}")
    if v["reward"] not in REWARDS:
        raise ValueError(f"rl.reward={v['reward']!r} is unknown; accepted: {list(REWARDS)}")
    if v["kl_estimator"] not in KL_ESTIMATORS:
        raise ValueError(f"rl.kl_estimator={v['kl_estimator']!r} is unknown; accepted: "
                         f"{list(KL_ESTIMATORS)}")
    if v["aggregation"] not in AGGREGATIONS:
        raise ValueError(f"rl.aggregation={v['aggregation']!r} is unknown; accepted: "
                         f"{list(AGGREGATIONS)}")
    for k, lo in (("group_size", None), ("prompts_per_step", 1), ("steps", 1), ("ppo_epochs", 1),
                  ("max_new_tokens", 1), ("chunk_size", 0), ("eval_every", 0),
                  ("eval_problems", 1), ("checkpoint_every", 1), ("max_to_keep", 1),
                  ("log_every", 1), ("stop_after", 0), ("debug_nan_at_step", 0)):
        x = v[k]
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
            raise ValueError(f"rl.{k} must be an int, got {x!r}")
        if lo is not None and x < lo:
            raise ValueError(f"rl.{k} must be >= {lo}, got {x}")
        v[k] = int(x)
    if v["group_size"] < 2:
        raise ValueError(f"rl.group_size={v['group_size']}: {v['algorithm']} needs at least 2 "
                         f"rollouts per prompt (its advantages are relative to the group)")
    if v["algorithm"] == "mc_grpo" and v["group_size"] % 2:
        g = v["group_size"]
        raise ValueError(f"rl.group_size={g}: mc_grpo samples G+1={g + 1} rollouts per prompt "
                         f"and needs G+1 odd (the median rollout is the pivot); use an even "
                         f"group_size such as {g - 1} or {g + 1}")
    if not v["ref_policy"]:
        v["ref_policy"] = cfg.policy
    bnn.resolve_policy(v["ref_policy"])
    bnn.resolve_policy(cfg.policy)
    for k in ("eps_low", "eps_high", "beta", "truncation_reward"):
        v[k] = float(v[k])
    s = RLSettings(**v)
    s.step_config()
    s.rollout_config()
    return s


def _resume_view(cfg):
    """A copy of ``cfg`` without the `RESUMABLE_RL_KEYS` (compared by `check_resume_config`)."""
    view = cfg.copy_and_resolve_references() if hasattr(cfg, "copy_and_resolve_references") \
        else ml_collections.ConfigDict(cfg)
    with view.unlocked():
        for k in RESUMABLE_RL_KEYS:
            if k in view.rl:
                del view.rl[k]
    return view


def optimizer_config(cfg, s: RLSettings) -> ml_collections.ConfigDict:
    """The config `bitscale.train.make_optimizer` reads for RL: ``cfg.optim`` with the schedule
    running over ``rl.steps * rl.ppo_epochs`` optimizer updates."""
    c = ml_collections.ConfigDict()
    c.model = cfg.model
    c.policy = cfg.policy
    c.seed = int(cfg.seed)
    c.optim = ml_collections.ConfigDict(cfg.optim.to_dict())
    c.train = ml_collections.ConfigDict({"steps": int(s.steps * s.ppo_epochs)})
    if cfg.get("mesh", None) is not None:
        c.mesh = cfg.mesh
    return c


def _sft_config(cfg, directory: str) -> ml_collections.ConfigDict:
    """The config whose state layout `restore_model` expects for the SFT run in ``directory``:
    ``cfg.model``, and the run's own policy and optimizer from its ``config.json`` (else
    ``cfg``'s)."""
    c = ml_collections.ConfigDict()
    c.model, c.policy, c.seed = cfg.model, cfg.policy, int(cfg.seed)
    optim = cfg.optim.to_dict() if cfg.get("optim", None) is not None else {}
    train_steps = 1
    root = directory
    if os.path.basename(os.path.normpath(directory)) == "checkpoints":
        root = os.path.dirname(os.path.normpath(directory))
    path = os.path.join(root, "config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                flat = json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read the init run's config {path}: {e}") from e
        if isinstance(flat.get("policy"), str):
            c.policy = flat["policy"]
        optim.update({k[len("optim."):]: val for k, val in flat.items()
                      if k.startswith("optim.")})
        train_steps = int(flat.get("train.steps", 1))
        model = dataclasses.asdict(cfg.model) if dataclasses.is_dataclass(cfg.model) else {}
        diff = [f"{k}: {flat[f'model.{k}']!r} (checkpoint) vs {val!r} (cfg.model)"
                for k, val in model.items()
                if isinstance(val, (int, float, str, bool)) and f"model.{k}" in flat
                and flat[f"model.{k}"] != val]
        if diff:
            raise CheckpointError(f"rl.init_checkpoint {directory} holds another model than "
                                  f"cfg.model: {'; '.join(diff[:6])}")
    if "lr_scales" in optim:
        optim["lr_scales"] = tuple(tuple(x) for x in optim["lr_scales"] or ())
    c.optim = ml_collections.ConfigDict(optim)
    c.train = ml_collections.ConfigDict({"steps": max(train_steps, 1)})
    if cfg.get("mesh", None) is not None:
        c.mesh = cfg.mesh
    return c


def initial_model(cfg, s: RLSettings, mesh: Mesh) -> nnx.Module:
    """The starting model: ``rl.init_checkpoint``'s (its own policy), else a random init."""
    if not s.init_checkpoint:
        logging.warning("rl.init_checkpoint is empty: RL starts from a RANDOM initialisation "
                        "(seed %d); rewards will stay near zero on most tasks. Train one first, "
                        "e.g. python -m bitscale.train --config=configs/demo.py "
                        "--workdir=runs/sft", int(cfg.seed))
        return bnn.Llama(cfg.model, cfg.policy, rngs=nnx.Rngs(int(cfg.seed)))
    sft = _sft_config(cfg, s.init_checkpoint)
    model, step = restore_model(sft, s.init_checkpoint, mesh=mesh)
    logging.info("RL starts from %s (step %d, policy %s)", s.init_checkpoint, step, sft.policy)
    return model


def train_rl(config, workdir: str, *, mesh: Mesh | None = None,
             on_step: Callable[[int, dict], None] | None = None,
             init_model: nnx.Module | None = None, task: Any = None,
             tokenizer: bdata.Tokenizer | None = None) -> dict:
    """RL-trains (or resumes) the run in ``workdir``; returns the final state and last metrics.

    Args:
      config: a locked ConfigDict with ``model``, ``policy``, ``seed``, ``data``, ``optim``,
        optionally ``mesh``, and ``rl`` (`RL_DEFAULTS`; e.g. configs/grpo_arith.py).
      workdir: run directory: ``checkpoints/``, ``metrics.jsonl``, ``tb/``, ``config.json``.
      on_step: ``on_step(step, metrics)`` as each step's metrics reach the host (one step late);
        metrics are floats: the step's (`make_rl_step`) and the rollout's (``reward_mean``,
        ``accuracy``, ``mean_length``, ``truncation_rate``, ...; `Rollout.metrics`), plus
        ``eval_accuracy`` (greedy, held-out) every ``rl.eval_every`` steps.
      init_model: start from this model's parameters instead of ``rl.init_checkpoint`` (any
        precision; they are cast to the policy's and the reference's dtypes).
      task, tokenizer: override ``make_task(cfg)`` and the `bitscale.data.CharTokenizer`.
    Returns:
      dict with ``step``, ``state`` (`RLState`), ``metrics`` (last step's), ``stopped`` (True if
      ``rl.stop_after`` cut the run short), ``resumed_from`` (checkpoint step or None),
      ``model`` (the policy `Llama` with the final parameters) and ``eval`` (list of
      ``(step, held-out accuracy)``, step 0 for the starting model; this run's only).
    Raises:
      FloatingPointError: a non-finite loss or gradient norm, naming the step; nothing containing
        it is saved.
      bitscale.train.checkpoint.CheckpointError: a corrupt or mismatched checkpoint, an init
        checkpoint that does not match ``cfg.model``, or a resumed run whose config changed.
      ValueError: an invalid ``rl`` section (`rl_settings`).
    """
    cfg = config
    s = rl_settings(cfg)
    step_cfg, ro_cfg = s.step_config(), s.rollout_config()
    mesh = mesh if mesh is not None else make_mesh(cfg)
    task = task if task is not None else make_task(cfg)
    tok = tokenizer if tokenizer is not None else bdata.CharTokenizer()
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=s.max_to_keep)
    driver = None
    try:
        resumed = ckpt.latest_step()
        check_resume_config(_resume_view(cfg), workdir, resuming=resumed is not None)
        start_model = None  # the init model: the policy's start, the reference's parameters
        if init_model is not None:
            start_model = init_model
        elif resumed is None or step_cfg.use_ref:
            start_model = initial_model(cfg, s, mesh)
        opt_cfg = optimizer_config(cfg, s)
        graphdef, tx, like, sh = create_train_state(opt_cfg, mesh)
        like, sh = RLState(*like), RLState(*sh)
        start, position = 0, 0
        if resumed is None:
            policy_model = bnn.with_policy(start_model, cfg.policy)
            params = jax.device_put(nnx.state(policy_model, nnx.Param), sh.params)
            state = RLState(params, jax.device_put(tx.init(params), sh.opt_state), like.step,
                            like.rng)
        else:
            state, meta = ckpt.restore(resumed, like, sh)
            start, position = int(meta["step"]), int(meta["position"])
            logging.info("resumed from %s at step %d (prompt position %d)", ckpt.directory,
                         start, position)
        del like
        ref_graphdef = ref_params = ref_sh = None
        if step_cfg.use_ref:
            ref = bnn.shard_model(bnn.with_policy(start_model, s.ref_policy), mesh)
            ref_graphdef, ref_params = nnx.split(ref, nnx.Param)
            ref_sh = jax.tree.map(lambda x: x.sharding, ref_params)
        rows = s.prompts_per_step * ro_cfg.n
        row_sh = NamedSharding(mesh, bnn.batch_spec(mesh, rows))
        replicated = NamedSharding(mesh, P())
        batch_sh = {"tokens": row_sh, "attention_mask": row_sh, "completion_mask": row_sh,
                    "sampler_logp": row_sh, "rewards": replicated}
        shardings = (sh, ref_sh, batch_sh)
        key = (graphdef, ref_graphdef, step_cfg,
               json.dumps([opt_cfg.optim.to_dict(), opt_cfg.train.steps, opt_cfg.seed],
                          sort_keys=True, default=repr),
               jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings)))
        step_fn = _STEP_CACHE.pop(key, None) or make_rl_step(
            graphdef, tx, step_cfg, ref_graphdef=ref_graphdef, schedule=make_schedule(opt_cfg),
            shardings=shardings)
        _STEP_CACHE[key] = step_fn
        while len(_STEP_CACHE) > _STEP_CACHE_SIZE:
            _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
        writer = MetricsWriter(workdir, resume_step=start)
        driver = StepDriver("RL", total=s.steps, ckpt=ckpt, on_step=on_step, writer=writer,
                            progress=Progress(s.steps, start, enabled=s.progress,
                                              keys=("loss", "reward_mean")),
                            log_every=s.log_every, checkpoint_every=s.checkpoint_every,
                            stop_after=s.stop_after, always_log=("eval_accuracy",))
        stream = bdata.batches(task, cfg.data.split, s.prompts_per_step, int(cfg.seed), tok,
                               max_prompt_len=cfg.data.max_prompt_len, max_len=cfg.data.max_len,
                               start=position, loss_on="answer")
        eval_examples = (task.generate("test", s.eval_problems, int(cfg.seed))
                         if s.eval_every else [])
        rollout_key = jax.random.fold_in(jax.random.key(int(cfg.seed)), _ROLLOUT_STREAM)
        evals: list[tuple[int, float]] = []

        def held_out(params) -> float:
            acc = evaluate.accuracy(nnx.merge(graphdef, params), eval_examples, task, tok,
                                    batch_size=min(64, len(eval_examples)),
                                    max_prompt_len=cfg.data.max_prompt_len,
                                    max_new_tokens=s.max_new_tokens)
            return float(acc["accuracy"])

        if s.eval_every and start == 0:
            evals.append((0, held_out(state.params)))
            writer.write(0, {"eval_accuracy": evals[-1][1]})
        step = start
        for step in range(start + 1, s.steps + 1):
            batch = next(stream)
            ro = rollout(nnx.merge(graphdef, state.params), batch.arrays["prompt"],
                         batch.arrays["prompt_mask"], batch.examples, task, tok, config=ro_cfg,
                         key=jax.random.fold_in(rollout_key, step))
            host = ro.metrics()
            state, m_dev = step_fn(state, ref_params, ro.batch)
            driver.submit(step, m_dev, host)  # drains step - 1; host is read when step drains
            if s.eval_every and (step % s.eval_every == 0 or step == s.steps):
                host["eval_accuracy"] = held_out(state.params)
                evals.append((step, host["eval_accuracy"]))
            if driver.end_step(step, state, {"position": batch.next_position}):
                break
        driver.finish()
    finally:
        if driver is not None:
            driver.close()
        else:
            ckpt.close()
    return {"step": step, "state": state, "metrics": dict(driver.last), "stopped": driver.stopped,
            "resumed_from": resumed, "model": nnx.merge(graphdef, state.params), "eval": evals}

