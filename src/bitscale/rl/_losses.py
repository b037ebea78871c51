"""Clipped policy-gradient loss (PPO / GRPO / DAPO / Dr. GRPO), KL estimators and log-prob mismatch.

All inputs are per-token log-probs of the *sampled* tokens, ``[B, T]``, aligned with a ``[B, T]``
mask (bool or float weights; see `bitscale.train.losses.token_log_probs` for the shift
convention: ``logits[:, t]`` scores ``tokens[:, t + 1]``). Masked-out positions may hold anything
(``-inf``, NaN): they are replaced by zeros before any arithmetic, so they never leak into the loss
or its gradient. Everything is float32 and a pure jnp function (``jit``, ``vmap``, ``grad``).

References:
  Schulman et al., "Proximal Policy Optimization Algorithms" (PPO), arXiv:1707.06347.
  Shao et al., "DeepSeekMath" (GRPO: per-sequence mean, KL to a reference with k3),
  arXiv:2402.03300.
  Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (clip-higher,
  token-level mean), arXiv:2503.14476.
  Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO:
  constant-length normaliser), arXiv:2503.20783.
  Schulman, "Approximating KL Divergence", blog post, 2020 (k1, k2, k3 estimators),
  http://joschu.net/blog/kl-approx.html.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "PolicyLossConfig",
    "aggregate",
    "kl_estimate",
    "logprob_mismatch",
    "policy_loss",
]

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "sequence_mean", "constant_length")
# |log ratio| is clamped here before exp (as verl does): no inf ratios, no NaN gradients.
_MAX_LOG_RATIO = 20.0


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """Settings of `policy_loss` (frozen and hashable: safe as a static `jit` argument).

    Attributes:
      eps_low: lower clip, the ratio is clipped below at ``1 - eps_low`` (PPO/GRPO: 0.2).
      eps_high: upper clip, ``1 + eps_high`` (DAPO clip-higher: 0.28). ``math.inf`` disables a side;
        both infinite (and beta = 0) gives plain importance-weighted REINFORCE.
      beta: coefficient of the per-token KL(pi || pi_ref) penalty added to the loss (GRPO: 0.04;
        DAPO and Dr. GRPO: 0).
      kl_estimator: "k1" (log pi - log pi_ref), "k2" (half its square) or "k3"
        (exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1, >= 0; GRPO's choice).
      aggregation: how token losses become a scalar, with w the mask and L the token losses:
        "token_mean": sum(w L) / sum(w) over the whole batch (DAPO);
        "sequence_mean": mean over sequences of sum_t(w L) / sum_t(w) (original GRPO);
        "constant_length": sum(w L) / (num_seqs * max_len) (Dr. GRPO).
        Sequences whose mask is all zero (e.g. MC-GRPO pivots) are not counted in num_seqs.
      max_len: the constant of "constant_length" (e.g. the generation budget); None uses T.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0
    kl_estimator: str = "k3"
    aggregation: str = "token_mean"
    max_len: int | None = None

    def __post_init__(self) -> None:
        for name in ("eps_low", "eps_high", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, numbers.Real) and v >= 0):  # also rejects NaN
                raise ValueError(f"PolicyLossConfig: {name} must be a float >= 0, got {v!r}")
        if math.isinf(self.beta):
            raise ValueError("PolicyLossConfig: beta must be finite, got inf")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"PolicyLossConfig: kl_estimator must be one of {KL_ESTIMATORS}, "
                             f"got {self.kl_estimator!r}")
        _check_aggregation(self.aggregation, self.max_len)


def _check_aggregation(mode: str, max_len: int | None) -> None:
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool)
                                or max_len < 1):
        raise ValueError(f"max_len must be a positive int or None, got {max_len!r}")


def _check_2d(name: str, x: jax.Array, shape: tuple[int, ...] | None = None) -> None:
    got = tuple(getattr(x, "shape", ()))
    if shape is None:
        if len(got) != 2:
            raise ValueError(f"{name} must be 2-D [B, T], got shape {got}")
    elif got != shape:
        raise ValueError(f"{name} shape {got} must match logp_new's {shape}")


def _weights(mask: jax.Array) -> jax.Array:
    return jnp.asarray(mask).astype(jnp.float32)


def _clean(x: jax.Array, w: jax.Array) -> jax.Array:
    """float32 ``x`` with masked-out positions set to exact zero (forward and backward)."""
    return jnp.where(w != 0, jnp.asarray(x, jnp.float32), 0.0)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    return num / jnp.where(den != 0, den, 1.0)


