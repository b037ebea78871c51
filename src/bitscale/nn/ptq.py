"""Post-training weight quantization: kernels become packed `QArray`s, inference runs through
`packed_matmul` (a Pallas kernel where ``pallas_kernels`` provides one, XLA otherwise).

Weights are quantized along the contraction axis, with the same numerics as the policy's
fake-quant path: a float kernel W [out, in] is packed as ``quantize(W.T, spec, axis=0)`` (the
[K, N] layout of ``pallas_kernels.packed_matmul``), and ``dequantize`` of it equals
``fake_quant(W, spec, axis=1).T`` bit for bit, so a PTQ model gives the logits of the
fake-quantized weight-only model.

References:
  Frantar et al., "GPTQ", arXiv:2210.17323 and Lin et al., "AWQ", arXiv:2306.00978
  (weight-only group quantization, round-to-nearest baseline).
"""

from __future__ import annotations

import warnings

from flax import nnx

from bitscale.numerics import QArray, quantize
from bitscale.nn.layers import Embed, Linear, PackedWeight
from bitscale.nn.llama import Llama
from bitscale.nn.packed import IMPLEMENTATIONS
from bitscale.nn.policy import Policy, resolve_policy


def quantize_weights(model: Llama, policy: "str | Policy" = "int4@g128", *,
                     implementation: str = "auto", inplace: bool = False) -> Llama:
    """A copy of ``model`` (or ``model`` itself) whose kernels are packed `QArray`s.

    Args:
      policy: a weight-only policy (rules with a ``weight`` spec and nothing else quantized);
        linear layers whose rule has no weight spec stay in floating point.
      implementation: ``auto`` / ``xla`` / ``pallas`` for `packed_matmul`.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, "
                         f"got {implementation!r}")
    policy = resolve_policy(policy)
    for r in policy.rules:
        if r.quantized and not r.weight_only:
            raise ValueError(f"policy {policy.name!r} is not weight-only: rule {r.pattern!r} "
                             "also quantizes activations or gradients")
    if not inplace:
        model = nnx.clone(model)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Embed) and module.head_rule is not None:
            if policy.rule_for("lm_head").weight is not None:
                warnings.warn("tied embeddings: the lm head shares the embedding table and is "
                              "kept in floating point", stacklevel=2)
        if not isinstance(module, Linear):
            continue
        rule = policy.rule_for(module.path)
        module.rule = rule
        module.implementation = implementation
        w = module.kernel.get_value()
        if rule.weight is None or isinstance(w, QArray):
            continue
        axes = module.kernel.get_metadata().get("logical_axes")
        module.kernel = PackedWeight(quantize(w.T, rule.weight, axis=0),
                                     logical_axes=None if axes is None else tuple(axes[::-1]))
    return model


def packed_bits(model: Llama) -> dict[str, float]:
    """Bits per element of every packed kernel, keyed by module path."""
    return {m.path: m.kernel.get_value().bits_per_element
            for _, m in nnx.iter_modules(model)
            if isinstance(m, Linear) and isinstance(m.kernel.get_value(), QArray)}
