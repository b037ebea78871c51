"""Rollouts: G sampled completions per prompt, their rewards, and the teacher-forced RL batch.

`rollout` draws ``n`` completions of each left-padded prompt with the best-of-N sampler
(`bitscale.sampling.sample_n`, which records the behaviour log-probs of the sampled tokens),
decodes them, scores them with the task's verifier (`reward_function`) and lays them out for the
trainer with `teacher_forced_batch`. Rows are prompt-major: row ``p * n + g`` is sample g of
prompt p, matching ``advantages.reshape(-1)`` of a [P, n] advantage matrix.

Layout of one row of the batch (length ``P_len + T``)::

    PAD PAD BOS prompt... | completion... STOP PAD PAD

``attention_mask`` is 1 on the real prompt and completion tokens (the stop token included);
``completion_mask`` is 1 on the completion tokens only (the stop token included), aligned with
``tokens`` like `bitscale.data.make_batch`'s masks: ``mask[t] = 1`` marks ``tokens[t]`` as a
target, scored by ``logits[:, t - 1]``. ``sampler_logp[t]`` is the sampler's log-prob of
``tokens[t]`` (0 outside the completion). Positions follow the running count of real tokens, as in
the sampler, so the trainer's teacher-forced log-probs of the completion equal the sampler's up
to floating-point differences (the sampler/trainer mismatch the RL step reports).

Truncation: a completion that hit ``max_new_tokens`` without a stop token (``finished == False``)
gets ``truncation_reward`` whatever its text (`bitscale.rl.group_rewards`); it stays in the batch
with all of its tokens in the mask.

References:
  Shao et al., "DeepSeekMath" (GRPO: G outputs per question, rule-based rewards),
  arXiv:2402.03300.
  Yu et al., "DAPO" (overlong/truncated samples), arXiv:2503.14476.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from bitscale import sampling
from bitscale.data import Countdown, Example, Tokenizer, prompt_arrays
from bitscale.rl._rewards import (
    RewardFn,
    binary_reward,
    countdown_graded_reward,
    group_rewards,
    int_graded_reward,
)

__all__ = ["REWARDS", "Rollout", "RolloutConfig", "check_rewards", "prompt_arrays",
           "reward_function", "rollout", "teacher_forced_batch"]

REWARDS = ("binary", "graded")


def reward_function(kind: str, task: Any) -> RewardFn:
    """The reward of ``kind`` for ``task``: ``binary`` (1 if ``task.check`` accepts, else 0) or
    ``graded`` (`countdown_graded_reward` for Countdown, `int_graded_reward` otherwise: partial
    credit for a well-formed but wrong answer).

    Raises:
      ValueError: an unknown ``kind``.

    References:
      DeepSeekMath arXiv:2402.03300 (rule-based rewards); TinyZero (format credit).
    """
    if kind == "binary":
        return binary_reward(task)
    if kind == "graded":
        return countdown_graded_reward if isinstance(task, Countdown) else int_graded_reward
    raise ValueError(f"unknown reward {kind!r}; accepted: {list(REWARDS)}")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Static settings of `rollout`.

    Attributes:
      n: completions sampled per prompt (G, or G + 1 for MC-GRPO's pivot).
      strategy: a `bitscale.sampling` strategy string; ``temperature:1.0`` samples the policy
        itself (the recorded log-probs are always the raw temperature-1 ones).
      max_new_tokens: generation budget T.
      reward: ``binary`` or ``graded`` (`reward_function`).
      truncation_reward: reward of a completion cut off at T (finite); see the module docstring.
      chunk_size: samples decoded at once by `sample_n` (None: all n).
    """

    n: int
    strategy: str = "temperature:1.0"
    max_new_tokens: int = 32
    reward: str = "binary"
    truncation_reward: float = 0.0
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"RolloutConfig: n must be an int >= 1, got {self.n!r}")
        if isinstance(self.max_new_tokens, bool) or int(self.max_new_tokens) < 1:
            raise ValueError(f"RolloutConfig: max_new_tokens must be >= 1, got "
                             f"{self.max_new_tokens!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; accepted: {list(REWARDS)}")
        if not (isinstance(self.truncation_reward, (int, float))
                and math.isfinite(self.truncation_reward)):
            raise ValueError(f"RolloutConfig: truncation_reward must be a finite number, got "
                             f"{self.truncation_reward!r}")
        sampling.parse_strategy(self.strategy)  # unknown strategies fail here