def _token_mean(x: jax.Array, w: jax.Array) -> jax.Array:
    return _safe_div(jnp.sum(jnp.where(w != 0, x, 0.0) * w), jnp.sum(w))


def aggregate(values: jax.Array, mask: jax.Array, mode: str = "token_mean", *,
              max_len: int | None = None) -> jax.Array:
    """Reduce token values [B, T] to a float32 scalar; see `PolicyLossConfig.aggregation`.

    An all-zero mask gives 0 (never NaN) in every mode.

    References:
      DAPO arXiv:2503.14476 (token_mean), GRPO arXiv:2402.03300 (sequence_mean), Dr. GRPO
      arXiv:2503.20783 (constant_length).
    """
    _check_aggregation(mode, max_len)
    _check_2d("values", values)
    _check_2d("mask", mask, tuple(values.shape))
    w = _weights(mask)
    v = _clean(values, w) * w
    if mode == "token_mean":
        return _safe_div(jnp.sum(v), jnp.sum(w))
    per_seq_w = jnp.sum(w, axis=1)
    n_seqs = jnp.sum((per_seq_w != 0).astype(jnp.float32))
    if mode == "sequence_mean":
        return _safe_div(jnp.sum(_safe_div(jnp.sum(v, axis=1), per_seq_w)), n_seqs)
    length = values.shape[1] if max_len is None else max_len
    return _safe_div(jnp.sum(v), n_seqs * length)


