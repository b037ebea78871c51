"""Quantization specs: an element format plus how it is scaled, and the registry of names.

A spec is either a bare element format (a saturating cast with no scale) or a `QuantSpec`. Both are
frozen and hashable, so they can be `jax.jit` static arguments.

Short-name grammar (`resolve_spec`)::

    <base>[@<granularity>][:<scale format>][+<option>]...

* ``<base>``: an element format (`formats.ELEMENT_FORMATS`, or ``e<E>m<M>[_fn|_ext]``) or a named
  spec (``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e3m2``, ``mxfp6_e2m3``, ``mxfp4``, ``mxint8``,
  ``nvfp4``, ``nvfp4_single``, ``ternary``, ``binary``).
* ``<granularity>``: ``tensor``, ``channel`` (one scale per slice along ``axis``) or ``g<N>`` /
  ``b<N>`` (blocks of N consecutive elements along ``axis``).
* ``<scale format>``: the format scales are stored in (default float32): ``e8m0`` (power-of-two,
  OCP MX rules), ``ue4m3``, ``bf16``, ``fp16``, ...
* ``<option>``: ``asym`` / ``full`` (integer range: zero-point asymmetric, or the full
  two's-complement range; the default is the restricted symmetric range +-(2^(b-1) - 1)),
  ``mse`` (MSE-optimal clip search instead of absmax), ``floor`` / ``ceil`` / ``even`` / ``rceil``
  (E8M0 scale rounding), ``2level`` (an extra float32 per-tensor scale, as NVFP4).

Examples: ``int8@channel``, ``int4@g128``, ``int4@g128+asym``, ``fp8_e4m3@tensor``,
``mxfp4+rceil``, ``fp4_e2m1@g16:ue4m3+2level`` (= ``nvfp4``), ``int8@channel+mse``.

``axis`` (an argument of `fake_quant`/`quantize`) is always the axis along which elements share a
scale: for a [out, in] weight used as ``x @ w.T``, ``axis=-1`` gives one scale per output row.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, Union

from bitscale.numerics.formats import (
    BinaryFormat,
    E8M0Format,
    ElementFormat,
    FloatFormat,
    IntFormat,
    TernaryFormat,
    ELEMENT_FORMATS,
    element_format,
)

Granularity = Literal["tensor", "channel", "block"]
ClipRule = Literal["absmax", "mse", "absmean"]
Pow2Rounding = Literal["floor", "ceil", "even", "rceil"]
IntRange = Literal["restricted", "full", "asymmetric"]

GRANULARITIES = ("tensor", "channel", "block")
CLIP_RULES = ("absmax", "mse", "absmean")
POW2_ROUNDINGS = ("floor", "ceil", "even", "rceil")
INT_RANGES = ("restricted", "full", "asymmetric")

# Candidate clip ratios of the MSE search: amax * ratio for ratio = 1, 0.975, ..., 0.4.
MSE_CLIP_RATIOS = tuple(1.0 - k / 40.0 for k in range(25))


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """An element format with a scale per tensor, per channel or per block.

    Attributes:
      elem: the element format of the codes.
      granularity: ``tensor``, ``channel`` (the whole ``axis`` shares a scale) or ``block``.
      block_size: elements per block along ``axis`` (``block`` granularity only).
      scale_format: format the scales are stored in; ``None`` keeps float32 scales. `E8M0Format`
        gives OCP MX power-of-two scales, chosen by ``scale_rounding``.
      scale_rounding: E8M0 scale rule: ``floor`` (OCP MX v1.0: floor(log2 amax) - emax_elem),
        ``ceil``, ``even`` (amax rounded to the element's mantissa width first) or ``rceil``
        (NVIDIA/cuBLAS: ceil(log2(amax / max_elem))).
      int_range: integer elements only: ``restricted`` symmetric +-(2^(b-1)-1) (scale amax/qmax),
        ``full`` symmetric [-2^(b-1), 2^(b-1)-1] (scale amax/(2^(b-1)-1/2), as torchao), or
        ``asymmetric`` unsigned codes with a zero point.
      clip: ``absmax``, ``mse`` (search over `MSE_CLIP_RATIOS` for the smallest squared error per
        scale group) or ``absmean`` (ternary/binary: BitNet b1.58 / XNOR-Net mean |x|).
      tensor_scale: add a float32 per-tensor scale above float-format block scales (NVFP4).
      name: canonical short name (filled in when empty).
    """

    elem: ElementFormat
    granularity: Granularity = "tensor"
    block_size: int = 0
    scale_format: ElementFormat | None = None
    scale_rounding: Pow2Rounding = "floor"
    int_range: IntRange = "restricted"
    clip: ClipRule = "absmax"
    tensor_scale: bool = False
    name: str = ""

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "block":
            if not isinstance(self.block_size, int) or self.block_size < 1:
                raise ValueError(f"block granularity needs block_size >= 1, got {self.block_size!r}")
        elif self.block_size:
            raise ValueError(
                f"block_size={self.block_size} is only meaningful with granularity='block'")
        if self.scale_rounding not in POW2_ROUNDINGS:
            raise ValueError(
                f"scale_rounding must be one of {POW2_ROUNDINGS}, got {self.scale_rounding!r}")
        if self.int_range not in INT_RANGES:
            raise ValueError(f"int_range must be one of {INT_RANGES}, got {self.int_range!r}")
        if self.clip not in CLIP_RULES:
            raise ValueError(f"clip must be one of {CLIP_RULES}, got {self.clip!r}")
        elem = self.elem
        if isinstance(elem, E8M0Format):
            raise ValueError("e8m0 is a scale format; it cannot be a scaled element format")
        if isinstance(elem, (TernaryFormat, BinaryFormat)):
            if self.scale_format is not None or self.tensor_scale:
                raise ValueError(f"{elem.name} uses float32 mean-|x| scales only")
            allowed = ("absmean",) if isinstance(elem, BinaryFormat) else ("absmean", "mse")
            if self.clip not in allowed:
                raise ValueError(f"{elem.name} supports clip in {allowed}, got {self.clip!r}")
        elif self.clip == "absmean":
            raise ValueError("clip='absmean' is for ternary and binary elements only")
        if self.int_range != "restricted" and not isinstance(elem, IntFormat):
            raise ValueError(f"int_range={self.int_range!r} needs an integer element format, "
                             f"got {elem.name}")
        if isinstance(elem, IntFormat) and not elem.signed and self.int_range != "asymmetric":
            raise ValueError(f"unsigned {elem.name} needs int_range='asymmetric'")
        sf = self.scale_format
        if sf is not None and not isinstance(sf, (E8M0Format, FloatFormat)):
            raise ValueError(f"scale_format must be e8m0 or a float format, got {sf.name}")
        if self.scale_rounding != "floor" and not isinstance(sf, E8M0Format):
            raise ValueError(f"scale_rounding={self.scale_rounding!r} applies to e8m0 (power-of-two) "
                             f"scales only; this spec's scales are {getattr(sf, 'name', 'float32')}")
        if isinstance(sf, E8M0Format):
            if self.int_range == "asymmetric":
                raise ValueError("power-of-two (e8m0) scales do not support asymmetric ints")
            if self.tensor_scale:
                raise ValueError("tensor_scale needs a float scale format, not e8m0")
        if self.tensor_scale and sf is None:
            raise ValueError("tensor_scale needs a low-precision scale_format (e.g. ue4m3)")
        if not self.name:
            object.__setattr__(self, "name", _canonical_name(self))

    @property
    def pow2_scales(self) -> bool:
        return isinstance(self.scale_format, E8M0Format)


Spec = Union[ElementFormat, QuantSpec]


def _canonical_name(s: QuantSpec) -> str:
    gran = {"tensor": "tensor", "channel": "channel", "block": f"g{s.block_size}"}[s.granularity]
    out = f"{s.elem.name}@{gran}"
    if s.scale_format is not None:
        out += f":{s.scale_format.name}"
    if s.int_range != "restricted":
        out += "+" + {"full": "full", "asymmetric": "asym"}[s.int_range]
    if s.clip == "mse":
        out += "+mse"
    if s.pow2_scales and s.scale_rounding != "floor":
        out += f"+{s.scale_rounding}"
    if s.tensor_scale:
        out += "+2level"
    return out


def _mx(elem: str, name: str) -> QuantSpec:
    return QuantSpec(ELEMENT_FORMATS[elem], "block", 32, E8M0Format(), name=name)


NAMED_SPECS: dict[str, QuantSpec] = {
    "mxfp8_e4m3": _mx("fp8_e4m3", "mxfp8_e4m3"),
    "mxfp8_e5m2": _mx("fp8_e5m2", "mxfp8_e5m2"),
    "mxfp6_e3m2": _mx("fp6_e3m2", "mxfp6_e3m2"),
    "mxfp6_e2m3": _mx("fp6_e2m3", "mxfp6_e2m3"),
    "mxfp4": _mx("fp4_e2m1", "mxfp4"),
    "mxint8": _mx("int8", "mxint8"),
    "nvfp4": QuantSpec(ELEMENT_FORMATS["fp4_e2m1"], "block", 16, ELEMENT_FORMATS["ue4m3"],
                       tensor_scale=True, name="nvfp4"),
    "nvfp4_single": QuantSpec(ELEMENT_FORMATS["fp4_e2m1"], "block", 16, ELEMENT_FORMATS["ue4m3"],
                              name="nvfp4_single"),
    "ternary": QuantSpec(TernaryFormat(), "tensor", clip="absmean", name="ternary"),
    "binary": QuantSpec(BinaryFormat(), "tensor", clip="absmean", name="binary"),
}

_OPTIONS = ("asym", "full", "mse", "floor", "ceil", "even", "rceil", "2level")
_GRAN = re.compile(r"^(tensor|channel|[gb](\d+))$")


def valid_names() -> list[str]:
    """Every registered name (element formats and named specs)."""
    return sorted(set(ELEMENT_FORMATS) | set(NAMED_SPECS))


def resolve_spec(spec: "str | Spec") -> Spec:
    """Turns a name (see the module docstring) or a spec object into a spec object."""
    if isinstance(spec, (QuantSpec, IntFormat, FloatFormat, E8M0Format)):
        return spec
    if isinstance(spec, (TernaryFormat, BinaryFormat)):
        return NAMED_SPECS[spec.name]
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a name or a spec object, got {type(spec).__name__}: {spec!r}")
    if spec in NAMED_SPECS:
        return NAMED_SPECS[spec]
    head, *opts = spec.split("+")
    head, _, sf_name = head.partition(":")
    base, at, gran = head.partition("@")
    for o in opts:
        if o not in _OPTIONS:
            raise ValueError(f"unknown option {o!r} in spec {spec!r}; valid options: {_OPTIONS}")
    if base in NAMED_SPECS and base not in ELEMENT_FORMATS:
        if at or sf_name:
            raise ValueError(f"named spec {base!r} fixes granularity and scale format; "
                             f"only +options may follow it (got {spec!r})")
        parent, fields = NAMED_SPECS[base], {}
    else:
        try:
            elem = element_format(base)
        except ValueError as err:
            if not str(err).startswith("unknown element format"):
                raise ValueError(f"invalid format {base!r} in spec {spec!r}: {err}") from None
            raise ValueError(
                f"unknown format {base!r} in spec {spec!r}; valid names: {valid_names()} "
                "(or e<E>m<M>[_fn|_ext]), optionally with @tensor|@channel|@g<N>, :<scale "
                f"format> and +options {_OPTIONS}") from None
        if not at and not sf_name and not opts:
            return resolve_spec(elem)
        parent = NAMED_SPECS.get(base)  # ternary / binary keep their absmean rule
        fields = {} if parent else {"elem": elem, "granularity": "tensor"}
    if at:
        m = _GRAN.match(gran)
        if not m:
            raise ValueError(f"unknown granularity {gran!r} in spec {spec!r}; use tensor, channel, "
                             "g<N> or b<N>")
        if m.group(2):
            fields.update(granularity="block", block_size=int(m.group(2)))
        else:
            fields.update(granularity=m.group(1), block_size=0)
    if sf_name:
        fields["scale_format"] = None if sf_name in ("f32", "fp32") else element_format(sf_name)
    for o in opts:
        if o in ("asym", "full"):
            fields["int_range"] = "asymmetric" if o == "asym" else "full"
        elif o == "mse":
            fields["clip"] = "mse"
        elif o == "2level":
            fields["tensor_scale"] = True
        else:
            fields["scale_rounding"] = o
    if parent is not None:
        return dataclasses.replace(parent, name="", **fields) if fields else parent
    return QuantSpec(**fields)