@dataclasses.dataclass(frozen=True)
class Rollout:
    """One rollout batch: the trainer's arrays (numpy, [P * n, L]) and host-side results ([P, n]).

    Attributes:
      batch: `teacher_forced_batch`'s dict plus ``rewards`` float32 [P, n].
      completions: P lists of n decoded completion strings.
      rewards: float32 [P, n] (truncated completions get the truncation reward).
      correct: bool [P, n], ``task.check`` of each completion (binary correctness).
      lengths: int32 [P, n] generated tokens, the stop token included.
      finished: bool [P, n], False where the completion was truncated.
    """

    batch: dict[str, np.ndarray]
    completions: list[list[str]]
    rewards: np.ndarray
    correct: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray

    def metrics(self) -> dict[str, float]:
        """Host metrics of the batch: ``reward_mean``, ``reward_std``, ``accuracy`` (fraction
        correct), ``mean_length``, ``truncation_rate`` and ``solved_frac`` / ``unsolved_frac``
        (prompts whose n samples are all correct / all wrong: no signal for GRPO)."""
        c = self.correct
        return {"reward_mean": float(np.mean(self.rewards)),
                "reward_std": float(np.std(self.rewards)),
                "accuracy": float(np.mean(c)),
                "mean_length": float(np.mean(self.lengths)),
                "truncation_rate": float(1.0 - np.mean(self.finished)),
                "solved_frac": float(np.mean(np.all(c, axis=1))),
                "unsolved_frac": float(np.mean(~np.any(c, axis=1)))}


def teacher_forced_batch(prompt: np.ndarray, prompt_mask: np.ndarray, tokens: np.ndarray,
                         log_probs: np.ndarray, lengths: np.ndarray,
                         pad_id: int) -> dict[str, np.ndarray]:
    """The trainer's batch from left-padded prompts [P, Lp] and their completions [P, n, T].

    Args:
      prompt, prompt_mask: int [P, Lp], LEFT-padded (`bitscale.data.make_batch`'s ``prompt``).
      tokens: int [P, n, T] sampled completions (``pad_id`` after the stop token).
      log_probs: float [P, n, T] the sampler's log-probs of ``tokens``.
      lengths: int [P, n] tokens generated, the stop token included.
      pad_id: written after each completion.
    Returns:
      int32 ``tokens``, ``attention_mask``, ``completion_mask`` and float32 ``sampler_logp``, all
      [P * n, Lp + T], prompt-major (see the module docstring).
    Raises:
      ValueError: shapes that do not line up (naming them).
    """
    prompt, prompt_mask = np.asarray(prompt), np.asarray(prompt_mask)
    tokens, log_probs, lengths = np.asarray(tokens), np.asarray(log_probs), np.asarray(lengths)
    if prompt.ndim != 2 or prompt_mask.shape != prompt.shape:
        raise ValueError(f"teacher_forced_batch: prompt {prompt.shape} and prompt_mask "
                         f"{prompt_mask.shape} must be the same [P, Lp] shape")
    if tokens.ndim != 3 or tokens.shape[0] != prompt.shape[0] or log_probs.shape != tokens.shape:
        raise ValueError(f"teacher_forced_batch: completions {tokens.shape} and log_probs "
                         f"{log_probs.shape} must be [P, n, T] with P = {prompt.shape[0]} "
                         f"prompts")
    if lengths.shape != tokens.shape[:2]:
        raise ValueError(f"teacher_forced_batch: lengths {lengths.shape} must be [P, n] = "
                         f"{tokens.shape[:2]}")
    p, n, t = tokens.shape
    real = np.arange(t)[None, None, :] < lengths[..., None]                  # [P, n, T]
    comp = np.where(real, tokens, pad_id).astype(np.int32)
    rep = lambda a: np.repeat(np.asarray(a, np.int32), n, axis=0)  # noqa: E731 - [P*n, Lp]
    out_tokens = np.concatenate([rep(prompt), comp.reshape(p * n, t)], axis=1)
    attn = np.concatenate([(rep(prompt_mask) != 0).astype(np.int32),
                           real.reshape(p * n, t).astype(np.int32)], axis=1)
    cmask = np.concatenate([np.zeros((p * n, prompt.shape[1]), np.int32),
                            real.reshape(p * n, t).astype(np.int32)], axis=1)
    logp = np.concatenate([np.zeros((p * n, prompt.shape[1]), np.float32),
                           np.where(real, log_probs, 0.0).reshape(p * n, t).astype(np.float32)],
                          axis=1)
    return {"tokens": out_tokens, "attention_mask": attn, "completion_mask": cmask,
            "sampler_logp": logp}


