"""Policies for reproducibility studies: reduction orders, batch invariance, LayerCast, fp16.

* `with_reduction(policy, hook)`: every matmul of the model (projections, attention's qk / pv,
  lm head) computed by ``hook`` (an order string such as ``"split_k:4"``, a `Reduction`,
  `RowTiledDot` or `BatchDependentSplitK`).
* `batch_invariant(policy)`: fixed-order (pairwise, float32) sums in softmax and RMSNorm and the
  whole model run in fixed row tiles (`bitscale.nn.Llama`'s ``row_tile``). Named
  ``<base>_batch_invariant`` (``fp32_batch_invariant``, ``bf16_batch_invariant``, ...): the
  names resolve wherever policy names do (`bitscale.nn.resolve_policy`) once `bitscale.repro`
  is imported. Build such models with `make_model`, which reads the tile from the policy.
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
from typing import Any, Optional, Union

from flax import nnx

from bitscale import nn as bnn
from bitscale.nn import Policy, Rule, resolve_policy
from bitscale.repro._hooks import (BatchDependentSplitK, BatchInvariance, Reduction,
                                   RowTiledDot)
from bitscale.repro._order import ReductionOrder

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
    float32 sums in softmax and RMSNorm, and the row tile `make_model` builds the model with.
    """
    base = resolve_policy(policy)
    return dataclasses.replace(base, name=name or base.name + BATCH_INVARIANT_SUFFIX,
                               reduction=BatchInvariance(tile, order))


def batch_dependent(policy: "str | Policy" = "fp32", **kw) -> Policy:
    """``policy`` with `BatchDependentSplitK` matmuls (logits that change with the batch size)."""
    base = resolve_policy(policy)
    return with_reduction(base, BatchDependentSplitK(**kw), name=base.name + "_batch_split_k")


def _resolve_family(name: str) -> Optional[Policy]:
    """``<base>_batch_invariant`` for any policy name ``<base>`` (`bitscale.nn` family hook)."""
    if not name.endswith(BATCH_INVARIANT_SUFFIX):
        return None
    base = name[:-len(BATCH_INVARIANT_SUFFIX)]
    try:
        return batch_invariant(base)
    except ValueError:
        return None


bnn.register_policy_family(_resolve_family, f"<name>{BATCH_INVARIANT_SUFFIX}")

POLICIES: dict[str, Policy] = {
    "fp32_batch_invariant": resolve_policy("fp32_batch_invariant"),
}
"""Named policies `bitscale.repro` adds (on top of `bitscale.nn.NAMED_POLICIES`)."""


def row_tile(policy: "str | Policy") -> Optional[int]:
    """The row tile a batch-invariant policy runs the model in (None for any other policy)."""
    reduction = resolve_policy(policy).reduction
    return reduction.tile if isinstance(reduction, BatchInvariance) else None


def make_model(cfg: bnn.ModelConfig, policy: "str | Policy" = "fp32", *, rngs: nnx.Rngs,
               param_dtype=None) -> bnn.Llama:
    """`bitscale.nn.Llama` under ``policy`` (repro names included), in row tiles for
    batch-invariant policies (``Policy.reduction`` a `BatchInvariance`)."""
    policy = resolve_policy(policy)
    return bnn.Llama(cfg, policy, param_dtype=param_dtype, row_tile=row_tile(policy), rngs=rngs)


def with_policy(model: bnn.Llama, policy: "str | Policy") -> bnn.Llama:
    """`bitscale.nn.with_policy` with the row tile ``policy`` asks for (none for others)."""
    policy = resolve_policy(policy)
    return bnn.with_policy(model, policy, row_tile=row_tile(policy))
