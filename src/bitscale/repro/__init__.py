"""Reproducible reasoning: reduction-order emulation, batch invariance, LayerCast, divergence.

* Reduction orders: `reduce_sum`, `matmul`, `dot_general` accumulate in a chosen order
  (`ReductionOrder`: ``sequential``, ``pairwise``, ``split_k:<s>``) and precision (every
  partial sum rounded to float32 / bfloat16 / float16), with explicit adds XLA cannot reorder.
* Policies: `with_reduction` runs every matmul of a model (projections, attention's qk / pv,
  lm head) under an emulated order (`Reduction`); `batch_invariant` (``fp32_batch_invariant``)
  makes every sample's logits independent of batch size and position (the model in fixed row
  tiles, fixed-order softmax / RMSNorm sums); `batch_dependent` emulates GPU split-K heuristics
  whose split count follows the batch size; ``fp16`` and the `bitscale.nn` policies
  (``layercast``: bf16 weights, fp32 compute). Build models with `make_model`, re-cast one with
  `with_policy`; ``<name>_batch_invariant`` names resolve in `bitscale.nn.resolve_policy`.
* Divergence metrics of greedy outputs (`first_divergence`, `divergence`, `group_divergence`,
  `std_at_acc`, `length_spread`) and of next-token distributions (`logit_distance`). The
  study that runs a grid of runtime settings over a model lives in `bitscale.studies.repro`
  (``python -m bitscale.studies.repro --config=configs/repro.py``).

References:
  Yuan et al., "Give Me FP32 or Give Me Death? Challenges and Solutions for Reproducible
    Reasoning", arXiv:2506.09501.
  He et al., "Defeating Nondeterminism in LLM Inference", Thinking Machines Lab, 2025.
"""

from bitscale.repro._hooks import BatchDependentSplitK, BatchInvariance, Reduction, RowTiledDot
from bitscale.repro._metrics import (
    divergence,
    divergence_curve,
    first_divergence,
    group_divergence,
    length_spread,
    logit_distance,
    std_at_acc,
    summarize_indices,
)
from bitscale.repro._order import ACC_DTYPES, ReductionOrder, check_acc_dtype, parse_order
from bitscale.repro._policies import (
    POLICIES,
    batch_dependent,
    batch_invariant,
    make_model,
    row_tile,
    with_policy,
    with_reduction,
)
from bitscale.repro._reduce import dot_general, matmul, reduce_sum, split_sizes

__all__ = [
    "ACC_DTYPES", "POLICIES", "BatchDependentSplitK", "BatchInvariance",
    "Reduction", "ReductionOrder", "RowTiledDot",
    "batch_dependent", "batch_invariant", "check_acc_dtype", "divergence", "divergence_curve",
    "dot_general", "first_divergence", "group_divergence", "length_spread", "logit_distance",
    "make_model",
    "matmul", "parse_order", "reduce_sum", "row_tile", "split_sizes", "std_at_acc",
    "summarize_indices", "with_policy", "with_reduction",
]
