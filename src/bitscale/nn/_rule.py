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
  Ashkboos et al., "QuaRot", arXiv:2404.00456 (randomized Hadamard rotations around a product).
  Castro et al., "Quartet: Native FP4 Training Can Be Optimal for Large Language Models",
    arXiv:2505.14669 (rotated forward and backward products, re-quantized backward operands).
  Panferov et al., "Quartet II", arXiv:2601.22813 (MS-EDEN rounding of the backward operands).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Literal, Optional, Protocol, Union, runtime_checkable

import jax
import jax.numpy as jnp

from bitscale.numerics.estimators import Estimator, resolve_estimator
from bitscale.numerics.specs import Spec, resolve_spec
from bitscale.numerics.validate import check_implementation

SpecLike = Union[str, Spec, None]
DTYPES = ("float32", "bfloat16", "float16")
ROUNDINGS = ("nearest", "stochastic")
BWD_ROUNDINGS = ("nearest", "stochastic", "eden")
SIGNS = ("none", "fixed", "per_call")
SPEC_FIELDS = ("weight", "act", "grad", "grad_lhs", "grad_rhs", "bwd_weight", "bwd_act")

PROJ = r"layers\.\d+\.(attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
"""Regex of the seven projections of every decoder layer (not the lm head, not attention)."""
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


