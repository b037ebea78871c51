"""Kumar et al.'s precision-aware scaling law for quantization-aware (pre-)training, and their
post-training-quantization degradation term.

Implemented (arXiv:2411.04330, Sec. 4, the multiplicative form for weights, activations and KV
cache all trained in low precision, with the Chinchilla form of Sec. 2)::

    L(N, D, P_w, P_a, P_kv) = A * N_eff^(-alpha) + B * D^(-beta) + E
    N_eff = N * (1 - exp(-P_w / gamma_w)) * (1 - exp(-P_a / gamma_a)) * (1 - exp(-P_kv / gamma_kv))

An unquantized part (bits None, or +inf in arrays) contributes a factor 1. The PTQ term of their
Sec. 3, added to the loss of a model post-train quantized to P_post bits, is::

    delta_PTQ(N, D, P_post) = C_T * (D^gamma_D / N^gamma_N) * exp(-P_post / gamma_post)

References:
    Kumar et al., "Scaling Laws for Precision", arXiv:2411.04330.
    Hoffmann et al., arXiv:2203.15556 (the A N^-alpha + B D^-beta + E form and its fitting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bitscale.laws._fit import (
    LawFit,
    check_enough_runs,
    check_fit_options,
    make_fit,
    multistart_fit,
)
from bitscale.laws._runs import Run, check_runs, check_values, runs_column

__all__ = ["KumarLaw", "ptq_degradation"]

_BITS = ("w_bits", "a_bits", "kv_bits")
_GAMMAS = ("gamma_w", "gamma_a", "gamma_kv")


def _log_one_minus_exp(bits: jax.Array, gamma: jax.Array) -> jax.Array:
    """log(1 - exp(-bits / gamma)); 0 where bits is +inf (unquantized), gradient-safe."""
    finite = jnp.isfinite(bits)
    x = jnp.where(finite, bits, 1.0) / gamma
    return jnp.where(finite, jnp.log(-jnp.expm1(-x)), 0.0)


@dataclasses.dataclass(frozen=True)
class KumarLaw:
    """``L = A N_eff^-alpha + B D^-beta + E``, ``N_eff = N prod_i (1 - exp(-P_i / gamma_i))``.

    A gamma of None means that part (weights ``w``, activations ``a``, KV cache ``kv``) is not
    modelled: its factor is 1 and predicting with its bits set raises a ValueError.

    References:
        Kumar et al., "Scaling Laws for Precision", arXiv:2411.04330, Sec. 4.
    """

    A: float
    alpha: float
    B: float
    beta: float
    E: float
    gamma_w: float | None = None
    gamma_a: float | None = None
    gamma_kv: float | None = None

    default_bits_field = "w_bits"

    def __post_init__(self) -> None:
        for f in ("A", "B", "E", *_GAMMAS):
            v = getattr(self, f)
            if v is not None and not (np.isfinite(v) and v > 0):
                raise ValueError(f"KumarLaw: {f} must be finite and > 0, got {v!r}")
        for f in ("alpha", "beta"):
            if not np.isfinite(getattr(self, f)):
                raise ValueError(f"KumarLaw: {f} must be finite, got {getattr(self, f)!r}")

    def effective_params(self, n_params: Any, w_bits: Any = None, a_bits: Any = None,
                         kv_bits: Any = None) -> jax.Array:
        """N_eff for bit widths (None or +inf: unquantized), broadcast over the inputs."""
        fn = "KumarLaw.effective_params"
        check_values("n_params", n_params, fn=fn)
        log_n = jnp.log(jnp.asarray(n_params))
        for name, gname, bits in zip(_BITS, _GAMMAS, (w_bits, a_bits, kv_bits)):
            if bits is None:
                continue
            gamma = getattr(self, gname)
            if gamma is None:
                raise ValueError(f"{fn}: {name} was given but this law has {gname}=None (fitted "
                                 f"without {name}); pass {name}=None")
            check_values(name, bits, fn=fn, allow_inf=True)
            log_n = log_n + _log_one_minus_exp(jnp.asarray(bits, log_n.dtype), gamma)
        return jnp.exp(log_n)

    def predict(self, n_params: Any, tokens: Any, w_bits: Any = None, a_bits: Any = None,
                kv_bits: Any = None) -> jax.Array:
        """The predicted loss (arrays broadcast; None or +inf bits: unquantized)."""
        check_values("tokens", tokens, fn="KumarLaw.predict")
        n_eff = self.effective_params(n_params, w_bits, a_bits, kv_bits)
        d = jnp.asarray(tokens, n_eff.dtype)
        return self.A * n_eff ** (-self.alpha) + self.B * d ** (-self.beta) + self.E

    def predict_runs(self, runs: Sequence[Run]) -> np.ndarray:
        """The predicted loss of each run, float64 [R] (computed in numpy float64)."""
        runs = check_runs(runs, fn="KumarLaw.predict_runs")
        log_n = np.log(runs_column(runs, "n_params", fn="KumarLaw.predict_runs"))
        for name, gname in zip(_BITS, _GAMMAS):
            bits = runs_column(runs, name, fn="KumarLaw.predict_runs", required=False,
                               fill=np.inf)
            gamma = getattr(self, gname)
            if gamma is None:
                if np.isfinite(bits).any():
                    raise ValueError(f"KumarLaw.predict_runs: runs set {name} but this law has "
                                     f"{gname}=None")
                continue
            q = np.isfinite(bits)
            log_n[q] += np.log(-np.expm1(-bits[q] / gamma))
        d = np.asarray([r.tokens for r in runs], np.float64)
        return self.A * np.exp(-self.alpha * log_n) + self.B * d ** (-self.beta) + self.E

    @classmethod
    def fit(cls, runs: Sequence[Run], *, init: KumarLaw | None = None, seed: int = 0,
            num_starts: int = 32, loss: str = "huber", delta: float = 1e-3,
            max_iters: int = 1000) -> LawFit[KumarLaw]:
        """Fit the law to runs (host, float64); returns the fitted law and diagnostics.

        Objective: mean Huber loss (``delta`` on log-loss residuals, Hoffmann et al.'s 1e-3 by
        default; ``loss="l2"`` for least squares) of ``log L_pred - log L``, with L_pred in the
        log-sum-exp form ``LSE(a - alpha (log N_eff - c_N), b - beta (log D - c_D), e)``
        (``c_N``, ``c_D``: the runs' mean log N and log D, which decorrelates a from alpha) and
        ``gamma_i = exp(g_i)``. Minimised by optax L-BFGS from ``num_starts`` starts drawn
        around the data's loss scale with ``seed`` (the first start is ``init`` if given),
        all at once under ``vmap``; the lowest objective wins.

        A gamma is fitted only for a precision some run sets (its bits not None); it must then
        take at least 2 distinct values across the runs (None counts as a value), else it is
        not identifiable and a ValueError says so. Needs more runs than free parameters.

        References:
            Kumar et al., arXiv:2411.04330; Hoffmann et al., arXiv:2203.15556, App. D.2.
        """
        fn = "KumarLaw.fit"
        check_fit_options(fn=fn, num_starts=num_starts, loss=loss, delta=delta,
                          max_iters=max_iters, seed=seed)
        runs = check_runs(runs, fn=fn)
        bits = np.stack([runs_column(runs, b, fn=fn, required=False, fill=np.inf)
                         for b in _BITS], axis=-1)
        active = tuple(bool(np.isfinite(bits[:, i]).any()) for i in range(3))
        for i, name in enumerate(_BITS):
            if active[i] and len(set(bits[:, i].tolist())) < 2:
                raise ValueError(f"{fn}: every run has {name}={bits[0, i]:g}; {_GAMMAS[i]} is "
                                 f"then not identifiable (it trades off against A). Vary "
                                 f"{name} across runs, or set it to None in every run")
        check_enough_runs(runs, 5 + sum(active), fn=fn)
        if init is not None and not isinstance(init, KumarLaw):
            raise ValueError(f"{fn}: init must be a KumarLaw or None, got {type(init).__name__}")
        log_n = np.log(runs_column(runs, "n_params", fn=fn))
        log_d = np.log(runs_column(runs, "tokens", fn=fn))
        log_y = np.log(runs_column(runs, "loss", fn=fn))
        c_n, c_d = float(log_n.mean()), float(log_d.mean())
        data = {"log_n": log_n - c_n, "log_d": log_d - c_d, "bits": bits, "log_loss": log_y,
                "active": np.asarray(active, np.float64)}
        starts = _starts(num_starts, seed, float(np.exp(log_y.min())))
        if init is not None:
            starts[0] = _to_theta(init, c_n, c_d)
        theta, obj, n_ok = multistart_fit(_terms, data, starts, loss=loss, delta=delta,
                                          max_iters=max_iters, fn=fn)
        law = _from_theta(theta, c_n, c_d, active)
        return make_fit(law, runs, law.predict_runs(runs), objective=obj,
                        num_starts=num_starts, num_finite=n_ok, loss=loss, delta=delta)


def _terms(theta: jax.Array, data: dict[str, jax.Array]) -> jax.Array:
    """Log-terms [R, 3] of the law for theta = (a, alpha, b, beta, e, g_w, g_a, g_kv)."""
    gammas = jnp.exp(jnp.clip(theta[5:8], -20.0, 20.0))[None, :]
    log_factor = _log_one_minus_exp(data["bits"], gammas) * data["active"][None, :]
    log_neff = data["log_n"] + jnp.sum(log_factor, axis=-1)
    t1 = theta[0] - theta[1] * log_neff
    t2 = theta[2] - theta[3] * data["log_d"]
    t3 = jnp.broadcast_to(theta[4], t1.shape)
    return jnp.stack([t1, t2, t3], axis=-1)


def _starts(num: int, seed: int, min_loss: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = lambda lo, hi: rng.uniform(lo, hi, num)  # noqa: E731
    return np.stack([np.log(u(0.02, 1.0) * min_loss), u(0.1, 0.8),
                     np.log(u(0.02, 1.0) * min_loss), u(0.1, 0.8),
                     np.log(u(0.3, 0.95) * min_loss),
                     u(np.log(0.5), np.log(6.0)), u(np.log(0.5), np.log(6.0)),
                     u(np.log(0.5), np.log(6.0))], axis=-1)


def _to_theta(law: KumarLaw, c_n: float, c_d: float) -> np.ndarray:
    g = [np.log(v) if v is not None else np.log(2.0) for v in
         (law.gamma_w, law.gamma_a, law.gamma_kv)]
    return np.asarray([np.log(law.A) - law.alpha * c_n, law.alpha,
                       np.log(law.B) - law.beta * c_d, law.beta, np.log(law.E), *g])


def _from_theta(theta: np.ndarray, c_n: float, c_d: float,
                active: tuple[bool, ...]) -> KumarLaw:
    a, alpha, b, beta, e = (float(v) for v in theta[:5])
    gammas = [float(np.exp(np.clip(theta[5 + i], -20.0, 20.0))) if active[i] else None
              for i in range(3)]
    return KumarLaw(A=float(np.exp(a + alpha * c_n)), alpha=alpha,
                    B=float(np.exp(b + beta * c_d)), beta=beta, E=float(np.exp(e)),
                    gamma_w=gammas[0], gamma_a=gammas[1], gamma_kv=gammas[2])


def ptq_degradation(n_params: Any, tokens: Any, post_bits: Any, *, C_T: float, gamma_D: float,
                    gamma_N: float, gamma_post: float) -> jax.Array:
    """Kumar et al.'s post-training-quantization loss increase
    ``delta_PTQ = C_T * D^gamma_D / N^gamma_N * exp(-P_post / gamma_post)`` (predict only).

    It grows with tokens D: overtrained models degrade more when quantized after training.

    References:
        Kumar et al., "Scaling Laws for Precision", arXiv:2411.04330, Sec. 3.
    """
    fn = "ptq_degradation"
    for name, v in (("n_params", n_params), ("tokens", tokens)):
        check_values(name, v, fn=fn)
    check_values("post_bits", post_bits, fn=fn, allow_inf=True)
    for name, v in (("C_T", C_T), ("gamma_post", gamma_post)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{fn}: {name} must be finite and > 0, got {v!r}")
    n = jnp.asarray(n_params)
    d = jnp.asarray(tokens, n.dtype)
    p = jnp.asarray(post_bits, n.dtype)
    return C_T * d ** gamma_D / n ** gamma_N * jnp.exp(-p / gamma_post)
