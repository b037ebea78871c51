"""4-bit training recipes as named policies: QuEST, Quartet, NVIDIA's NVFP4 recipe, Quartet II and
rotated NVINT4.

Each recipe quantizes the seven projections of every decoder layer (`PROJ`); the lm head and the
attention products stay in float32, as in the papers (which keep the embeddings, the head and
attention in high precision). Where a recipe keeps some decoder layers in BF16 (NVIDIA's last
blocks), the policy does not: at bitscale's small scales every layer is quantized, which makes
the comparison between recipes stricter, not easier.

Every rule here computes the forward operands' quantization along the contraction axis K, and with
``grad_axis="contraction"`` each backward product's operands along the axis that product
contracts (N for dX, the tokens for dW), as MX / NVFP4 matmul hardware requires.
"""

from __future__ import annotations

from bitscale.nn._rule import PROJ, Policy, Rule


def _recipe(name: str, **kw) -> Policy:
    """The projections under ``Rule(PROJ, **kw)``; the lm head and attention stay float32."""
    return Policy(name, (Rule("lm_head"), Rule(PROJ, **kw)))


QUEST_W4A4 = _recipe(
    "quest_w4a4",
    weight="int4@channel+rms", act="int4@channel+rms", rotation="h128", estimator="trust")
"""QuEST W4A4 (Panferov et al., "QuEST: Stable Training of LLMs with 1-Bit Weights and
Activations", arXiv:2502.05003): weights and activations rotated by a 128-block Hadamard along K,
then INT4 per row with the Gaussian-MSE-optimal clip alpha * RMS (`bitscale.numerics.gaussian`),
gradients through the trust mask (|x - q(x)| <= half a step) and back through the rotation. The
backward products stay in float32 (QuEST quantizes the forward pass only). bitscale's INT4 grid
is the symmetric +-7 one, not QuEST's 16-level mid-rise grid; alpha is computed for it."""

QUARTET_MXFP4 = _recipe(
    "quartet_mxfp4",
    weight="mxfp4+rms", act="mxfp4+rms", rotation="h32", estimator="clipped_ste",
    grad="mxfp4+headroom", grad_rounding="stochastic", grad_axis="contraction",
    dgrad_rotation="rh32:call", wgrad_rotation="rh32:call",
    bwd_weight="mxfp4+headroom", bwd_act="mxfp4+headroom", bwd_rounding="stochastic")
"""Quartet (Castro et al., "Quartet: Native FP4 Training Can Be Optimal for Large Language
Models", arXiv:2505.14669; IST-DASLab/Quartet): every product of a projection in MXFP4. Forward:
32-block Hadamard along K, QuEST's RMS clip (alpha = 2.92 for E2M1) with a power-of-two scale,
gradient masked where the rotated element was clipped. Backward (``Q(E)Q(W^T) / Q(E^T)Q(X^T)``):
dY and the forward-quantized weight re-rotated along N, dY and the forward-quantized activation
along the tokens, each with fresh random signs every step, then MXFP4 with Tseng et al.'s 3/4
headroom and stochastic rounding (unbiased, never clipping)."""

NVFP4_RECIPE = _recipe(
    "nvfp4_recipe",
    weight="nvfp4_2d", act="nvfp4", grad="nvfp4+headroom", grad_rounding="stochastic",
    grad_axis="contraction", wgrad_rotation="rh16", wgrad_act="original", bwd_act="nvfp4")
"""NVIDIA's NVFP4 pre-training recipe (NVIDIA, "Pretraining Large Language Models with NVFP4",
arXiv:2509.25149): all three GEMMs in NVFP4 (E2M1, 16-element blocks, E4M3 block scales and an
FP32 tensor scale); weights with 16x16 2-D blocks, so the forward's and the backward's quantized
weight are the same; a 16-point random Hadamard transform (one fixed set of signs) on both Wgrad
inputs; stochastic rounding of the gradients, round-to-nearest for weights and activations (the
Wgrad activation re-quantized along the tokens from the unquantized activation). The gradients'
block scales map amax to 6 * 16/17 (``+headroom``, as the NVFP4 stochastic-rounding kernels of
IST-DASLab/Quartet-II do) so that a rounded-down E4M3 scale never clips a block maximum, which
would bias the stochastic rounding."""

QUARTET2_NVFP4 = _recipe(
    "quartet2_nvfp4",
    weight="nvfp4+4o6", act="nvfp4+4o6", grad="nvfp4", grad_rounding="eden",
    grad_axis="contraction", dgrad_rotation="rh128:call", wgrad_rotation="rh128:call",
    bwd_weight="nvfp4", bwd_act="nvfp4", bwd_rounding="eden")
"""Quartet II (Panferov et al., "Quartet II: Accurate LLM Pre-Training in NVFP4 by Improved
Unbiased Gradient Estimation", arXiv:2601.22813; IST-DASLab/Quartet-II): forward NVFP4 with
round-to-nearest and Four-over-Six block scales (Cook et al., arXiv:2512.02010); backward:
dY and the forward-quantized weight rotated along N, dY and the forward-quantized activation
along the tokens, by a 128-block Hadamard with signs re-drawn every step, then MS-EDEN
(`bitscale.ms_eden`): nearest rounding of the elements and unbiased stochastic rounding of the
EDEN-corrected block scales. The authors' recipe also scales the backward by a tuned
``(17/16) * 0.93``; bitscale does not."""

NVINT4_ROTATED = _recipe(
    "nvint4_rotated",
    weight="nvint4", act="nvint4", rotation="rh16", grad="nvint4+headroom",
    grad_rounding="stochastic",
    grad_axis="contraction", dgrad_rotation="rh16:call", wgrad_rotation="rh16:call")
"""Rotated NVINT4 (Chen et al., "INT v.s. FP: A Comprehensive Study of Fine-Grained Low-bit
Quantization Formats", arXiv:2510.25602): NVFP4's layout (16-element blocks, E4M3 block scales,
FP32 tensor scale) with symmetric INT4 elements, after a 16-point random Hadamard rotation of
every product's operands (the paper finds NVINT4 ahead of NVFP4 once rotated); unbiased
stochastic rounding of the gradients (``+headroom``)."""

RECIPE_POLICIES: dict[str, Policy] = {
    p.name: p for p in (QUEST_W4A4, QUARTET_MXFP4, NVFP4_RECIPE, QUARTET2_NVFP4, NVINT4_ROTATED)}
"""The 4-bit training recipes by name (all also in `bitscale.nn.NAMED_POLICIES`)."""