@dataclasses.dataclass(frozen=True)
class Rotation:
    """A block Hadamard rotation of both operands of a product along the axis it contracts.

    Each block of ``size`` consecutive elements along the contraction axis of both operands is
    multiplied by the same orthogonal ``M = H_size diag(s)`` (`bitscale.hadamard_transform`), so
    ``<M a, M b> = <a, b>``: the product is unchanged up to float rounding and only what is
    quantized in between sees the rotation. Forward operands are quantized in the rotated basis
    and their gradient goes back through ``M^T`` (after the estimator's mask, as in QuEST).

    Attributes:
      size: the Hadamard block, a power of two in 16..256 dividing the contraction axis.
      signs: ``none`` (plain Sylvester Hadamard, QuEST / Quartet forward), ``fixed`` (random
        signs drawn once from ``seed``, shared by every layer: NVIDIA's recipe) or ``per_call``
        (re-drawn at every model call from the call's key, folded with the module path and the
        product: Quartet's backward re-randomization). ``per_call`` without a key uses ``seed``.
      seed: the seed of ``fixed`` signs (and of ``per_call`` without a key).

    Short names (`resolve_rotation`): ``h<N>`` (no signs), ``rh<N>`` (fixed signs, seed 0),
    ``rh<N>:call`` (per-call signs).
    """

    size: int
    signs: Literal["none", "fixed", "per_call"] = "none"
    seed: int = 0

    def __post_init__(self):
        from bitscale.numerics.transforms import HADAMARD_BLOCK_SIZES
        if isinstance(self.size, bool) or not isinstance(self.size, int) or (
                self.size not in HADAMARD_BLOCK_SIZES):
            raise ValueError(f"rotation size must be one of {HADAMARD_BLOCK_SIZES}, got "
                             f"{self.size!r}")
        if self.signs not in SIGNS:
            raise ValueError(f"rotation signs must be one of {SIGNS}, got {self.signs!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"rotation seed must be an int, got {self.seed!r}")

    @property
    def name(self) -> str:
        base = {"none": "h", "fixed": "rh", "per_call": "rh"}[self.signs] + str(self.size)
        if self.signs == "per_call":
            base += ":call"
        return base if self.seed == 0 else f"{base}@{self.seed}"


RotationLike = Union[str, Rotation, None]
_ROTATION_NAME = re.compile(r"^(h|rh)(\d+)(:call)?(@(\d+))?$")


def resolve_rotation(rotation: RotationLike) -> Optional[Rotation]:
    """A `Rotation` from a `Rotation`, None, or a short name: ``h<N>``, ``rh<N>``,
    ``rh<N>:call``, optionally ``@<seed>`` (``rh16@7``)."""
    if rotation is None or isinstance(rotation, Rotation):
        return rotation
    m = _ROTATION_NAME.match(rotation) if isinstance(rotation, str) else None
    if m is None or (m.group(1) == "h" and (m.group(3) or m.group(4))):
        raise ValueError(f"unknown rotation {rotation!r}; use a bitscale.nn.Rotation or a name "
                         "'h<N>' (Hadamard), 'rh<N>' (random signs, fixed seed), 'rh<N>:call' "
                         "(signs re-drawn every call), optionally '@<seed>', N in 16..256")
    signs = "none" if m.group(1) == "h" else ("per_call" if m.group(3) else "fixed")
    return Rotation(int(m.group(2)), signs, int(m.group(5) or 0))


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
      grad_rounding: rounding of dY, dX and dW quantization: ``nearest``, ``stochastic`` or
        ``eden`` (MS-EDEN, `bitscale.ms_eden`: unbiased through the block scales; dY only, and
        only after a ``dgrad_rotation`` / ``wgrad_rotation`` whose size is its correction group).
        Random bits come from the key passed to the model call (``model(tokens, key=...)``),
        folded with the module path; without a key stochastic rounding falls back to nearest
        and MS-EDEN to its round-to-nearest part (see `bitscale.nn._qdot`).
      rotation: a `Rotation` (or its short name, ``"h32"``, ``"rh128:call"``) of both forward
        operands along the contraction axis, quantized in the rotated basis (QuEST, Quartet).
      dgrad_rotation: a `Rotation` of both operands of dX = dY . W along N (the axis dX
        contracts), before ``grad`` / ``bwd_weight`` quantize them. Needs ``grad_axis=
        "contraction"``.
      wgrad_rotation: a `Rotation` of both operands of dW = dY^T . X along the tokens (NVIDIA's
        random Hadamard on the weight-gradient inputs). Needs ``grad_axis="contraction"``.
      bwd_weight: spec of the weight operand of dX, re-quantized along N from the forward's
        (quantized) weight (Quartet's Q(W^T)); None uses the forward's weight as it is.
      bwd_act: spec of the activation operand of dW, re-quantized along the tokens from the
        activation ``wgrad_act`` picks (Quartet: the quantized one; NVIDIA: the original one).
      bwd_rounding: rounding of ``bwd_weight`` / ``bwd_act`` (``nearest``, ``stochastic``,
        ``eden``), keyed like ``grad_rounding``.
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
    rotation: RotationLike = None
    dgrad_rotation: RotationLike = None
    wgrad_rotation: RotationLike = None
    bwd_weight: SpecLike = None
    bwd_act: SpecLike = None
    bwd_rounding: Literal["nearest", "stochastic", "eden"] = "nearest"
    reduction: Optional[DotReduction] = None
    implementation: str = "auto"
    interpret: bool = False

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"rule pattern {self.pattern!r} is not a valid regex: {e}") from None
        for f in SPEC_FIELDS:
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, resolve_spec(v))
        for f in ("rotation", "dgrad_rotation", "wgrad_rotation"):
            object.__setattr__(self, f, resolve_rotation(getattr(self, f)))
        object.__setattr__(self, "estimator", resolve_estimator(self.estimator))
        object.__setattr__(self, "compute_dtype", _dtype_name(self.compute_dtype))
        if self.wgrad_act not in WGRAD_ACTS:
            raise ValueError(f"wgrad_act must be one of {WGRAD_ACTS}, got {self.wgrad_act!r}")
        if self.grad_axis not in GRAD_AXES:
            raise ValueError(f"grad_axis must be one of {GRAD_AXES}, got {self.grad_axis!r}")
        if self.fwd_rounding not in ROUNDINGS:
            raise ValueError(f"fwd_rounding must be one of {ROUNDINGS}, got "
                             f"{self.fwd_rounding!r}")
        for f in ("grad_rounding", "bwd_rounding"):
            if getattr(self, f) not in BWD_ROUNDINGS:
                raise ValueError(f"{f} must be one of {BWD_ROUNDINGS}, got {getattr(self, f)!r}")
        self._check_backward()
        _check_hook(self.reduction, "dot_general", f"rule {self.pattern!r}: reduction")
        check_implementation(self.implementation)
        if not isinstance(self.interpret, bool):
            raise TypeError(f"rule {self.pattern!r}: interpret must be a bool, got "
                            f"{self.interpret!r}")

    def _check_backward(self) -> None:
        """The backward rotations and re-quantizations need per-product gradient copies, and
        MS-EDEN needs the rotation it is unbiased under."""
        where = f"rule {self.pattern!r}"
        per_product = [f for f in ("dgrad_rotation", "wgrad_rotation", "bwd_weight", "bwd_act")
                       if getattr(self, f) is not None]
        if per_product and self.grad_axis != "contraction":
            raise ValueError(f"{where}: {per_product} act on each backward product's operands "
                             "and need grad_axis='contraction' (got 'last')")
        if self.grad_rounding == "eden":
            if self.grad is None:
                raise ValueError(f"{where}: grad_rounding='eden' needs a grad spec (nvfp4)")
            if self.grad_lhs is not None or self.grad_rhs is not None:
                raise ValueError(f"{where}: grad_rounding='eden' rounds the backward products' "
                                 "operands; grad_lhs / grad_rhs (after the products) would "
                                 "round with it too — set them to None")
            self._check_eden("grad_rounding", ("dgrad_rotation", "wgrad_rotation"))
        if self.bwd_rounding == "eden":
            need = tuple(r for s, r in (("bwd_weight", "dgrad_rotation"),
                                         ("bwd_act", "wgrad_rotation"))
                         if getattr(self, s) is not None)
            self._check_eden("bwd_rounding", need)

    def _check_eden(self, field: str, rotations: tuple[str, ...]) -> None:
        missing = [r for r in rotations if getattr(self, r) is None]
        if missing:
            raise ValueError(f"rule {self.pattern!r}: {field}='eden' (MS-EDEN) is unbiased only "
                             f"after a random Hadamard rotation; set {missing} (e.g. "
                             "'rh128:call')")

    @property
    def quantized(self) -> bool:
        """True when any operand or gradient is quantized (the custom-VJP path is needed)."""
        return any(getattr(self, f) is not None for f in SPEC_FIELDS)

    @property
    def rotated(self) -> bool:
        return any(getattr(self, f) is not None
                   for f in ("rotation", "dgrad_rotation", "wgrad_rotation"))

    @property
    def weight_only(self) -> bool:
        return self.weight is not None and not self.rotated and not any(
            getattr(self, f) is not None for f in SPEC_FIELDS if f != "weight")

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
