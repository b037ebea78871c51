"""Named precision policies and the registry that resolves a policy name.

`NAMED_POLICIES` are the built-ins (float baselines, FP8 / MX / NVFP4 / integer fake-quant, and
the 4-bit training recipes of `bitscale.nn._recipes`); `register_policy` and
`register_policy_family` let config files add their own. Rules and policies themselves are in
`bitscale.nn._rule`.
"""

from __future__ import annotations

from typing import Callable, Optional

from bitscale.nn._rule import (  # noqa: F401  (re-exported for the package __init__)
    PROJ, DotReduction, Policy, Rotation, Rule, SumReduction)
from bitscale.nn._recipes import RECIPE_POLICIES

# ---------------------------------------------------------------------------------------------
# Named policies


def _quantized(name: str, **kw) -> Policy:
    """The projections quantized as ``kw`` says; the lm head and attention stay float32."""
    return Policy(name, (Rule("lm_head"), Rule(PROJ, **kw)))


NAMED_POLICIES: dict[str, Policy] = {
    "fp32": Policy("fp32", (Rule(".*", compute_dtype="float32"),)),
    "bf16": Policy("bf16", (Rule(".*", compute_dtype="bfloat16"),), param_dtype="bfloat16",
                   act_dtype="bfloat16"),
    # Mixed precision: float32 master weights (and optimizer state), bfloat16 matmul operands and
    # residual stream -- the "BF16" baseline of the 4-bit training papers.
    "bf16_mixed": Policy("bf16_mixed", (Rule(".*", compute_dtype="bfloat16"),),
                         param_dtype="float32", act_dtype="bfloat16"),
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
    **RECIPE_POLICIES,
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
