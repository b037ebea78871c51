"""The fitting engine the laws share: a robust loss on log-loss residuals, minimised by L-BFGS
(optax) from many starts at once (``vmap``), in float64; the fit result and its diagnostics; and
``held_out_error``.

Each law writes its prediction as ``log L = logsumexp(terms(theta))`` with one log-term per
additive part of the law (the "LSE" form of Hoffmann et al.'s fitting), so that no term can
underflow or overflow during the search, and parameterises positive constants by their logs.

References:
    Hoffmann et al., "Training Compute-Optimal Large Language Models", arXiv:2203.15556,
    Appendix D.2 (Huber loss, delta = 1e-3, on log-loss residuals; L-BFGS from a grid of starts).
    Liu & Nocedal, "On the limited memory BFGS method", 1989 (L-BFGS).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bitscale.laws._runs import Run, check_runs

__all__ = ["LawFit", "HeldOutError", "held_out_error"]

LOSSES = ("huber", "l2")
P = TypeVar("P")


class Law(Protocol):
    """What ``held_out_error`` and ``plot_fit`` need of a law's parameter class."""

    @classmethod
    def fit(cls, runs: Sequence[Run], **kwargs: Any) -> LawFit[Any]: ...

    def predict_runs(self, runs: Sequence[Run]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True, eq=False)
class LawFit(Generic[P]):
    """A fitted law and how well it fits the runs it was fitted to.

    Attributes:
        params: the fitted law (``KumarLaw`` or ``SunLaw``).
        residuals: loss - predicted loss per run, float64 [R] (in the order of the runs).
        rmse: root-mean-square of ``residuals`` (in loss units, nats).
        rel_rmse: root-mean-square of ``residuals / loss``.
        max_rel_error: max of ``|residuals| / loss``.
        objective: the minimised objective (mean robust loss on log residuals) at ``params``.
        num_starts: how many starts the multi-start search ran.
        num_finite: how many of them ended at a finite objective.
        loss: the robust loss used (``"huber"`` or ``"l2"``) and ``delta`` its Huber threshold.
    """

    params: P
    residuals: np.ndarray
    rmse: float
    rel_rmse: float
    max_rel_error: float
    objective: float
    num_starts: int
    num_finite: int
    loss: str
    delta: float


def check_fit_options(*, fn: str, num_starts: int, loss: str, delta: float, max_iters: int,
                      seed: int) -> None:
    """ValueError for a bad multi-start option, naming the value and what is accepted."""
    if not isinstance(num_starts, int) or num_starts < 1:
        raise ValueError(f"{fn}: num_starts must be an int >= 1, got {num_starts!r}")
    if loss not in LOSSES:
        raise ValueError(f"{fn}: loss must be one of {LOSSES}, got {loss!r}")
    if not float(delta) > 0:
        raise ValueError(f"{fn}: delta must be > 0, got {delta!r}")
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"{fn}: max_iters must be an int >= 1, got {max_iters!r}")
    if not isinstance(seed, int):
        raise ValueError(f"{fn}: seed must be an int, got {seed!r}")


def check_enough_runs(runs: Sequence[Run], num_params: int, *, fn: str) -> None:
    """At least ``num_params + 1`` runs, with at least 2 distinct N and 2 distinct D."""
    if len(runs) <= num_params:
        raise ValueError(f"{fn}: {len(runs)} runs cannot determine {num_params} free "
                         f"parameters; need at least {num_params + 1} (and many more for a "
                         f"stable fit)")
    for field in ("n_params", "tokens"):
        if len({getattr(r, field) for r in runs}) < 2:
            raise ValueError(f"{fn}: every run has the same {field} "
                             f"({getattr(runs[0], field)!r}); the law needs at least 2 values")


def _robust(r: jax.Array, loss: str, delta: float) -> jax.Array:
    if loss == "l2":
        return 0.5 * r * r / delta
    a = jnp.abs(r)
    return jnp.where(a <= delta, 0.5 * r * r / delta, a - 0.5 * delta)  # Huber / delta


def _objective(theta: jax.Array, data: dict[str, jax.Array], terms_fn: Callable[..., jax.Array],
               loss: str, delta: float) -> jax.Array:
    log_pred = jax.nn.logsumexp(terms_fn(theta, data), axis=-1)
    return jnp.mean(_robust(log_pred - data["log_loss"], loss, delta))


