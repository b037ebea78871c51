"""Lowering checks that need no accelerator: export for CUDA / TPU and scan the StableHLO.

``jax.export`` lowers a function for another platform on a CPU host, which catches lowering
errors; the module text shows what XLA will be given, before any backend pass runs. The pass to
guard against is XLA:GPU's default ``--xla_allow_excess_precision=true``: it deletes a float
``convert`` to a narrower type that is converted back, so a simulated rounding written that way
silently does nothing on a GPU. `float_round_trips` finds such pairs, also through reshapes,
transposes, broadcasts and slices between them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import jax
from jax import export

# Element types: (exponent bits, mantissa bits).
_FLOAT_TYPES = {"f64": (11, 52), "f32": (8, 23), "bf16": (8, 7), "f16": (5, 10), "tf32": (8, 10)}
_SMALL_FLOAT = re.compile(r"^f(\d+)E(\d+)M(\d+)")
_DEF = re.compile(r"^\s*(%[\w#:]+)\s*=\s*\"?([\w.]+)\"?\s*(.*)$")
_TENSOR = re.compile(r"tensor<([^>]*)>")
_PASS_THROUGH = {"stablehlo.reshape", "stablehlo.transpose", "stablehlo.broadcast_in_dim",
                 "stablehlo.slice", "stablehlo.dynamic_slice", "stablehlo.copy",
                 "stablehlo.optimization_barrier"}


def float_format(type_name: str) -> tuple[int, int] | None:
    """(exponent bits, mantissa bits) of an MLIR float element type, or None."""
    if type_name in _FLOAT_TYPES:
        return _FLOAT_TYPES[type_name]
    m = _SMALL_FLOAT.match(type_name)
    return (int(m.group(2)), int(m.group(3))) if m else None


def _narrower(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether format ``a`` loses range or precision against ``b``."""
    return a[0] < b[0] or a[1] < b[1]


@dataclasses.dataclass(frozen=True)
class RoundTrip:
    """A float convert to a narrower type whose result is converted back to a wider one."""

    source: str  # the wide type converted from
    narrow: str  # the narrow type in between
    result: str  # the type converted back to
    line: str  # the converting-back line of the module

    def __str__(self) -> str:
        return f"{self.source} -> {self.narrow} -> {self.result}: {self.line.strip()[:160]}"


def _elem_type(signature_part: str) -> str | None:
    tensors = _TENSOR.findall(signature_part)
    if not tensors:
        return None
    return tensors[-1].split("x")[-1]


def float_round_trips(module_text: str) -> list[RoundTrip]:
    """Every ``convert(wide -> narrow) ... convert(narrow -> wide)`` chain of the module text.

    Value names are tracked per function (MLIR numbers them per isolated region); the chain may
    pass through the layout-only ops in ``_PASS_THROUGH``.
    """
    found: list[RoundTrip] = []
    defs: dict[str, tuple[str, str | None, str, str]] = {}
    for line in module_text.splitlines():
        if line.lstrip().startswith("func.func"):
            defs = {}
            continue
        m = _DEF.match(line)
        if not m:
            continue
        names, op, rest = m.groups()
        operands = re.findall(r"%[\w#]+", rest)
        operand = operands[0] if operands else None
        code = rest.split(" loc(")[0]
        src_t, dst_t = None, None
        if "->" in code:
            left, right = code.rsplit("->", 1)
            src_t, dst_t = _elem_type(left), _elem_type(right)
        else:
            dst_t = _elem_type(code)
        defs[names.split(":")[0]] = (op, operand, src_t or "", dst_t or "")
        if op != "stablehlo.convert" or not src_t or not dst_t:
            continue
        narrow, wide = float_format(src_t), float_format(dst_t)
        if narrow is None or wide is None or not _narrower(narrow, wide):
            continue
        name, seen = operand, set()
        while name in defs and name not in seen:
            seen.add(name)
            p_op, p_operand, p_src, p_dst = defs[name]
            if p_op in _PASS_THROUGH:
                name = p_operand
                continue
            if p_op == "stablehlo.convert":
                origin = float_format(p_src)
                if origin is not None and _narrower(narrow, origin):
                    found.append(RoundTrip(p_src, src_t, dst_t, line))
            break
    return found


def export_text(fn: Callable, args: Sequence[Any], platforms: Sequence[str] = ("cuda", "tpu"),
                disabled_checks: Sequence[Any] = ()) -> str:
    """StableHLO text of ``jax.jit(fn)`` lowered for ``platforms`` (no device needed)."""
    exp = export.export(jax.jit(fn), platforms=tuple(platforms),
                        disabled_checks=tuple(disabled_checks))(*args)
    return exp.mlir_module()
