"""Precision policies: ordered regex rules on module paths that choose each matmul's numerics.

A `Rule` says, for every matmul whose module path it matches, how to quantize the two forward
operands, the output gradient and the two operand gradients, with which gradient estimator,
in which compute dtype, and whether the weight gradient is formed from the quantized or the
original activation. A `Policy` is an ordered tuple of rules (first full match wins) plus the
storage dtype of the weights and the dtype of the residual stream. Policies are plain frozen
data: a config file can define new ones without touching model code.

Module paths of the Llama model (`bitscale.nn._llama.module_paths`)::

    layers.<i>.attn.{q_proj,k_proj,v_proj,o_proj}   projections (x @ W^T, W: [out, in])
    layers.<i>.attn.qk / layers.<i>.attn.pv         attention products (lhs = q / probs,
                                                    rhs = k / v)
    layers.<i>.attn.kv_cache                        keys/values as stored in the cache
                                                    (``act`` spec, along head_dim)
    layers.<i>.mlp.{gate_proj,up_proj,down_proj}
    lm_head                                         x @ W_head^T (or x @ E^T when tied)

References:
  Qwix (google/qwix): regex `QuantizationRule`s on module paths, `bwd_use_original_residuals`.
  AQT (google/aqt): injected quantized `dot_general`.
  Yuan et al., "Give Me FP32 or Give Me Death? Challenges and Solutions for Reproducible
    Reasoning", arXiv:2506.09501 (LayerCast: bf16 weights, fp32 computation).
  Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433 (E4M3 fwd, E5M2 bwd).
  Tseng et al., "Training LLMs with MXFP4", arXiv:2502.20586 (stochastic rounding of gradients).
  NVIDIA, "Pretraining Large Language Models with NVFP4", arXiv:2509.25149.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Literal, Optional, Protocol, Union, runtime_checkable

import jax
import jax.numpy as jnp

from bitscale.numerics.estimators import Estimator, resolve_estimator
from bitscale.numerics.specs import Spec, resolve_spec
from bitscale.numerics.validate import check_implementation

SpecLike = Union[str, Spec, None]
DTYPES = ("float32", "bfloat16", "float16")
ROUNDINGS = ("nearest", "stochastic")
WGRAD_ACTS = ("quantized", "original")
GRAD_AXES = ("last", "contraction")


@runtime_checkable
class DotReduction(Protocol):
    """What a `Rule`'s ``reduction`` is: the product in place of `jax.lax.dot_general`, with an
    accumulation order of its own (``bitscale.repro.Reduction``, ``RowTiledDot``, ...). It must
    be hashable (a frozen dataclass): rules are static arguments."""

    def dot_general(self, lhs: jax.Array, rhs: jax.Array, dimension_numbers) -> jax.Array: ...


@runtime_checkable
class SumReduction(Protocol):
    """What a `Policy`'s ``reduction`` is: a fixed-order float32 sum for the softmax
    denominators and RMSNorm means (``bitscale.repro.Reduction``, ``BatchInvariance``).
    Hashable, like `DotReduction`."""

    def sum(self, x: jax.Array, axis: int = -1) -> jax.Array: ...


def _check_hook(hook, method: str, what: str) -> None:
    """A reduction hook must be None or a hashable object with ``method``."""
    if hook is None:
        return
    if not callable(getattr(hook, method, None)):
        raise TypeError(f"{what} must be None or an object with a {method}() method, got "
                        f"{hook!r}")
    try:
        hash(hook)
    except TypeError:
        raise TypeError(f"{what} must be hashable (a frozen dataclass), got {hook!r}") from None


def _dtype_name(d) -> str:
    name = jnp.dtype(d).name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {d!r}")
    return name


@dataclasses.dataclass(frozen=True)
class Rule:
    """How the matmuls whose module path fully matches ``pattern`` are computed.

    For ``y = lhs . rhs`` (``x @ W^T`` in a projection; ``q . k`` / ``p . v`` in attention):

    Attributes:
      pattern: regex, matched with `re.fullmatch` against the dotted module path.
      weight: spec of the right operand (the weight), quantized along its contraction axis
        (the ``in`` axis, axis 1, of an [out, in] kernel); None keeps it unquantized.
      act: spec of the left operand (the activation), quantized along its contraction axis
        (the last axis). For ``*.kv_cache`` paths: the spec of cached keys and values.
      grad: spec of the output gradient dY, quantized along its last axis before it enters both
        backward products (dX = dY . W and dW = dY^T . X for a projection y = x . W^T).
      grad_axis: where ``grad``'s blocks run. ``last`` (default): along g's last axis, one copy
        for both backward products. ``contraction``: one copy per product, along the axis that
        product contracts: along N (g's last axis) for dX = Q(g) . W and along the tokens (all of
        g's leading axes, flattened) for dW = Q(g)^T . X, what MX / NVFP4 matmul hardware needs
        (Quartet's backward). Stochastic keys: ``fold_in(k, 0)`` (dX) and ``fold_in(k, 1)``
        (dW) of the rule's gradient key. Only for products without batch dimensions whose lhs
        contracts its last axis (projections).
      grad_lhs: spec of the activation gradient dX (after the product), along lhs's contraction
        axis.
      grad_rhs: spec of the weight gradient dW (after the product), along rhs's contraction axis.
      estimator: gradient estimator of the forward fake-quant (``ste``, ``clipped_ste``,
        ``trust`` or an estimator object); it masks dX and dW.
      compute_dtype: dtype the (fake-quantized) operands are cast to for the product; the product
        always accumulates and returns float32 (``preferred_element_type``).
      wgrad_act: ``quantized`` forms dW from the fake-quantized activation (the plain
        straight-through estimator); ``original`` from the unquantized one (AQT / Qwix
        ``bwd_use_original_residuals``). dX always uses the fake-quantized weight.
      fwd_rounding: rounding of the forward operands (``nearest`` or ``stochastic``).
      grad_rounding: rounding of dY, dX and dW quantization. Stochastic rounding draws its bits
        from the key passed to the model call (``model(tokens, key=...)``), folded with the module
        path; without a key it falls back to nearest rounding (see `bitscale.nn._qdot`).
      reduction: None (the product is one `lax.dot_general`, accumulated as the backend
        chooses), or a `DotReduction`: ``dot_general(lhs, rhs, dimension_numbers)`` returning
        the product (any float dtype; cast to float32) that replaces it, e.g. an
        emulated accumulation order (`bitscale.repro.Reduction`) or a batch-invariant tiling
        (`bitscale.repro.RowTiledDot`). It receives the operands already fake-quantized and
        cast to ``compute_dtype``. Packed (PTQ) weights ignore it.
      implementation: ``"auto"`` (default), ``"xla"`` or ``"pallas"``: where the rule runs.
        ``auto`` uses the ``pallas_kernels`` kernels on a GPU / TPU and XLA on a CPU: the whole
        product through ``qmatmul`` (quantized operands, product and quantized-gradient
        backward in one kernel) when the rule is one it computes (STE, ``wgrad_act``
        "quantized", nearest forward rounding, float32 compute, no ``grad_lhs`` / ``grad_rhs`` /
        ``reduction``, ``grad`` None or with ``grad_axis="contraction"``, a projection), else
        each fake quantization through the fused fake-quant kernel (bit for bit the XLA result)
        where it covers the spec. ``pallas`` insists on the kernels (ValueError naming what they
        cannot do); ``xla`` never uses them.
      interpret: run the Pallas kernels in the interpreter (tests on a CPU).
    """

    pattern: str
    weight: SpecLike = None
    act: SpecLike = None
    grad: SpecLike = None
    grad_lhs: SpecLike = None
    grad_rhs: SpecLike = None
    estimator: Union[str, Estimator] = "ste"
    compute_dtype: str = "float32"
    wgrad_act: Literal["quantized", "original"] = "quantized"
    fwd_rounding: Literal["nearest", "stochastic"] = "nearest"
    grad_rounding: Literal["nearest", "stochastic"] = "nearest"
    grad_axis: Literal["last", "contraction"] = "last"
    reduction: Optional[DotReduction] = None
    implementation: str = "auto"
    interpret: bool = False

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"rule pattern {self.pattern!r} is not a valid regex: {e}") from None
        for f in ("weight", "act", "grad", "grad_lhs", "grad_rhs"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, resolve_spec(v))
        object.__setattr__(self, "estimator", resolve_estimator(self.estimator))
        object.__setattr__(self, "compute_dtype", _dtype_name(self.compute_dtype))
        if self.wgrad_act not in WGRAD_ACTS:
            raise ValueError(f"wgrad_act must be one of {WGRAD_ACTS}, got {self.wgrad_act!r}")
        if self.grad_axis not in GRAD_AXES:
            raise ValueError(f"grad_axis must be one of {GRAD_AXES}, got {self.grad_axis!r}")
        for f in ("fwd_rounding", "grad_rounding"):
            if getattr(self, f) not in ROUNDINGS:
                raise ValueError(f"{f} must be one of {ROUNDINGS}, got {getattr(self, f)!r}")
        _check_hook(self.reduction, "dot_general", f"rule {self.pattern!r}: reduction")
        check_implementation(self.implementation)
        if not isinstance(self.interpret, bool):
            raise TypeError(f"rule {self.pattern!r}: interpret must be a bool, got "
                            f"{self.interpret!r}")

    @property
    def quantized(self) -> bool:
        """True when any operand or gradient is quantized (the custom-VJP path is needed)."""
        return any(getattr(self, f) is not None
                   for f in ("weight", "act", "grad", "grad_lhs", "grad_rhs"))

    @property
    def weight_only(self) -> bool:
        return self.weight is not None and not any(
            getattr(self, f) is not None for f in ("act", "grad", "grad_lhs", "grad_rhs"))

    def matches(self, path: str) -> bool:
        return re.fullmatch(self.pattern, path) is not None


@dataclasses.dataclass(frozen=True)
class Policy:
    """An ordered tuple of rules plus storage and residual-stream dtypes.

    Attributes:
      name: a label (shown in benchmarks and errors).
      rules: the first rule whose pattern fully matches a module path applies; paths no rule
        matches are computed unquantized in ``act_dtype``.
      param_dtype: storage dtype of every parameter (weights, embeddings, norm scales).
      act_dtype: dtype of the residual stream and layer outputs. Norms, softmax and logits are
        computed in float32 regardless; logits are returned in float32.
      strict: a rule that matches no module path of the model raises (True) or warns (False).
      reduction: None (softmax and RMSNorm sum with ``jnp.sum`` / ``jnp.mean``, in an order the
        backend may change with the batch shape), or a `SumReduction` giving a fixed-order
        float32 sum (``bitscale.repro.Reduction("pairwise")``, or the
        ``bitscale.repro.BatchInvariance`` of batch-invariant policies); `bitscale.nn.Llama`
        hands it to every attention softmax and RMSNorm.
    """

    name: str
    rules: tuple[Rule, ...] = ()
    param_dtype: str = "float32"
    act_dtype: str = "float32"
    strict: bool = True
    reduction: Optional[SumReduction] = None

    def __post_init__(self):
        rules = tuple(self.rules)
        for r in rules:
            if not isinstance(r, Rule):
                raise TypeError(f"policy {self.name!r}: rules must be Rule objects, got {r!r}")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "param_dtype", _dtype_name(self.param_dtype))
        object.__setattr__(self, "act_dtype", _dtype_name(self.act_dtype))
        _check_hook(self.reduction, "sum", f"policy {self.name!r}: reduction")

    @property
    def default_rule(self) -> Rule:
        return Rule(".*", compute_dtype=self.act_dtype)

    def with_implementation(self, implementation: str, *, interpret: bool = False) -> Policy:
        """This policy with every rule's ``implementation`` / ``interpret`` replaced (same name:
        the numerics are the same, bit for bit, whichever runs them)."""
        check_implementation(implementation)
        return dataclasses.replace(self, rules=tuple(
            dataclasses.replace(r, implementation=implementation, interpret=interpret)
            for r in self.rules))

    def rule_for(self, path: str) -> Rule:
        """The first rule fully matching ``path``, else the unquantized default."""
        for r in self.rules:
            if r.matches(path):
                return r
        return self.default_rule

    def unmatched_rules(self, paths: Iterable[str]) -> list[Rule]:
        """Rules that match none of ``paths`` (typos, or rules for another architecture)."""
        paths = list(paths)
        return [r for r in self.rules if not any(r.matches(p) for p in paths)]

    def check(self, paths: Iterable[str]) -> None:
        """Reports rules that match no module path: raises when strict, else warns."""
        bad = self.unmatched_rules(paths)
        if not bad:
            return
        paths = list(paths)
        msg = (f"policy {self.name!r}: rule pattern(s) {[r.pattern for r in bad]} match no module "
               f"path of this model; paths look like {paths[:3] + paths[-1:]} (patterns use "
               "re.fullmatch)")
        if self.strict:
            raise ValueError(msg)
        import warnings
        warnings.warn(msg, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Named policies

PROJ = r"layers\.\d+\.(attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
"""Regex of the seven projections of every decoder layer (not the lm head, not attention)."""


def _quantized(name: str, **kw) -> Policy:
    """The projections quantized as ``kw`` says; the lm head and attention stay float32."""
    return Policy(name, (Rule("lm_head"), Rule(PROJ, **kw)))


NAMED_POLICIES: dict[str, Policy] = {
    "fp32": Policy("fp32", (Rule(".*", compute_dtype="float32"),)),
    "bf16": Policy("bf16", (Rule(".*", compute_dtype="bfloat16"),), param_dtype="bfloat16",
                   act_dtype="bfloat16"),
    "fp16": Policy("fp16", (Rule(".*", compute_dtype="float16"),), param_dtype="float16",
                   act_dtype="float16"),
    "layercast": Policy("layercast", (Rule(".*", compute_dtype="float32"),),
                        param_dtype="bfloat16", act_dtype="float32"),
    # Row-wise (per token / per output channel) scaled FP8, torchao "float8 rowwise" style.
    "fp8": _quantized("fp8", weight="fp8_e4m3@channel", act="fp8_e4m3@channel",
                      grad="fp8_e5m2@channel"),
    "mxfp4": _quantized("mxfp4", weight="mxfp4", act="mxfp4", grad="mxfp4",
                        grad_rounding="stochastic"),
    "nvfp4": _quantized("nvfp4", weight="nvfp4", act="nvfp4", grad="nvfp4",
                        grad_rounding="stochastic"),
    "int8": _quantized("int8", weight="int8@channel", act="int8@channel"),
    "int4@g128": _quantized("int4@g128", weight="int4@g128"),
}


_REGISTERED: dict[str, Policy] = {}
_RESOLVERS: list[Callable[[str], Optional[Policy]]] = []
_FAMILIES: list[str] = []


def register_policy(policy: Policy, *, replace: bool = False) -> Policy:
    """Makes a user-defined ``policy`` selectable by its name wherever a policy name is accepted
    (`resolve_policy`, a config's ``policy`` key, ``--config.policy=<name>``); returns it.

    A config file that defines a policy registers it at import, so the policy is known by the
    time the launcher resolves ``cfg.policy``. Registering an equal policy again is a no-op; a
    different one under a taken name raises unless ``replace``. Built-in names cannot be
    replaced.
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"register_policy: expected a bitscale.nn.Policy, got {policy!r}")
    if policy.name in NAMED_POLICIES:
        raise ValueError(f"register_policy: {policy.name!r} is a built-in policy name; "
                         f"choose another (built-ins: {sorted(NAMED_POLICIES)})")
    old = _REGISTERED.get(policy.name)
    if old is not None and old != policy and not replace:
        raise ValueError(f"register_policy: a different policy named {policy.name!r} is "
                         "already registered (pass replace=True to replace it)")
    _REGISTERED[policy.name] = policy
    return policy


def register_policy_family(resolver: Callable[[str], Optional[Policy]], pattern: str) -> None:
    """Lets `resolve_policy` accept a family of names: ``resolver(name)`` returns the policy or
    None when the name is not one of its own. ``pattern`` describes the names in error messages
    (``<name>_batch_invariant`` for `bitscale.repro`'s). Registering a resolver twice is a no-op.
    """
    if resolver not in _RESOLVERS:
        _RESOLVERS.append(resolver)
        _FAMILIES.append(pattern)


def policy_names() -> list[str]:
    """Built-in (`NAMED_POLICIES`) and registered policy names, and registered name families."""
    return sorted(NAMED_POLICIES) + sorted(_REGISTERED) + list(_FAMILIES)


def resolve_policy(policy: "str | Policy") -> Policy:
    """A `Policy` object, or the policy of a name: built-in, registered (`register_policy`) or
    of a registered family (`register_policy_family`); unknown names list the valid ones."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str) and policy in NAMED_POLICIES:
        return NAMED_POLICIES[policy]
    if isinstance(policy, str) and policy in _REGISTERED:
        return _REGISTERED[policy]
    if isinstance(policy, str):
        for resolver in _RESOLVERS:
            found = resolver(policy)
            if found is not None:
                return found
    raise ValueError(f"unknown precision policy {policy!r}; valid names: "
                     f"{policy_names()} (or pass a bitscale.nn.Policy, or register one with "
                     "bitscale.nn.register_policy)")
