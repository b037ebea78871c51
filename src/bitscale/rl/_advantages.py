"""Group-relative advantages over rewards of shape [prompts, group]: GRPO, Dr. GRPO, RLOO, MC-GRPO.

Every function is a pure jnp function (works under `jit`, `vmap`, `grad`), takes float rewards
``[P, G]`` (row p holds the G rollouts of prompt p) and returns float32. To feed `policy_loss`,
flatten prompt-major: ``advantages.reshape(-1)`` matches rollouts ordered ``(p, g)``.

A group whose rewards are all equal carries no learning signal: every estimator here returns exactly
zero for it (never NaN), whatever ``eps``.

References:
  Shao et al., "DeepSeekMath" (GRPO), arXiv:2402.03300.
  Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO),
  arXiv:2503.20783.
  Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
  Human Feedback in LLMs" (RLOO), arXiv:2402.14740.
  Kim, "MC-GRPO: Median-Centered Group Relative Policy Optimization for Small-Rollout Reinforcement
  Learning", arXiv:2601.22582 (code: github.com/lotusroot-kim/MC-GRPO).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = [
    "MAD_TO_STD",
    "drgrpo_advantages",
    "grpo_advantages",
    "mc_grpo_advantages",
    "rloo_advantages",
]

# 1 / Phi^-1(3/4): MAD * MAD_TO_STD estimates the standard deviation of a normal sample.
MAD_TO_STD = 1.4826


def _check_rewards(rewards: jax.Array, name: str, min_group: int = 2) -> jax.Array:
    shape = getattr(rewards, "shape", None)
    dtype = getattr(rewards, "dtype", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name}: rewards must be 2-D [prompts, group], got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name}: rewards must be a float array, got dtype {dtype}")
    if shape[1] < min_group:
        raise ValueError(f"{name}: needs a group of at least {min_group} rollouts per prompt, "
                         f"got group size {shape[1]} (rewards shape {tuple(shape)})")
    return jnp.asarray(rewards, jnp.float32)


def _check_eps(eps: float, name: str) -> None:
    if isinstance(eps, (int, float)) and not eps >= 0.0:
        raise ValueError(f"{name}: eps must be >= 0, got {eps}")


def _constant_rows(r: jax.Array) -> jax.Array:
    """[P, 1] bool: rows whose rewards are all equal."""
    return jnp.max(r, axis=1, keepdims=True) == jnp.min(r, axis=1, keepdims=True)


def _std(r: jax.Array, ddof: int = 0) -> jax.Array:
    """[P, 1] std along the group; sqrt taken only where the variance is > 0 (finite gradients)."""
    dev = r - jnp.mean(r, axis=1, keepdims=True)
    var = jnp.sum(dev * dev, axis=1, keepdims=True) / (r.shape[1] - ddof)
    return jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)


def grpo_advantages(rewards: jax.Array, *, eps: float = 1e-6, ddof: int = 1) -> jax.Array:
    """GRPO outcome advantages ``(r - mean_g r) / (std_g r + eps)`` per group, float32 [P, G].

    ``std`` is the *sample* standard deviation (``ddof=1``, Bessel-corrected) by default, matching
    verl's ``compute_grpo_outcome_advantage`` (``torch.std``, ``eps=1e-6``) and TRL's GRPOTrainer
    (``torch.std``, which adds 1e-4 instead). Pass ``ddof=0`` for the population std. Groups with
    all rewards equal get exactly 0. ``eps`` and ``ddof`` are static Python numbers.

    Raises:
      ValueError: rewards not 2-D float, group size G < 2, ``eps < 0`` or ``ddof`` not 0 or 1.

    References:
      Shao et al., arXiv:2402.03300 (Sec. 4.1.2, outcome supervision).
    """
    _check_eps(eps, "grpo_advantages")
    if ddof not in (0, 1):
        raise ValueError(f"grpo_advantages: ddof must be 0 or 1, got {ddof}")
    return _grpo(_check_rewards(rewards, "grpo_advantages"), eps, ddof)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _grpo(r: jax.Array, eps: float, ddof: int) -> jax.Array:
    centred = jnp.where(_constant_rows(r), 0.0, r - jnp.mean(r, axis=1, keepdims=True))
    denom = _std(r, ddof) + eps
    return centred / jnp.where(denom > 0, denom, 1.0)  # denom is 0 only for constant rows, eps=0


def drgrpo_advantages(rewards: jax.Array) -> jax.Array:
    """Dr. GRPO advantages ``r - mean_g r`` (no std division), float32 [P, G].

    Pair with ``aggregation="constant_length"`` in `PolicyLossConfig` to remove both of GRPO's
    biases (question difficulty through the std, response length through per-sequence means).

    References:
      Liu et al., arXiv:2503.20783 (Sec. 3.2).
    """
    return _drgrpo(_check_rewards(rewards, "drgrpo_advantages"))


@jax.jit
def _drgrpo(r: jax.Array) -> jax.Array:
    return jnp.where(_constant_rows(r), 0.0, r - jnp.mean(r, axis=1, keepdims=True))


def rloo_advantages(rewards: jax.Array) -> jax.Array:
    """RLOO advantages ``r_i - mean_{j != i} r_j`` (leave-one-out baseline), float32 [P, G].

    Equal to ``G / (G - 1) * (r_i - mean_g r)``; computed as ``(G r_i - sum r) / (G - 1)``.

    References:
      Ahmadian et al., arXiv:2402.14740 (Sec. 3, RLOO estimator); Kool et al., "Buy 4 REINFORCE
      Samples, Get a Baseline for Free!", ICLR 2019 workshop.
    """
    return _rloo(_check_rewards(rewards, "rloo_advantages"))


@jax.jit
def _rloo(r: jax.Array) -> jax.Array:
    g = r.shape[1]
    loo = (g * r - jnp.sum(r, axis=1, keepdims=True)) / (g - 1)
    return jnp.where(_constant_rows(r), 0.0, loo)


def mc_grpo_advantages(rewards: jax.Array, *, normalize: bool = True, eps: float = 1e-6,
                       clip: float | None = None) -> tuple[jax.Array, jax.Array]:
    """MC-GRPO (median-centred GRPO) advantages over G+1 rollouts per prompt.

    ``rewards`` is [P, G+1] with G+1 odd, so the median is an actual rollout: the *pivot*. Its
    advantage is exactly zero and it is excluded from the gradient by the returned mask, so G
    rollouts per prompt contribute, as in G-rollout GRPO. Ties are broken deterministically: the
    pivot is the rollout at sorted position G/2 under a stable sort (ties kept in index order).
    Other rollouts tied with the median keep their (zero) advantage and stay in the mask.

    Normalisation (``normalize=True``): ``A = (r - median) / max(s, eps)`` with
    ``s = max(MAD_TO_STD * MAD, std_pop)``, MAD the median absolute deviation and ``std_pop`` the
    population std of the group. The reference code divides by ``MAD + 1e-3``, which reaches
    ±1000 for binary rewards (MAD is 0 whenever more than half the group agrees). Using ``std_pop``
    as a floor bounds the advantages by construction: ``|r_i - mean| <= sqrt(n - 1) std_pop`` and
    ``|median - mean| <= std_pop`` give ``|A| <= 1 + sqrt(G)``; for continuous rewards the robust
    MAD scale usually dominates. ``clip`` (optional) additionally clips to [-clip, clip].
    ``normalize=False`` returns the raw ``r - median`` (Dr. GRPO-style). A constant group gives 0.
    ``normalize``, ``eps`` and ``clip`` are static Python values.

    The reference code also rescales each group's non-zero advantages by (G+1)/(#non-zero); that
    heuristic is not applied here.

    Returns:
      (advantages [P, G+1] float32, mask [P, G+1] float32 with 0 at the pivot and 1 elsewhere).
      Multiply the token mask of each rollout by its entry (``mask.reshape(-1)[:, None]``).

    Raises:
      ValueError: rewards not 2-D float, G+1 even or < 3, ``eps < 0`` or ``clip <= 0``.

    References:
      Kim, arXiv:2601.22582 (median baseline, pivot exclusion); Hampel, "The Influence Curve and
      its Role in Robust Estimation", JASA 1974 (MAD scaled by 1.4826).
    """
    _check_eps(eps, "mc_grpo_advantages")
    if clip is not None and not clip > 0:
        raise ValueError(f"mc_grpo_advantages: clip must be > 0 or None, got {clip}")
    r = _check_rewards(rewards, "mc_grpo_advantages", min_group=3)
    n = r.shape[1]
    if n % 2 != 1:
        raise ValueError(f"mc_grpo_advantages: needs an odd group size G+1 (G rollouts plus the "
                         f"pivot), got {n} (rewards shape {tuple(r.shape)})")
    return _mc_grpo(r, normalize, eps, clip)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _mc_grpo(r: jax.Array, normalize: bool, eps: float,
             clip: float | None) -> tuple[jax.Array, jax.Array]:
    n = r.shape[1]
    mid = n // 2
    order = jnp.argsort(r, axis=1, stable=True)
    pivot = order[:, mid]
    median = jnp.take_along_axis(r, pivot[:, None], axis=1)  # an actual sample: r - median is exact
    centred = r - median
    if normalize:
        mad = jnp.sort(jnp.abs(centred), axis=1)[:, mid:mid + 1]
        std = _std(r)
        scale = jnp.maximum(jnp.maximum(MAD_TO_STD * mad, std), eps)
        centred = jnp.where(centred == 0.0, 0.0, centred / jnp.where(scale > 0, scale, 1.0))
    if clip is not None:
        centred = jnp.clip(centred, -clip, clip)
    mask = 1.0 - jax.nn.one_hot(pivot, n, dtype=jnp.float32)
    return centred, mask
