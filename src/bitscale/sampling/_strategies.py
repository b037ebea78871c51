"""Sampling strategies: frozen, hashable dataclasses with ``get_next_tokens(logits, key)``.

Every strategy maps logits [..., V] (any float dtype; computed in float32) to int32 tokens [...].
``process(logits)`` gives the float32 logits of the strategy's own sampling distribution:
temperature first, then truncation (tokens outside the kept set are ``-inf``), as transformers'
default warper order (temperature, top-k, top-p, min-p). ``log_softmax(process(logits))`` is the
strategy's distribution; the sampler itself records the model's raw ``log_softmax(logits)`` of the
chosen token (`bitscale.sampling.chosen_log_probs`), the behaviour log-prob at temperature 1.

Ties: top-k keeps every token whose logit equals the k-th largest; top-p and min-p keep every
token at the threshold. With distinct logits the kept sets are exact.

References:
  Fan et al., "Hierarchical Neural Story Generation", arXiv:1805.04833 (top-k sampling).
  Holtzman et al., "The Curious Case of Neural Text Degeneration", arXiv:1904.09751 (nucleus /
    top-p sampling).
  Nguyen et al., "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs",
    arXiv:2407.01082.
  gemma `gm.text.SamplingStrategy` (frozen dataclasses with ``get_next_tokens``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from bitscale.sampling._categorical import argmax, categorical

_NEG_INF = float("-inf")


def _f32(logits: jax.Array) -> jax.Array:
    return jnp.asarray(logits).astype(jnp.float32)


def _check_temperature(name: str, t: Any) -> None:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"{name}: temperature must be a finite number > 0, got {t!r} "
                         "(use Greedy() for argmax decoding)")


def _check_p(name: str, p: Any) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"{name}: p must be a number in (0, 1], got {p!r}")


class Strategy:
    """Base class: ``get_next_tokens`` samples ``categorical(key, process(logits))``."""

    def process(self, logits: jax.Array) -> jax.Array:
        """float32 logits [..., V] of the sampling distribution (``-inf`` outside its support)."""
        raise NotImplementedError

    def get_next_tokens(self, logits: jax.Array, key: jax.Array) -> jax.Array:
        """int32 tokens [...] for logits [..., V]; one ``key`` for the whole array."""
        return categorical(key, self.process(logits))


@dataclasses.dataclass(frozen=True)
class Greedy(Strategy):
    """Argmax of the float32 logits (ties: lowest id); ignores the key."""

    def process(self, logits: jax.Array) -> jax.Array:
        logits = _f32(logits)
        ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
        return jnp.where(ids == argmax(logits)[..., None], 0.0, _NEG_INF)

    def get_next_tokens(self, logits: jax.Array, key: jax.Array) -> jax.Array:
        del key
        return argmax(logits)


@dataclasses.dataclass(frozen=True)
class Temperature(Strategy):
    """Ancestral sampling from ``softmax(logits / t)``; ``t = 1`` is the model's distribution."""

    t: float = 1.0

    def __post_init__(self):
        _check_temperature("Temperature", self.t)

    def process(self, logits: jax.Array) -> jax.Array:
        return _f32(logits) / jnp.float32(self.t)


@dataclasses.dataclass(frozen=True)
class TopK(Strategy):
    """Sampling from the ``k`` most likely tokens at ``temperature`` (Fan et al., 2018)."""

    k: int
    temperature: float = 1.0

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"TopK: k must be an integer >= 1, got {self.k!r}")
        _check_temperature("TopK", self.temperature)

    def process(self, logits: jax.Array) -> jax.Array:
        x = _f32(logits) / jnp.float32(self.temperature)
        k = min(self.k, x.shape[-1])
        kth = jax.lax.top_k(x, k)[0][..., -1:]
        return jnp.where(x >= kth, x, _NEG_INF)


