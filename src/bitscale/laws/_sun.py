"""Sun et al.'s unified scaling law for floating-point quantization training.

Implemented (arXiv:2501.02423, the unified law of Sec. 4 that combines their exponent, mantissa
and block-size fits with the Chinchilla-style N, D terms)::

    L(N, D, E, M, B) = n / N^alpha + d / D^beta + eps
                       + (D^beta / N^alpha) * log2(B) / (gamma * (E + 0.5)^delta * (M + 0.5)^nu)

E exponent bits, M mantissa bits, B the number of elements sharing one scale. The last term grows
with D, so at fixed N and format the loss is lowest at a critical data size
``D_crit = (d * gamma * (E+0.5)^delta * (M+0.5)^nu / log2(B))^(1 / (2 beta))`` (the paper's
"critical data size"; ``SunLaw.critical_data_size``).

References:
    Sun et al., "Scaling Laws for Floating-Point Quantization Training", arXiv:2501.02423.
    Hoffmann et al., arXiv:2203.15556 (the fitting procedure).
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

__all__ = ["SunLaw"]

_NAMES = ("n", "alpha", "d", "beta", "eps", "gamma", "delta", "nu")


@dataclasses.dataclass(frozen=True)
class SunLaw:
    """``L = n/N^alpha + d/D^beta + eps + D^beta/N^alpha * log2(B) / (gamma (E+.5)^delta
    (M+.5)^nu)``.

    References:
        Sun et al., "Scaling Laws for Floating-Point Quantization Training", arXiv:2501.02423.
    """

    n: float
    alpha: float
    d: float
    beta: float
    eps: float
    gamma: float
    delta: float
    nu: float

    default_bits_field = "man_bits"

    def __post_init__(self) -> None:
        for f in _NAMES:
            v = getattr(self, f)
            if not np.isfinite(v) or (f in ("n", "d", "eps", "gamma") and v <= 0):
                raise ValueError(f"SunLaw: {f} must be finite" + (" and > 0" if f in
                                 ("n", "d", "eps", "gamma") else "") + f", got {v!r}")

    def precision_penalty(self, n_params: Any, tokens: Any, exp_bits: Any, man_bits: Any,
                          block_size: Any) -> jax.Array:
        """The last (precision) term of the law alone."""
        fn = "SunLaw.precision_penalty"
        check_values("n_params", n_params, fn=fn)
        check_values("tokens", tokens, fn=fn)
        check_values("exp_bits", exp_bits, fn=fn, strict=False)
        check_values("man_bits", man_bits, fn=fn, strict=False)
        check_values("block_size", block_size, fn=fn, lo=1, strict=False)
        n = jnp.asarray(n_params)
        n = n.astype(jnp.result_type(n.dtype, jnp.float32))
        d, e, m, b = (jnp.asarray(v, n.dtype) for v in (tokens, exp_bits, man_bits, block_size))
        return (d ** self.beta / n ** self.alpha * jnp.log2(b)
                / (self.gamma * (e + 0.5) ** self.delta * (m + 0.5) ** self.nu))

    def predict(self, n_params: Any, tokens: Any, exp_bits: Any, man_bits: Any,
                block_size: Any) -> jax.Array:
        """The predicted loss (arrays broadcast)."""
        pen = self.precision_penalty(n_params, tokens, exp_bits, man_bits, block_size)
        n = jnp.asarray(n_params, pen.dtype)
        d = jnp.asarray(tokens, pen.dtype)
        return self.n / n ** self.alpha + self.d / d ** self.beta + self.eps + pen

    def predict_runs(self, runs: Sequence[Run]) -> np.ndarray:
        """The predicted loss of each run, float64 [R]; every run needs E, M and B."""
        fn = "SunLaw.predict_runs"
        runs = check_runs(runs, fn=fn)
        n, d, e, m, b = (runs_column(runs, f, fn=fn) for f in
                         ("n_params", "tokens", "exp_bits", "man_bits", "block_size"))
        return (self.n / n ** self.alpha + self.d / d ** self.beta + self.eps
                + d ** self.beta / n ** self.alpha * np.log2(b)
                / (self.gamma * (e + 0.5) ** self.delta * (m + 0.5) ** self.nu))

    def critical_data_size(self, n_params: Any, exp_bits: Any, man_bits: Any,
                           block_size: Any) -> np.ndarray:
        """Tokens D at which the predicted loss is lowest for fixed N and format (numpy float64;
        +inf when B = 1, where the precision term vanishes). Needs beta > 0."""
        if not self.beta > 0:
            raise ValueError(f"SunLaw.critical_data_size: needs beta > 0, got {self.beta!r}")
        n, e, m, b = (np.asarray(v, np.float64) for v in
                      (n_params, exp_bits, man_bits, block_size))
        k = np.log2(b) / (self.gamma * (e + 0.5) ** self.delta * (m + 0.5) ** self.nu)
        with np.errstate(divide="ignore"):
            return (self.d * n ** self.alpha / k) ** (1.0 / (2.0 * self.beta))

    @classmethod
    def fit(cls, runs: Sequence[Run], *, init: SunLaw | None = None, seed: int = 0,
            num_starts: int = 32, loss: str = "huber", delta: float = 1e-3,
            max_iters: int = 1000) -> LawFit[SunLaw]:
        """Fit the law to runs (host, float64); returns the fitted law and diagnostics.

        Every run needs exp_bits, man_bits and block_size; N, D, E, M and B must each take at
        least 2 distinct values, and there must be more runs than the 8 parameters.

        Objective and search as ``KumarLaw.fit``: mean Huber (``delta``) of log-loss residuals,
        the law in log-sum-exp form with 4 log-terms ``ln - alpha x_N``, ``ld - beta x_D``,
        ``le`` and ``beta x_D - alpha x_N + log log2 B - lg - delta x_E - nu x_M`` (x_*: logs of
        N, D, E + 0.5, M + 0.5 centred on their means over the runs, so that lg, ln, ld are
        decorrelated from the exponents), L-BFGS from ``num_starts`` seeded starts under vmap.

        References:
            Sun et al., arXiv:2501.02423; Hoffmann et al., arXiv:2203.15556, App. D.2.
        """
        fn = "SunLaw.fit"
        check_fit_options(fn=fn, num_starts=num_starts, loss=loss, delta=delta,
                          max_iters=max_iters, seed=seed)
        runs = check_runs(runs, fn=fn)
        if init is not None and not isinstance(init, SunLaw):
            raise ValueError(f"{fn}: init must be a SunLaw or None, got {type(init).__name__}")
        cols = {f: runs_column(runs, f, fn=fn) for f in
                ("n_params", "tokens", "loss", "exp_bits", "man_bits", "block_size")}
        for f in ("exp_bits", "man_bits", "block_size"):
            if len(set(cols[f].tolist())) < 2:
                what = {"exp_bits": "delta", "man_bits": "nu", "block_size": "gamma"}[f]
                raise ValueError(f"{fn}: every run has {f}={cols[f][0]:g}; {what} is then not "
                                 f"identifiable; vary {f} across runs")
        check_enough_runs(runs, len(_NAMES), fn=fn)
        x = {"log_n": np.log(cols["n_params"]), "log_d": np.log(cols["tokens"]),
             "log_e": np.log(cols["exp_bits"] + 0.5), "log_m": np.log(cols["man_bits"] + 0.5)}
        c = {k: float(v.mean()) for k, v in x.items()}
        with np.errstate(divide="ignore"):
            log_log2b = np.log(np.log2(cols["block_size"]))  # -inf at B = 1: no penalty term
        data = {k: v - c[k] for k, v in x.items()}
        data.update(log_log2b=log_log2b, log_loss=np.log(cols["loss"]))
        min_loss = float(cols["loss"].min())
        finite_ll = log_log2b[np.isfinite(log_log2b)]
        starts = _starts(num_starts, seed, min_loss,
                         float(finite_ll.mean()) if finite_ll.size else 0.0)
        if init is not None:
            starts[0] = _to_theta(init, c)
        theta, obj, n_ok = multistart_fit(_terms, data, starts, loss=loss, delta=delta,
                                          max_iters=max_iters, fn=fn)
        law = _from_theta(theta, c)
        return make_fit(law, runs, law.predict_runs(runs), objective=obj,
                        num_starts=num_starts, num_finite=n_ok, loss=loss, delta=delta)


def _terms(theta: jax.Array, data: dict[str, jax.Array]) -> jax.Array:
    """Log-terms [R, 4] for theta = (ln, alpha, ld, beta, le, lg, delta, nu) (centred)."""
    ln, alpha, ld, beta, le, lg, delta, nu = (theta[i] for i in range(8))
    t1 = ln - alpha * data["log_n"]
    t2 = ld - beta * data["log_d"]
    t3 = jnp.broadcast_to(le, t1.shape)
    t4 = (beta * data["log_d"] - alpha * data["log_n"] + data["log_log2b"] - lg
          - delta * data["log_e"] - nu * data["log_m"])
    return jnp.stack([t1, t2, t3, t4], axis=-1)


def _starts(num: int, seed: int, min_loss: float, mean_log_log2b: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = lambda lo, hi: rng.uniform(lo, hi, num)  # noqa: E731
    return np.stack([np.log(u(0.02, 1.0) * min_loss), u(0.1, 0.8),
                     np.log(u(0.02, 1.0) * min_loss), u(0.1, 0.8),
                     np.log(u(0.3, 0.95) * min_loss),
                     mean_log_log2b - np.log(u(0.002, 0.3) * min_loss),
                     u(0.5, 4.0), u(0.5, 4.0)], axis=-1)


def _to_theta(law: SunLaw, c: dict[str, float]) -> np.ndarray:
    lg = (np.log(law.gamma) - law.beta * c["log_d"] + law.alpha * c["log_n"]
          + law.delta * c["log_e"] + law.nu * c["log_m"])
    return np.asarray([np.log(law.n) - law.alpha * c["log_n"], law.alpha,
                       np.log(law.d) - law.beta * c["log_d"], law.beta, np.log(law.eps), lg,
                       law.delta, law.nu])


def _from_theta(theta: np.ndarray, c: dict[str, float]) -> SunLaw:
    ln, alpha, ld, beta, le, lg, delta, nu = (float(v) for v in theta)
    log_gamma = lg + beta * c["log_d"] - alpha * c["log_n"] - delta * c["log_e"] - nu * c["log_m"]
    return SunLaw(n=float(np.exp(ln + alpha * c["log_n"])), alpha=alpha,
                  d=float(np.exp(ld + beta * c["log_d"])), beta=beta, eps=float(np.exp(le)),
                  gamma=float(np.exp(log_gamma)), delta=delta, nu=nu)
