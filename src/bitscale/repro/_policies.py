"""Policies for reproducibility studies: reduction orders, batch invariance, LayerCast, fp16.

* `with_reduction(policy, hook)`: every matmul of the model (projections, attention's qk / pv,
  lm head) computed by ``hook`` (an order string such as ``"split_k:4"``, a `Reduction`,
  `RowTiledDot` or `BatchDependentSplitK`).
* `batch_invariant(policy)`: the whole model run in fixed row tiles (`BatchInvariantLlama`)
  plus fixed-order (pairwise, float32) sums in softmax and RMSNorm. Named
  ``<base>_batch_invariant`` (``fp32_batch_invariant``, ``bf16_batch_invariant``, ...). Build
  such models with `make_model` (it picks the tiled model class, and installs the policy's
  ``reduction`` in the RMSNorms, to which `bitscale.nn.Llama` does not hand the policy).
* ``fp16`` (in `bitscale.nn`): float16 weights, activations and products (float32
  accumulation).
* ``layercast`` (in `bitscale.nn`): bfloat16 weights, float32 computation (Yuan et al.).

References:
  Yuan et al., "Give Me FP32 or Give Me Death? Challenges and Solutions for Reproducible
    Reasoning", arXiv:2506.09501 (LayerCast).
  He et al., "Defeating Nondeterminism in LLM Inference", Thinking Machines Lab, 2025.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

import jax
from flax import nnx

from bitscale import nn as bnn
from bitscale.nn import Policy, Rule
from bitscale.repro._hooks import (BatchDependentSplitK, BatchInvariance, Reduction,
                                   RowTiledDot)
from bitscale.repro._order import ReductionOrder
from bitscale.repro._tiled import BatchInvariantLlama

HookLike = Union[str, ReductionOrder, Reduction, RowTiledDot, BatchDependentSplitK, Any]
BATCH_INVARIANT_SUFFIX = "_batch_invariant"


def as_hook(hook: HookLike):
    """An order string / `ReductionOrder` becomes a float32 `Reduction`; objects pass through."""
    if isinstance(hook, (str, ReductionOrder)):
        return Reduction(hook)
    return hook


def with_reduction(policy: "str | Policy", hook: HookLike, *, name: str | None = None) -> Policy:
    """``policy`` with every matmul computed by ``hook``.

    The policy's rules keep their quantization and get ``reduction=hook``; a final catch-all
    rule in the policy's activation dtype carries the hook to the paths the policy left to its
    default (attention products under ``fp8``-style projection-only policies).
    """
    policy = resolve_policy(policy)
    hook = as_hook(hook)
    rules = tuple(dataclasses.replace(r, reduction=hook) for r in policy.rules)
    rules += (Rule(".*", compute_dtype=policy.act_dtype, reduction=hook),)
    return dataclasses.replace(policy, name=name or f"{policy.name}+{hook}", rules=rules)


def batch_invariant(policy: "str | Policy" = "fp32", *, tile: int = 1,
                    order: "str | ReductionOrder" = "pairwise", name: str | None = None) -> Policy:
    """``policy`` made batch-invariant: under `make_model` every sample's logits are
    bit-identical whatever the batch size and the sample's position in the batch (for the same
    padded prompt), prefill and cached decoding alike.

    The rules are kept; ``Policy.reduction`` becomes `BatchInvariance(tile, order)`: fixed-order
    float32 sums in softmax and RMSNorm, and the row tile `make_model` runs the model in
    (`BatchInvariantLlama`).
    """
    base = resolve_policy(policy)
    return dataclasses.replace(base, name=name or base.name + BATCH_INVARIANT_SUFFIX,
                               reduction=BatchInvariance(tile, order))


def batch_dependent(policy: "str | Policy" = "fp32", **kw) -> Policy:
    """``policy`` with `BatchDependentSplitK` matmuls (logits that change with the batch size)."""
    base = resolve_policy(policy)
    return with_reduction(base, BatchDependentSplitK(**kw), name=base.name + "_batch_split_k")


def policy_names() -> list[str]:
    base = sorted(set(bnn.policy_names()) | set(POLICIES))
    return base + [f"<name>{BATCH_INVARIANT_SUFFIX}"]


def resolve_policy(policy: "str | Policy") -> Policy:
    """A `Policy`; names: `bitscale.nn.NAMED_POLICIES`, `POLICIES` and ``<name>_batch_invariant``.

    Raises:
      ValueError: an unknown name, listing the valid ones.
    """
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        if policy in POLICIES:
            return POLICIES[policy]
        if policy in bnn.NAMED_POLICIES:
            return bnn.NAMED_POLICIES[policy]
        base = policy[:-len(BATCH_INVARIANT_SUFFIX)]
        if policy.endswith(BATCH_INVARIANT_SUFFIX) and (base in POLICIES
                                                        or base in bnn.policy_names()):
            return batch_invariant(base)
        if policy in bnn.policy_names():  # registered with bitscale.nn.register_policy
            return bnn.resolve_policy(policy)
    raise ValueError(f"unknown precision policy {policy!r}; valid names: {policy_names()} "
                     "(or pass a bitscale.nn.Policy)")


POLICIES: dict[str, Policy] = {
    "fp32_batch_invariant": batch_invariant(bnn.NAMED_POLICIES["fp32"]),
}
"""Named policies added by `bitscale.repro` (on top of `bitscale.nn.NAMED_POLICIES`)."""


def install_reductions(model: bnn.Llama) -> bnn.Llama:
    """Hands ``model.policy.reduction`` to every RMSNorm of ``model`` (in place; returned)."""
    for _, m in nnx.iter_modules(model):
        if isinstance(m, bnn.RMSNorm):
            m.reduction = model.policy.reduction
    return model


def make_model(cfg: bnn.ModelConfig, policy: "str | Policy" = "fp32", *, rngs: nnx.Rngs,
               param_dtype=None) -> bnn.Llama:
    """`bitscale.nn.Llama` under ``policy`` (repro names included) with the policy's
    ``reduction`` installed in the RMSNorms; a `BatchInvariantLlama` for batch-invariant
    policies (``Policy.reduction`` a `BatchInvariance`)."""
    policy = resolve_policy(policy)
    if isinstance(policy.reduction, BatchInvariance):
        model = BatchInvariantLlama(cfg, policy, tile=policy.reduction.tile,
                                    param_dtype=param_dtype, rngs=rngs)
    else:
        model = bnn.Llama(cfg, policy, param_dtype=param_dtype, rngs=rngs)
    return install_reductions(model)


def with_policy(model: bnn.Llama, policy: "str | Policy") -> bnn.Llama:
    """A copy of ``model`` under ``policy``, its parameters cast to the policy's storage dtype
    (rounded to nearest even: bf16 weights for ``bf16`` / ``layercast``)."""
    policy = resolve_policy(policy)
    abstract = nnx.eval_shape(lambda: make_model(model.cfg, policy, rngs=nnx.Rngs(0)))
    graphdef, like = nnx.split(abstract)
    params = nnx.state(model)
    if jax.tree.structure(params) != jax.tree.structure(like):
        raise ValueError("with_policy: the model's state does not match a freshly built "
                         f"{policy.name!r} model of the same config (packed weights?)")
    state = jax.tree.map(lambda x, s: x.astype(s.dtype), params, like)
    return nnx.merge(graphdef, state)