@dataclasses.dataclass(frozen=True)
class TopP(Strategy):
    """Nucleus sampling (Holtzman et al., 2019): the smallest set of most likely tokens whose
    probability under ``softmax(logits / temperature)`` reaches ``p`` (the top token always)."""

    p: float
    temperature: float = 1.0

    def __post_init__(self):
        _check_p("TopP", self.p)
        _check_temperature("TopP", self.temperature)

    def process(self, logits: jax.Array) -> jax.Array:
        x = _f32(logits) / jnp.float32(self.temperature)
        if self.p >= 1:
            return x
        desc = -jnp.sort(-x, axis=-1)
        probs = jax.nn.softmax(desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < jnp.float32(self.p)          # a prefix of the sorted tokens
        threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(x >= threshold, x, _NEG_INF)


@dataclasses.dataclass(frozen=True)
class MinP(Strategy):
    """Min-p sampling (Nguyen et al., 2024): keeps the tokens whose probability under
    ``softmax(logits / temperature)`` is at least ``p`` times the top token's."""

    p: float
    temperature: float = 1.0

    def __post_init__(self):
        _check_p("MinP", self.p)
        _check_temperature("MinP", self.temperature)

    def process(self, logits: jax.Array) -> jax.Array:
        x = _f32(logits) / jnp.float32(self.temperature)
        threshold = jnp.max(x, axis=-1, keepdims=True) + jnp.float32(math.log(self.p))
        return jnp.where(x >= threshold, x, _NEG_INF)


STRATEGIES: dict[str, type] = {"greedy": Greedy, "temperature": Temperature, "top_k": TopK,
                               "top_p": TopP, "min_p": MinP}
_ALIASES = {"topk": "top_k", "topp": "top_p", "minp": "min_p", "nucleus": "top_p"}


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {name!r}; valid: {sorted(STRATEGIES)}")
    return key


def strategy_from_name(name: str, **kwargs: Any) -> Strategy:
    """The strategy called ``name`` (``greedy``, ``temperature``, ``top_k``, ``top_p``,
    ``min_p``; case and ``-``/``_`` ignored) built with ``kwargs``.

    Raises ValueError for an unknown name (listing the valid ones) or bad arguments.
    """
    key = _canonical(name)
    cls = STRATEGIES[key]
    try:
        return cls(**kwargs)
    except TypeError as e:
        fields = [f.name for f in dataclasses.fields(cls)]
        raise ValueError(f"bad arguments {kwargs} for strategy {key!r} (fields: {fields}): "
                         f"{e}") from None


def parse_strategy(spec: "str | Strategy") -> Strategy:
    """A strategy from a string: ``name`` or ``name:arg,key=value,...``.

    The first bare argument fills the first field: ``"greedy"``, ``"temperature:0.7"``,
    ``"top_k:40"``, ``"top_p:0.9,temperature=0.8"``, ``"min_p:p=0.1"``. A `Strategy` is returned
    unchanged. Raises ValueError on an unknown name or a malformed argument.
    """
    if isinstance(spec, Strategy):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"a sampling strategy must be a Strategy or a string, got {spec!r}")
    name, _, rest = spec.partition(":")
    key = _canonical(name)
    cls = STRATEGIES[key]
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for i, item in enumerate(a.strip() for a in rest.split(",") if a.strip()):
        k, eq, v = item.partition("=")
        if not eq:
            if i > 0 or not fields:
                raise ValueError(f"parse_strategy({spec!r}): positional argument {item!r} must "
                                 f"come first (fields of {key!r}: {fields})")
            k, v = fields[0], item
        k = k.strip()
        if k not in fields:
            raise ValueError(f"parse_strategy({spec!r}): {key!r} has no field {k!r}; fields: "
                             f"{fields}")
        try:
            kwargs[k] = int(v) if k == "k" else float(v)
        except ValueError:
            raise ValueError(f"parse_strategy({spec!r}): {k}={v.strip()!r} is not a number") \
                from None
    return strategy_from_name(key, **kwargs)