def kl_estimate(logp: jax.Array, logp_ref: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi, float32, elementwise.

    With ``d = logp_ref - logp``: k1 = -d (unbiased, can be negative), k2 = d^2 / 2 (biased, >= 0),
    k3 = exp(d) - d - 1 (unbiased, >= 0, low variance; d is clamped to [-20, 20] first). All three
    are 0 where the policies agree.

    References:
      Schulman, "Approximating KL Divergence", 2020; GRPO arXiv:2402.03300 eq. 4 (k3).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    d = jnp.asarray(logp_ref, jnp.float32) - jnp.asarray(logp, jnp.float32)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    d = jnp.clip(d, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return jnp.expm1(d) - d  # == exp(d) - d - 1, accurate near d = 0


def policy_loss(logp_new: jax.Array, logp_old: jax.Array, advantages: jax.Array,
                mask: jax.Array, config: PolicyLossConfig = PolicyLossConfig(), *,
                logp_ref: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped surrogate policy loss with an optional KL penalty to a frozen reference policy.

    Per token: ``ratio = exp(logp_new - logp_old)`` and
    ``L = -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A) + beta * KL_est(new || ref)``,
    reduced by ``config.aggregation`` (the log ratio is clamped to [-20, 20] before ``exp``, as in
    verl). The gradient is zero where the clip is active: ``A > 0`` and
    ``ratio > 1 + eps_high``, or ``A < 0`` and ``ratio < 1 - eps_low``. On-policy
    (``logp_old = stop_gradient(logp_new)``) the gradient is REINFORCE's
    ``-aggregate(A * grad logp)``.

    Args:
      logp_new: [B, T] log-probs of the sampled tokens under the policy being optimised.
      logp_old: [B, T] the same under the sampling (behaviour) policy; treated as a constant.
      advantages: [B] one advantage per sequence, broadcast over its tokens (prompt-major flatten
        of a [P, G] advantage matrix).
      mask: [B, T] bool or float weights; 0 marks prompt, padding or excluded (pivot) tokens.
      config: clip range, KL coefficient and estimator, aggregation.
      logp_ref: [B, T] reference-policy log-probs; required if ``beta > 0``, else only logged.

    Returns:
      (loss float32 scalar, metrics): ``pg_loss`` and ``kl_loss`` (aggregated like the loss, so
      ``loss = pg_loss + beta * kl_loss``), token-mean ``kl_ref`` (k3), ``clip_frac_low``,
      ``clip_frac_high``, ``clip_frac``, ``ratio_mean``, ``ratio_min``, ``ratio_max``,
      ``approx_kl`` (k3 estimate of KL(old || new)), ``num_tokens``, ``num_seqs``. Metrics are
      computed under `stop_gradient`.

    References:
      PPO arXiv:1707.06347 eq. 7; GRPO arXiv:2402.03300 eq. 3; DAPO arXiv:2503.14476 eq. 10;
      Dr. GRPO arXiv:2503.20783; Schulman 2020 (k3).
    """
    if not isinstance(config, PolicyLossConfig):
        raise TypeError(f"config must be a PolicyLossConfig, got {type(config).__name__}")
    _check_2d("logp_new", logp_new)
    shape = tuple(logp_new.shape)
    _check_2d("logp_old", logp_old, shape)
    _check_2d("mask", mask, shape)
    if logp_ref is not None:
        _check_2d("logp_ref", logp_ref, shape)
    elif config.beta > 0:
        raise ValueError(f"policy_loss: beta={config.beta} > 0 needs logp_ref")
    adv_shape = tuple(getattr(advantages, "shape", ()))
    if adv_shape != shape[:1]:
        raise ValueError(f"advantages shape {adv_shape} must be ({shape[0]},): one per sequence "
                         f"of logp_new {shape}")

    w = _weights(mask)
    new = _clean(logp_new, w)
    old = jax.lax.stop_gradient(_clean(logp_old, w))
    adv = jnp.asarray(advantages, jnp.float32)[:, None]
    log_ratio = jnp.clip(new - old, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - config.eps_low, 1.0 + config.eps_high)
    pg_tok = -jnp.minimum(ratio * adv, clipped * adv)

    agg = dict(mode=config.aggregation, max_len=config.max_len)
    pg_loss = aggregate(pg_tok, w, **agg)
    if logp_ref is not None:
        ref = jax.lax.stop_gradient(_clean(logp_ref, w))
        kl_loss = aggregate(kl_estimate(new, ref, config.kl_estimator), w, **agg)
        kl_ref = _token_mean(kl_estimate(new, ref, "k3"), w)
    else:
        kl_loss = kl_ref = jnp.zeros((), jnp.float32)
    loss = pg_loss + config.beta * kl_loss if config.beta > 0 else pg_loss

    sg = jax.lax.stop_gradient
    r, a, on = sg(ratio), sg(adv), w != 0
    low = (r < 1.0 - config.eps_low) & (a < 0)
    high = (r > 1.0 + config.eps_high) & (a > 0)
    n_tok = jnp.sum(w)
    n_seqs = jnp.sum((jnp.sum(w, axis=1) != 0).astype(jnp.float32))
    any_tok = jnp.any(on)
    metrics = {
        "pg_loss": sg(pg_loss),
        "kl_loss": sg(kl_loss),
        "kl_ref": sg(kl_ref),
        "clip_frac_low": _token_mean(low.astype(jnp.float32), w),
        "clip_frac_high": _token_mean(high.astype(jnp.float32), w),
        "clip_frac": _token_mean((low | high).astype(jnp.float32), w),
        "ratio_mean": _token_mean(r, w),
        "ratio_min": jnp.where(any_tok, jnp.min(jnp.where(on, r, jnp.inf)), 1.0),
        "ratio_max": jnp.where(any_tok, jnp.max(jnp.where(on, r, -jnp.inf)), 1.0),
        "approx_kl": _token_mean(kl_estimate(sg(old), sg(new), "k3"), w),
        "num_tokens": n_tok,
        "num_seqs": n_seqs,
    }
    return loss, metrics


def logprob_mismatch(logp_sampler: jax.Array, logp_trainer: jax.Array,
                     mask: jax.Array) -> dict[str, jax.Array]:
    """How far the trainer's log-probs of the sampled tokens are from the sampler's, per step.

    Returns float32 scalars over masked tokens: ``mean_abs_diff`` and ``max_abs_diff`` of
    ``logp_trainer - logp_sampler``, ``kl_k1`` and ``kl_k3``, estimates of KL(sampler || trainer)
    from the sampler's own tokens (k3 = exp(d) - d - 1 with d = logp_trainer - logp_sampler, >= 0),
    and ``num_tokens``. All zero when the two agree exactly (e.g. same precision, batch-invariant
    kernels); a growing gap signals an off-policy bias that the clipped ratio only partly absorbs.

    References:
      Schulman, "Approximating KL Divergence", 2020; Yao et al., "Your Efficient RL Framework
      Secretly Brings You Off-Policy RL Training" (sampler/trainer mismatch), 2025.
    """
    _check_2d("logp_sampler", logp_sampler)
    shape = tuple(logp_sampler.shape)
    _check_2d("logp_trainer", logp_trainer, shape)
    _check_2d("mask", mask, shape)
    w = _weights(mask)
    samp, train = _clean(logp_sampler, w), _clean(logp_trainer, w)
    diff = jnp.abs(train - samp)
    return {
        "mean_abs_diff": _token_mean(diff, w),
        "max_abs_diff": jnp.max(jnp.where(w != 0, diff, 0.0)),
        "kl_k1": _token_mean(kl_estimate(samp, train, "k1"), w),
        "kl_k3": _token_mean(kl_estimate(samp, train, "k3"), w),
        "num_tokens": jnp.sum(w),
    }
