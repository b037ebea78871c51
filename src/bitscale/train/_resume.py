"""Resuming runs and reading trained models back: the config-change check and `restore_model`.

A run that starts from scratch writes its flattened config to ``<workdir>/config.json``; a
resumed run is compared against it (`check_resume_config`), and `restore_model` reads the trained
parameters of any run (supervised or RL) without rebuilding its optimizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bitscale import nn as bnn
from bitscale.train.checkpoint import CheckpointError, Checkpointer

__all__ = ["RESUMABLE_KEYS", "check_resume_config", "flat_config", "restore_model",
           "saved_config"]

# Config keys of a supervised run that may change between a run and its resumption (they do not
# change the result).
RESUMABLE_KEYS = ("train.stop_after", "train.progress", "train.log_every",
                  "train.checkpoint_every", "train.max_to_keep", "train.debug_nan_at_step")
_ABSENT = "<absent>"


def _plain(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict) or hasattr(x, "items"):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def flat_config(cfg: Any) -> dict[str, Any]:
    """``cfg`` (a ConfigDict, mapping or dataclass) as JSON-able ``{"section.key": value}``."""
    return _flatten(_plain(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg))


def _root(workdir: str) -> str:
    if os.path.basename(os.path.normpath(workdir)) == "checkpoints":
        return os.path.dirname(os.path.normpath(workdir))
    return workdir


def saved_config(workdir: str) -> dict[str, Any] | None:
    """The flat config a run in ``workdir`` (or its ``checkpoints`` directory) started with, or
    None if it wrote none. Raises `CheckpointError` if the file exists but does not parse."""
    path = os.path.join(_root(workdir), "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the saved run config {path}: {e}") from e


def check_resume_config(cfg: Any, workdir: str, resuming: bool, *,
                        resumable: Sequence[str] = RESUMABLE_KEYS) -> None:
    """Refuses to resume a run whose config changed in a key not in ``resumable``.

    A run that starts from scratch (or has no ``config.json``) writes ``<workdir>/config.json``;
    a resumed run compares against it, so e.g. changing ``train.steps`` (which reshapes the LR
    schedule) or the policy fails instead of silently giving a different run. Delete the file to
    resume deliberately with a new config (it is then rewritten).
    """
    path = os.path.join(workdir, "config.json")
    now = flat_config(cfg)
    before = saved_config(workdir) if resuming else None
    if before is None:
        with open(path, "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
        return
    diff = sorted(k for k in set(before) | set(now)
                  if k not in resumable and before.get(k, _ABSENT) != now.get(k, _ABSENT))
    if diff:
        shown = ", ".join(f"{k}: {before.get(k, _ABSENT)!r} -> {now.get(k, _ABSENT)!r}"
                          for k in diff[:8])
        raise CheckpointError(f"the config of {workdir} changed since the run started ({shown}); "
                              f"resume with the original config, use a new workdir, or delete "
                              f"{path} to resume anyway (keys that may change: {list(resumable)})")


def restore_model(workdir: str, model: bnn.ModelConfig, policy: Any = None, *,
                  step: int | None = None, trained_policy: Any = None,
                  mesh: Mesh | None = None) -> tuple[nnx.Module, int]:
    """The trained `Llama` of a `bitscale.train` or `bitscale.rl` run: ``(model, step)``.

    Only the parameters are read (the checkpoint's optimizer state is skipped), so the run's
    optimizer config is not needed.

    Args:
      workdir: the run directory (``<workdir>/checkpoints``) or the checkpoints directory itself.
      model: the run's model config; checked against the run's ``config.json`` when it has one.
      policy: build the returned model under this precision policy (default: the trained one);
        the parameters are the trained ones either way (`bitscale.nn.with_policy`).
      step: the checkpoint to load (default: the latest).
      trained_policy: the policy the run trained under (it fixes the parameter dtypes); default:
        the ``policy`` named in the run's ``config.json``.
      mesh: where to place the parameters (default: all devices on ``data``).
    Raises:
      CheckpointError: no checkpoint in ``workdir``, an unknown ``step``, a run config for another
        model, no way to tell the trained policy, or a checkpoint that does not match.
    """
    directory = workdir
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    saved = saved_config(directory) or {}
    if dataclasses.is_dataclass(model):
        diff = [f"{k}: {saved[f'model.{k}']!r} (run) vs {v!r} (given)"
                for k, v in dataclasses.asdict(model).items()
                if isinstance(v, (int, float, str, bool)) and f"model.{k}" in saved
                and saved[f"model.{k}"] != v]
        if diff:
            raise CheckpointError(f"the run in {workdir} trained another model than the one "
                                  f"given: {'; '.join(diff[:6])}")
    if trained_policy is None:
        trained_policy = saved.get("policy")
        if not isinstance(trained_policy, str):
            raise CheckpointError(f"cannot tell the policy the run in {workdir} trained under "
                                  f"(its config.json names none); pass trained_policy=")
    mesh = mesh if mesh is not None else bnn.make_mesh()
    abstract = nnx.eval_shape(lambda: bnn.Llama(model, trained_policy, rngs=nnx.Rngs(0)))
    specs = bnn.param_specs(abstract, mesh)
    graphdef, like = nnx.split(abstract, nnx.Param)
    shardings = jax.tree_util.tree_map_with_path(
        lambda path, _: NamedSharding(mesh, specs.get(bnn.dotted_path(path), P())), like)
    ckpt = Checkpointer(directory, max_to_keep=None)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {directory} (expected a bitscale.train or "
                                  f"bitscale.rl workdir or its checkpoints directory)")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {directory}; available: "
                                  f"{steps}")
        params, _ = ckpt.restore_subtree(step, ".params", like, shardings)
    finally:
        ckpt.close()
    out = nnx.merge(graphdef, params)
    if policy is not None:
        out = bnn.with_policy(out, policy)
    return out, step
