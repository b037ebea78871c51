"""Training losses: token cross-entropy, sequence log-probability, DCO (pass@N) and Masked Thought.

All math is float32 whatever the logits dtype; every function is a pure jnp function that works
under `jit`, `vmap` and `grad`.

Alignment convention: ``logits[:, t]`` scores ``targets[:, t]``. For next-token prediction the
caller shifts, e.g. ``logits = model(tokens)[:, :-1]`` and ``targets = tokens[:, 1:]`` (and the
mask likewise ``mask[:, 1:]``).

References:
  Chen et al., "Rethinking Fine-Tuning when Scaling Test-Time Compute: Limiting Confidence Improves
  Mathematical Reasoning", arXiv:2502.07154 (DCO loss).
  Chen et al., "Masked Thought: Simply Masking Partial Reasoning Steps Can Improve Mathematical
  Reasoning Learning of Language Models", arXiv:2403.02178.
  Maechler, "Accurately Computing log(1 - exp(-|a|))", Rmpfr vignette, 2012 (log1mexp).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

__all__ = [
    "dco_loss",
    "dco_weight",
    "log1mexp",
    "masked_thought",
    "ramped_rate",
    "sequence_log_prob",
    "token_cross_entropy",
    "token_log_probs",
]

_LOG2 = math.log(2.0)
# Below this, exp(c) < 1e-13 and the first-order series below are exact in float32.
_SERIES_CUTOFF = -30.0


def _check_shapes(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> None:
    if logits.ndim != targets.ndim + 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} must be targets {targets.shape} + [V]")
    if mask.shape != targets.shape:
        raise ValueError(f"mask {mask.shape} must have the targets' shape {targets.shape}")


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Float32 log-softmax of ``logits`` [..., V] gathered at integer ``targets`` [...].

    Computed as ``logits[target] - logsumexp(logits)`` with the max subtracted (stable).

    References:
      Standard log-softmax; see the module docstring for the alignment convention.
    """
    x = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(x, axis=-1)
    picked = jnp.take_along_axis(x, targets.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    return picked - lse  # <= 0: logsumexp >= max >= picked in floating point too


def _masked(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``values * mask`` with masked-out positions forced to exact zero (no NaN/Inf leaks)."""
    m = mask.astype(jnp.float32)
    return jnp.where(m != 0, values, 0.0) * m


def token_cross_entropy(logits: jax.Array, targets: jax.Array,
                        mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Masked token cross-entropy.

    Args:
      logits: [B, T, V] in any float dtype; ``logits[:, t]`` predicts ``targets[:, t]`` (the caller
        shifts for next-token prediction).
      targets: [B, T] integer token ids.
      mask: [B, T] bool or float weights (1 = count the token).

    Returns:
      (mean loss over masked tokens, per-sequence summed loss [B]), both float32. The mean divides
      by ``max(sum(mask), 1)``, so an all-zero mask gives 0, never NaN.

    References:
      Standard next-token cross-entropy.
    """
    _check_shapes(logits, targets, mask)
    nll = _masked(-token_log_probs(logits, targets), mask)
    per_seq = jnp.sum(nll, axis=-1)
    denom = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
    return jnp.sum(per_seq) / denom, per_seq


def sequence_log_prob(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """log p̂ of each masked answer: the sum of masked token log-probs, float32 [B].

    References:
      Chen et al., arXiv:2502.07154 (p̂ is the model's probability of the whole answer).
    """
    _check_shapes(logits, targets, mask)
    return jnp.sum(_masked(token_log_probs(logits, targets), mask), axis=-1)


def log1mexp(x: jax.Array) -> jax.Array:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate everywhere (-inf at 0, 0 at -inf).

    Uses ``log(-expm1(x))`` for ``x > -log 2`` and ``log1p(-exp(x))`` otherwise.

    References:
      Maechler, "Accurately Computing log(1 - exp(-|a|))", 2012.
    """
    x = jnp.asarray(x)
    near = jnp.log(-jnp.expm1(jnp.where(x > -_LOG2, x, -1.0)))
    far = jnp.log1p(-jnp.exp(jnp.where(x > -_LOG2, -1.0, x)))
    return jnp.where(x > -_LOG2, near, far)


def _log_neg_log1m(l: jax.Array) -> jax.Array:
    """h(l) = log(-log(1 - exp(l))) for l <= 0 (the log cumulative hazard of p = e^l)."""
    small = l < _SERIES_CUTOFF
    # -log(1 - p) = p (1 + p/2 + ...), so h = l + p/2 + O(p^2) when p is tiny.
    series = l + 0.5 * jnp.exp(jnp.where(small, l, _SERIES_CUTOFF))
    direct = jnp.log(-log1mexp(jnp.where(small, -1.0, l)))
    return jnp.where(small, series, direct)


def _log1m_exp_neg_exp(c: jax.Array) -> jax.Array:
    """g(c) = log(1 - exp(-exp(c))), the inverse of `_log_neg_log1m`."""
    small = c < _SERIES_CUTOFF
    # 1 - exp(-y) = y (1 - y/2 + ...), so g = c - exp(c)/2 + O(exp(2c)).
    series = c - 0.5 * jnp.exp(jnp.where(small, c, _SERIES_CUTOFF))
    direct = log1mexp(-jnp.exp(jnp.where(small, 0.0, c)))
    return jnp.where(small, series, direct)


def _dco_log_fail_free(l: jax.Array, n: int) -> jax.Array:
    """log(1 - (1 - e^l)^n), computed as g(log n + h(l))."""
    return _log1m_exp_neg_exp(math.log(n) + _log_neg_log1m(l))


def dco_weight(seq_logp: jax.Array, n: int) -> jax.Array:
    """F(N, p̂) = N p̂ (1 - p̂)^(N-1) / (1 - (1 - p̂)^N): DCO's gradient is CE's gradient times F.

    Computed in log space; F -> 1 as p̂ -> 0 and F -> 0 (N > 1) or 1 (N = 1) as p̂ -> 1.

    References:
      Chen et al., arXiv:2502.07154 (the DCO gradient factor).
    """
    _check_n(n)
    l = jnp.asarray(seq_logp, jnp.float32)
    l = jnp.where(l > 0.0, 0.0, l)
    if n == 1:
        return jnp.ones_like(l)
    log_f = math.log(n) + l + (n - 1) * log1mexp(l) - _dco_log_fail_free(l, n)
    return jnp.exp(log_f)


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive Python int, got {n!r}")


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _dco(l: jax.Array, n: int) -> jax.Array:
    return -_dco_log_fail_free(jnp.where(l > 0.0, 0.0, l), n)


@_dco.defjvp
def _dco_jvp(n, primals, tangents):
    (l,), (dl,) = primals, tangents
    # d/dl [-log(1 - (1 - e^l)^n)] = -F(n, e^l); zero where l was clamped at 0 from above.
    slope = jnp.where(l > 0.0, 0.0, -dco_weight(l, n))
    return _dco(l, n), slope * dl


def dco_loss(seq_logp: jax.Array, n: int) -> jax.Array:
    """DCO loss for pass@N: ``-log(1 - (1 - p̂)^N)`` per sequence, p̂ = exp(seq_logp), float32 [B].

    Stable in float32 over the whole range: ``-seq_logp - log N`` as p̂ -> 0, ~0 as p̂ -> 1. Equals
    cross-entropy ``-seq_logp`` at N = 1. The gradient is exact (custom JVP): CE's gradient times
    `dco_weight`. Returns per-sequence losses; the caller averages.

    References:
      Chen et al., "Rethinking Fine-Tuning when Scaling Test-Time Compute", arXiv:2502.07154.
    """
    _check_n(n)
    l = jnp.asarray(seq_logp, jnp.float32)
    if n == 1:
        return -jnp.where(l > 0.0, 0.0, l)
    return _dco(l, n)


def masked_thought(tokens: jax.Array, reasoning_mask: jax.Array, key: jax.Array,
                   rate: float | jax.Array, *, mask_id: int) -> tuple[jax.Array, jax.Array]:
    """Masked Thought: replaces each reasoning-step input token by ``mask_id`` with prob. ``rate``.

    Apply to the model *inputs* only; the targets stay the original tokens. Deterministic per
    ``key``; ``rate`` may be traced (see `ramped_rate`). ``mask_id`` is the caller's mask token
    (a dedicated [MASK] or the pad id).

    Returns:
      (masked tokens of ``tokens``' dtype, bool array of the replaced positions).

    References:
      Chen et al., arXiv:2403.02178.
    """
    if reasoning_mask.shape != tokens.shape:
        raise ValueError(f"reasoning_mask {reasoning_mask.shape} must match tokens {tokens.shape}")
    u = jax.random.uniform(key, tokens.shape, jnp.float32)
    replaced = reasoning_mask.astype(bool) & (u < jnp.asarray(rate, jnp.float32))
    return jnp.where(replaced, jnp.asarray(mask_id, tokens.dtype), tokens), replaced


def ramped_rate(step: int | jax.Array, total_steps: int, final_rate: float,
                warmup_fraction: float = 0.0) -> jax.Array:
    """Linear ramp of the Masked Thought rate: 0 at step 0 to ``final_rate`` at
    ``warmup_fraction * total_steps``, constant afterwards (float32 scalar, jit-safe).

    References:
      Chen et al., arXiv:2403.02178 (masking rate as a training schedule).
    """
    ramp_steps = warmup_fraction * total_steps
    if ramp_steps <= 0:
        return jnp.asarray(final_rate, jnp.float32)
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / ramp_steps, 0.0, 1.0)
    return frac * jnp.float32(final_rate)