def check_rewards(rewards: np.ndarray, batch: dict[str, np.ndarray]) -> None:
    """Raises ValueError unless ``rewards`` [P, n] has one entry per row of ``batch``."""
    shape = tuple(np.shape(rewards))
    rows = int(np.shape(batch["tokens"])[0])
    if len(shape) != 2 or shape[0] * shape[1] != rows:
        raise ValueError(f"rewards shape {shape} does not match the rollouts: expected [P, n] "
                         f"with P * n = {rows} rows of tokens {tuple(np.shape(batch['tokens']))}")


def rollout(model: nnx.Module, prompt: np.ndarray, prompt_mask: np.ndarray,
            examples: Sequence[Example], task: Any, tokenizer: Tokenizer, *,
            config: RolloutConfig, key: jax.Array) -> Rollout:
    """Samples ``config.n`` completions of each prompt, decodes and scores them.

    Args:
      model: the policy (a `bitscale.nn.Llama` under its precision policy).
      prompt, prompt_mask: int [P, Lp] LEFT-padded prompts of ``examples``.
      examples: the P source examples (for the verifier).
      task: anything with ``check(completion, example) -> bool``.
      tokenizer: decodes completions (stops at EOS; ids outside the vocabulary become U+FFFD).
      key: sample g of prompt p uses ``sampling.sample_keys(key, P, n)[p, g]``.
    Returns:
      a `Rollout` whose ``batch`` holds `teacher_forced_batch`'s arrays and ``rewards``.
    """
    prompt = np.asarray(prompt)
    if prompt.shape[0] != len(examples):
        raise ValueError(f"rollout: {prompt.shape[0]} prompts but {len(examples)} examples")
    out = sampling.sample_n(model, prompt, prompt_mask, config.n, strategy=config.strategy,
                            key=key, max_new_tokens=int(config.max_new_tokens),
                            eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                            chunk_size=config.chunk_size)
    toks, lp, lens, fin = (np.asarray(x) for x in jax.device_get(tuple(out)))
    completions = [[tokenizer.decode(toks[i, j, :lens[i, j]].tolist(), errors="replace")
                    for j in range(config.n)] for i in range(len(examples))]
    rewards = group_rewards(reward_function(config.reward, task), completions, examples,
                            truncated=~fin, truncation_reward=float(config.truncation_reward))
    correct = np.array([[bool(task.check(c, ex)) for c in row]
                        for row, ex in zip(completions, examples)], bool).reshape(rewards.shape)
    batch = teacher_forced_batch(prompt, prompt_mask, toks, lp, lens, tokenizer.pad_id)
    check_rewards(rewards, batch)
    batch["rewards"] = rewards
    return Rollout(batch, completions, rewards, correct, lens.astype(np.int32), fin.astype(bool))