@functools.partial(jax.jit, static_argnames=("terms_fn", "loss", "delta", "max_iters", "tol"))
def _multistart(starts: jax.Array, data: dict[str, jax.Array], *,
                terms_fn: Callable[..., jax.Array], loss: str, delta: float, max_iters: int,
                tol: float) -> tuple[jax.Array, jax.Array]:
    def fun(theta):
        return _objective(theta, data, terms_fn, loss, delta)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        theta, state = carry
        value, grad = value_and_grad(theta, state=state)
        updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(theta, updates), state

    def keep_going(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        gnorm = optax.tree_utils.tree_norm(optax.tree_utils.tree_get(state, "grad"))
        return (count == 0) | ((count < max_iters) & (gnorm >= tol) & jnp.isfinite(gnorm))

    def one(theta0):
        theta, _ = jax.lax.while_loop(keep_going, step, (theta0, opt.init(theta0)))
        return theta, fun(theta)

    return jax.vmap(one)(starts)


def multistart_fit(terms_fn: Callable[..., jax.Array], data: dict[str, np.ndarray],
                   starts: np.ndarray, *, loss: str, delta: float, max_iters: int,
                   fn: str) -> tuple[np.ndarray, float, int]:
    """Minimise the robust log-residual objective from every start (float64); returns the best
    theta, its objective and how many starts ended finite.

    ``terms_fn(theta, data) -> [R, K]`` log-terms (a module-level function: it is a static jit
    argument); ``data`` holds float64 arrays including ``log_loss`` [R].
    """
    with jax.enable_x64(True):
        d = {k: jnp.asarray(v, jnp.float64) for k, v in data.items()}
        thetas, values = _multistart(jnp.asarray(starts, jnp.float64), d, terms_fn=terms_fn,
                                     loss=loss, delta=float(delta), max_iters=int(max_iters),
                                     tol=1e-10)
        thetas, values = np.asarray(thetas), np.asarray(values)
    finite = np.isfinite(values) & np.all(np.isfinite(thetas), axis=-1)
    if not finite.any():
        raise RuntimeError(f"{fn}: every one of {len(values)} starts diverged (non-finite "
                           f"objective); check the runs for outliers or pass init=")
    best = int(np.argmin(np.where(finite, values, np.inf)))
    return thetas[best], float(values[best]), int(finite.sum())


def make_fit(params: P, runs: Sequence[Run], predicted: np.ndarray, *, objective: float,
             num_starts: int, num_finite: int, loss: str, delta: float) -> LawFit[P]:
    """A LawFit with residual diagnostics of ``predicted`` against the runs' losses."""
    y = np.asarray([r.loss for r in runs], np.float64)
    res = y - np.asarray(predicted, np.float64)
    rel = res / y
    return LawFit(params=params, residuals=res, rmse=float(np.sqrt(np.mean(res ** 2))),
                  rel_rmse=float(np.sqrt(np.mean(rel ** 2))),
                  max_rel_error=float(np.max(np.abs(rel))), objective=objective,
                  num_starts=num_starts, num_finite=num_finite, loss=loss, delta=float(delta))


@dataclasses.dataclass(frozen=True, eq=False)
class HeldOutError(Generic[P]):
    """How well a law fitted on some runs predicts others.

    Attributes:
        fit: the fit on the training runs.
        rel_errors: (predicted - loss) / loss on each test run, float64 [T].
        mean_abs_rel_error: mean of ``|rel_errors|``.
        max_abs_rel_error: max of ``|rel_errors|``.
        rmse: root-mean-square prediction error on the test runs (loss units).
    """

    fit: LawFit[P]
    rel_errors: np.ndarray
    mean_abs_rel_error: float
    max_abs_rel_error: float
    rmse: float


def held_out_error(law: type[Law], train_runs: Sequence[Run], test_runs: Sequence[Run],
                   **fit_kwargs: Any) -> HeldOutError[Any]:
    """Fit ``law`` (the class, ``KumarLaw`` or ``SunLaw``) on ``train_runs`` (``fit_kwargs`` go
    to its ``fit``) and report its relative prediction error on ``test_runs``.

    References:
        Hoffmann et al., arXiv:2203.15556; Kumar et al., arXiv:2411.04330 (validation by
        predicting larger held-out runs).
    """
    fn = "held_out_error"
    if not (isinstance(law, type) and callable(getattr(law, "fit", None))
            and callable(getattr(law, "predict_runs", None))):
        raise ValueError(f"{fn}: law must be a law class such as KumarLaw or SunLaw, got "
                         f"{law!r}")
    train_runs = check_runs(train_runs, fn=fn)
    test_runs = check_runs(test_runs, fn=fn)
    fit = law.fit(train_runs, **fit_kwargs)
    pred = np.asarray(fit.params.predict_runs(test_runs), np.float64)
    y = np.asarray([r.loss for r in test_runs], np.float64)
    rel = (pred - y) / y
    return HeldOutError(fit=fit, rel_errors=rel, mean_abs_rel_error=float(np.mean(np.abs(rel))),
                        max_abs_rel_error=float(np.max(np.abs(rel))),
                        rmse=float(np.sqrt(np.mean((pred - y) ** 2))))
