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

import jax
import jax.numpy as jnp
from flax import nnx

from bitscale.numerics import QArray, quantize
from bitscale.numerics.validate import check_implementation
from bitscale.nn._layers import Embed, Linear, PackedWeight
from bitscale.nn._llama import Llama, with_policy
from bitscale.nn._policy import Policy, resolve_policy


def quantize_weights(model: Llama, policy: "str | Policy" = "int4@g128", *,
                     implementation: str = "auto") -> Llama:
    """A copy of ``model``, built under the weight-only ``policy``, whose kernels are packed
    `QArray`s.

    Args:
      policy: a weight-only policy (rules with a ``weight`` spec and nothing else quantized);
        linear layers whose rule has no weight spec stay in floating point.
      implementation: ``auto`` / ``xla`` / ``pallas`` for `packed_matmul` (the new model's
        construction argument).
    """
    check_implementation(implementation)
    policy = resolve_policy(policy)
    for r in policy.rules:
        if r.quantized and not r.weight_only:
            raise ValueError(f"policy {policy.name!r} is not weight-only: rule {r.pattern!r} "
                             "also quantizes activations or gradients")
    model = with_policy(model, policy, param_dtype=model.embed.embedding.get_value().dtype,
                        implementation=implementation)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Embed) and module.head_rule is not None:
            if policy.rule_for("lm_head").weight is not None:
                warnings.warn("tied embeddings: the lm head shares the embedding table and is "
                              "kept in floating point", stacklevel=2)
        if not isinstance(module, Linear):
            continue
        rule = module.rule
        w = module.kernel.get_value()
        if rule.weight is None or isinstance(w, QArray):
            continue
        axes = module.kernel.get_metadata().get("logical_axes")
        module.kernel = PackedWeight(quantize(w.T, rule.weight, axis=0),
                                     logical_axes=None if axes is None else tuple(axes[::-1]))
    return model


def weight_bits(model: Llama) -> dict[str, tuple[float, int]]:
    """``{path: (bits per element, elements)}`` of every linear layer's kernel but the lm head.

    A packed kernel counts its own storage (codes, scales, zero points, tensor scale); a float
    kernel whose rule has a weight spec counts what packing it would store
    (``quantize(W.T, spec, axis=0)``, as `quantize_weights` does); any other its dtype's width.
    """
    out = {}
    for _, m in nnx.iter_modules(model):
        if not isinstance(m, Linear) or m.path == "lm_head":
            continue
        w = m.kernel.get_value()
        if isinstance(w, QArray):
            out[m.path] = (w.bits_per_element, w.size)
        elif m.rule is not None and m.rule.weight is not None:
            # Shapes only: the storage of the packing, without quantizing (eagerly) anything.
            packed = jax.eval_shape(lambda v, s=m.rule.weight: quantize(v.T, s, axis=0), w)
            out[m.path] = (packed.bits_per_element, w.size)
        else:
            out[m.path] = (float(jnp.dtype(w.dtype).itemsize * 8), w.size)
    return out


def mean_weight_bits(model: Llama) -> float:
    """`weight_bits` averaged over all those kernels, weighted by their sizes."""
    bits = weight_bits(model)
    return sum(b * n for b, n in bits.values()) / max(sum(n for _, n in bits.values()), 1)
