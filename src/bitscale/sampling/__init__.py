"""Sampling: strategies (greedy, temperature, top-k, top-p, min-p), a cached decode loop and
best-of-N (one prefill per prompt, the KV cache broadcast to N samples with their own keys).

    from bitscale import sampling
    out = sampling.sample(model, prompt, prompt_mask, strategy=sampling.TopP(0.9),
                          key=jax.random.key(0), max_new_tokens=64, eos_id=2, pad_id=0)
    best = sampling.sample_n(model, prompt, prompt_mask, 16, strategy="temperature:0.7",
                             key=jax.random.key(0), max_new_tokens=64, eos_id=2, pad_id=0)

``log_probs`` in the results are the model's raw (temperature-1, untruncated) log-probs of the
chosen tokens, the behaviour log-probs of RL; ``log_softmax(strategy.process(logits))`` gives
the strategy's own distribution.
"""

from bitscale.sampling._best_of_n import sample_n
from bitscale.sampling._categorical import argmax, categorical, chosen_log_probs
from bitscale.sampling._decode import DecodeState, Samples, row_keys, sample, sample_keys
from bitscale.sampling._strategies import (
    STRATEGIES,
    Greedy,
    MinP,
    Strategy,
    Temperature,
    TopK,
    TopP,
    parse_strategy,
    strategy_from_name,
)

__all__ = [
    "STRATEGIES", "DecodeState", "Greedy", "MinP", "Samples", "Strategy", "Temperature", "TopK",
    "TopP", "argmax", "categorical", "chosen_log_probs", "parse_strategy", "row_keys", "sample",
    "sample_keys", "sample_n", "strategy_from_name",
]
