"""Quantization specs: an element format plus how it is scaled, and the registry of names.

A spec is either a bare element format (a saturating cast with no scale) or a `QuantSpec`. Both are
frozen and hashable, so they can be `jax.jit` static arguments.

Short-name grammar (`resolve_spec`)::

    <base>[@<granularity>][:<scale format>][+<option>]...

* ``<base>``: an element format (`formats.ELEMENT_FORMATS`, or ``e<E>m<M>[_fn|_ext]``) or a named
  spec (``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e3m2``, ``mxfp6_e2m3``, ``mxfp4``, ``mxint8``,
  ``nvfp4``, ``nvfp4_single``, ``nvfp4_2d``, ``nvint4``, ``ternary``, ``binary``). A named spec
  fixes its granularity and scale format; the block specs (``mxfp*``, ``mxint8``, ``nvfp4*``,
  ``nvint4``) accept a 2-D block override (``nvfp4@g16x16``, ``mxfp4@g32x32``) and every named
  spec accepts +options.
* ``<granularity>``: ``tensor``, ``channel`` (one scale per slice along ``axis``), ``g<N>`` /
  ``b<N>`` (blocks of N consecutive elements along ``axis``) or ``g<N>x<N>`` / ``b<N>x<N>``
  (square 2-D blocks: one scale per N x N tile of the last two axes, leading axes are batch;
  ``axis`` must be one of the last two and both give the same result, so a weight quantizes
  identically for the forward and the backward product, as NVIDIA's NVFP4 recipe).
* ``<scale format>``: the format scales are stored in (default float32): ``e8m0`` (power-of-two,
  OCP MX rules), ``ue4m3``, ``bf16``, ``fp16``, ...
* ``<option>``: ``asym`` / ``full`` (integer range: zero-point asymmetric, or the full
  two's-complement range; the default is the restricted symmetric range +-(2^(b-1) - 1)),
  ``mse`` (MSE-optimal clip search instead of absmax), ``rms`` (QuEST: clip at alpha * RMS of the
  group, alpha the Gaussian-MSE-optimal clip of the element grid, `gaussian`), ``4o6``
  (Four Over Six: per block the better of the amax -> 6 and amax -> 4 scales; fp4_e2m1 with
  ue4m3 scales only), ``headroom`` (room for unbiased stochastic rounding: e8m0 float elements
  are scaled by 3/4 on the block's OCP scale, Tseng et al.; float-format scales map amax to
  max * 16/17; either way stochastic rounding never clips), ``floor`` / ``ceil`` /
  ``even`` / ``rceil`` (E8M0 scale rounding), ``2level`` (an extra float32 per-tensor scale, as
  NVFP4).

Examples: ``int8@channel``, ``int4@g128``, ``int4@g128+asym``, ``fp8_e4m3@tensor``,
``mxfp4+rceil``, ``fp4_e2m1@g16:ue4m3+2level`` (= ``nvfp4``), ``int8@channel+mse``,
``fp4_e2m1@g16x16:ue4m3+2level`` (= ``nvfp4_2d`` = ``nvfp4@g16x16``), ``mxfp4+rms``,
``nvfp4+4o6``, ``mxfp4+headroom``, ``int4@g16:ue4m3+2level`` (= ``nvint4``).

``axis`` (an argument of `fake_quant`/`quantize`) is always the axis along which elements share a
scale: for a [out, in] weight used as ``x @ w.T``, ``axis=-1`` gives one scale per output row.

References for the training recipes: Panferov et al., "QuEST", arXiv:2502.05003 and Castro et
al., "Quartet", arXiv:2505.14669 (``+rms``); NVIDIA, "Pretraining LLMs with NVFP4",
arXiv:2509.25149 (16x16 blocks); Cook et al., "Four Over Six", arXiv:2512.02010 (``+4o6``);
Tseng et al., "Training LLMs with MXFP4", arXiv:2502.20586 (``+headroom``); Chen et al., "INT
v.s. FP", arXiv:2510.25602 (``nvint4``).
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

Granularity = Literal["tensor", "channel", "block", "block2d"]
ClipRule = Literal["absmax", "mse", "absmean", "rms", "4o6"]
Pow2Rounding = Literal["floor", "ceil", "even", "rceil"]
IntRange = Literal["restricted", "full", "asymmetric"]

GRANULARITIES = ("tensor", "channel", "block", "block2d")
CLIP_RULES = ("absmax", "mse", "absmean", "rms", "4o6")
POW2_ROUNDINGS = ("floor", "ceil", "even", "rceil")
INT_RANGES = ("restricted", "full", "asymmetric")

# Candidate clip ratios of the MSE search: amax * ratio for ratio = 1, 0.975, ..., 0.4.
MSE_CLIP_RATIOS = tuple(1.0 - k / 40.0 for k in range(25))
# Four Over Six: the two-level tensor scale aims the largest block scale at 256 instead of
# UE4M3's 448, so that the 1.5x (amax -> 4) candidate still fits (authors' E4M3_MAX_FOUROVERSIX).
FOUR_OVER_SIX_SCALE_MAX = 256.0
# Tseng et al.'s MXFP4 stochastic-rounding headroom: elements are multiplied by 3/4 on the block's
# OCP scale (and the output divided by it), so amax * 3/4 / 2^k < 6 for FP4 and nothing clips.
HEADROOM = 0.75
# The same for float-format (UE4M3) scales: the block scale (and a two-level tensor scale) maps
# amax to max * 16/17. Round-to-nearest lowers a UE4M3 scale by less than a factor 17/16, so no
# element lands beyond max and stochastic rounding never clips (the 17/16 of the NVFP4 SR kernels
# in IST-DASLab/Quartet-II).
FLOAT_HEADROOM = 17.0 / 16.0


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """An element format with a scale per tensor, per channel or per block.

    Attributes:
      elem: the element format of the codes.
      granularity: ``tensor``, ``channel`` (the whole ``axis`` shares a scale), ``block`` or
        ``block2d`` (one scale per ``block_size`` x ``block_size`` tile of the last two axes).
      block_size: elements per block along ``axis`` (``block``), or the side of the square tile
        (``block2d``).
      scale_format: format the scales are stored in; ``None`` keeps float32 scales. `E8M0Format`
        gives OCP MX power-of-two scales, chosen by ``scale_rounding``.
      scale_rounding: E8M0 scale rule: ``floor`` (OCP MX v1.0: floor(log2 amax) - emax_elem),
        ``ceil``, ``even`` (amax rounded to the element's mantissa width first) or ``rceil``
        (NVIDIA/cuBLAS: ceil(log2(amax / max_elem))).
      int_range: integer elements only: ``restricted`` symmetric +-(2^(b-1)-1) (scale amax/qmax),
        ``full`` symmetric [-2^(b-1), 2^(b-1)-1] (scale amax/(2^(b-1)-1/2), as torchao), or
        ``asymmetric`` unsigned codes with a zero point.
      clip: ``absmax``, ``mse`` (search over `MSE_CLIP_RATIOS` for the smallest squared error per
        scale group), ``absmean`` (ternary/binary: BitNet b1.58 / XNOR-Net mean |x|), ``rms``
        (QuEST / Quartet: the clip is alpha * sqrt(mean(x^2)) of the group, alpha =
        `gaussian.gaussian_optimal_clip_for`; e8m0 scales 2^floor(log2(clip / max_elem)), or
        the ceiling for ``ceil`` / ``rceil``) or ``4o6`` (Four Over Six, fp4_e2m1 with ue4m3
        scales: per group the block scale amax/6 or amax/4, whichever gives the smaller sum of
        squared errors; two-level tensor scale amax_t / (6 * 256)).
      tensor_scale: add a float32 per-tensor scale above float-format block scales (NVFP4).
      headroom: room for unbiased stochastic rounding. e8m0 scales (float elements): quantize
        3/4 * x on the block's scale (from amax of x) and divide the result by 3/4 (Tseng et
        al.'s MXFP4). Float-format scales (ue4m3, NVFP4 / NVINT4): the block and tensor scales
        map amax to max * 16/17 (`FLOAT_HEADROOM`), so a rounded-down scale cannot push an
        element past max.
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
    headroom: bool = False
    name: str = ""

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity in ("block", "block2d"):
            if (isinstance(self.block_size, bool) or not isinstance(self.block_size, int)
                    or self.block_size < 1):
                raise ValueError(f"{self.granularity} granularity needs an int block_size >= 1, "
                                 f"got {self.block_size!r}")
        elif self.block_size:
            raise ValueError(f"block_size={self.block_size} is only meaningful with granularity "
                             "'block' or 'block2d'")
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
        if self.tensor_scale and self.int_range == "asymmetric":
            raise ValueError("tensor_scale (2level) does not support asymmetric ints (their "
                             "zero-point scales have no tensor scale); use the symmetric range")
        what = f"spec {self.name!r}: " if self.name else ""
        if self.clip == "rms":
            if self.int_range == "asymmetric":
                raise ValueError(f"{what}clip='rms' (+rms) needs a symmetric grid; asymmetric "
                                 "ints are not supported (use the restricted or full range)")
            if isinstance(sf, E8M0Format) and self.scale_rounding == "even":
                raise ValueError(f"{what}clip='rms' (+rms) with e8m0 scales supports "
                                 "scale_rounding 'floor', 'ceil' or 'rceil', not 'even'")
        if self.clip == "4o6":
            ok = (isinstance(elem, FloatFormat) and (elem.ebits, elem.mbits, elem.convention,
                                                     elem.signed) == (2, 1, "ext", True)
                  and isinstance(sf, FloatFormat) and sf.name == "ue4m3")
            if not ok:
                raise ValueError(
                    f"{what}clip='4o6' (+4o6, Four Over Six) needs fp4_e2m1 elements with ue4m3 "
                    f"scales (e.g. 'nvfp4+4o6', 'nvfp4_single+4o6', 'fp4_e2m1@g16:ue4m3+4o6'), "
                    f"got {elem.name} elements with {getattr(sf, 'name', 'float32')} scales")
        if self.headroom:
            pow2_ok = isinstance(sf, E8M0Format) and isinstance(elem, FloatFormat)
            float_ok = (isinstance(sf, FloatFormat) and self.int_range != "asymmetric"
                        and isinstance(elem, (FloatFormat, IntFormat)))
            if not (pow2_ok or float_ok):
                raise ValueError(
                    f"{what}headroom (+headroom) applies to float elements with power-of-two "
                    f"(e8m0) scales (e.g. 'mxfp4+headroom') or to symmetric float / int elements "
                    f"with float-format scales (e.g. 'nvfp4+headroom', 'nvint4+headroom'), got "
                    f"{elem.name} elements with {getattr(sf, 'name', 'float32')} scales")
            if self.clip != "absmax":
                raise ValueError(f"{what}headroom (+headroom) needs the absmax scale rule, "
                                 f"got clip={self.clip!r}")
        if not self.name:
            object.__setattr__(self, "name", _canonical_name(self))

    @property
    def pow2_scales(self) -> bool:
        return isinstance(self.scale_format, E8M0Format)

    @property
    def block_2d(self) -> bool:
        """One scale per square tile of the last two axes (``@g<N>x<N>``)."""
        return self.granularity == "block2d"


Spec = Union[ElementFormat, QuantSpec]


def recipe_options(spec: "Spec") -> tuple[str, ...]:
    """The 4-bit-recipe features a spec uses (2-D blocks, ``+rms``, ``+4o6``, ``+headroom``), as
    phrases for error messages; empty for other specs. Kernels that group along one axis with
    the plain absmax rules check this to fall back to XLA."""
    if not isinstance(spec, QuantSpec):
        return ()
    out = []
    if spec.granularity == "block2d":
        out.append(f"2-D {spec.block_size}x{spec.block_size} blocks "
                   f"(@g{spec.block_size}x{spec.block_size})")
    if spec.clip == "rms":
        out.append("the RMS clip (+rms)")
    if spec.clip == "4o6":
        out.append("Four Over Six block scales (+4o6)")
    if spec.headroom:
        out.append("the stochastic-rounding headroom (+headroom)")
    return tuple(out)


def _canonical_name(s: QuantSpec) -> str:
    gran = {"tensor": "tensor", "channel": "channel", "block": f"g{s.block_size}",
            "block2d": f"g{s.block_size}x{s.block_size}"}[s.granularity]
    out = f"{s.elem.name}@{gran}"
    if s.scale_format is not None:
        out += f":{s.scale_format.name}"
    if s.int_range != "restricted":
        out += "+" + {"full": "full", "asymmetric": "asym"}[s.int_range]
    if s.clip in ("mse", "rms"):
        out += f"+{s.clip}"
    if s.pow2_scales and s.scale_rounding != "floor":
        out += f"+{s.scale_rounding}"
    if s.tensor_scale:
        out += "+2level"
    if s.clip == "4o6":
        out += "+4o6"
    if s.headroom:
        out += "+headroom"
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
    # NVIDIA's NVFP4 weight recipe: one scale per 16 x 16 tile (arXiv:2509.25149, section 4.3).
    "nvfp4_2d": QuantSpec(ELEMENT_FORMATS["fp4_e2m1"], "block2d", 16, ELEMENT_FORMATS["ue4m3"],
                          tensor_scale=True, name="nvfp4_2d"),
    # INT4 with NVFP4's scaling: restricted +-7, UE4M3 block scales amax_b / 7 under the FP32
    # tensor scale amax_t / (448 * 7) (Chen et al., "INT v.s. FP", arXiv:2510.25602).
    "nvint4": QuantSpec(ELEMENT_FORMATS["int4"], "block", 16, ELEMENT_FORMATS["ue4m3"],
                        tensor_scale=True, name="nvint4"),
    "ternary": QuantSpec(TernaryFormat(), "tensor", clip="absmean", name="ternary"),
    "binary": QuantSpec(BinaryFormat(), "tensor", clip="absmean", name="binary"),
}

_OPTIONS = ("asym", "full", "mse", "rms", "4o6", "headroom", "floor", "ceil", "even", "rceil",
            "2level")
_CLIP_OPTIONS = ("mse", "rms", "4o6")
_GRAN = re.compile(r"^(tensor|channel|[gb](\d+)|[gb](\d+)x(\d+))$")
_GRAN_HELP = "tensor, channel, g<N> / b<N> (1-D blocks) or g<N>x<N> / b<N>x<N> (square 2-D blocks)"


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
    clips = [o for o in opts if o in _CLIP_OPTIONS]
    if len(set(clips)) > 1:
        raise ValueError(f"options {' and '.join('+' + c for c in clips)} in spec {spec!r} are "
                         f"exclusive: each chooses the clip rule; use one of {_CLIP_OPTIONS}")
    gfields = _parse_granularity(gran, spec) if at else {}
    if base in NAMED_SPECS and base not in ELEMENT_FORMATS:
        parent = NAMED_SPECS[base]
        if sf_name or (at and (parent.granularity not in ("block", "block2d")
                               or gfields.get("granularity") != "block2d")):
            raise ValueError(
                f"named spec {base!r} fixes granularity and scale format; only +options may "
                "follow it, and for a block spec a square 2-D block override @g<N>x<N> (e.g. "
                f"'nvfp4@g16x16', 'mxfp4@g32x32'); got {spec!r}")
        fields = {}
    else:
        try:
            elem = element_format(base)
        except ValueError as err:
            if not str(err).startswith("unknown element format"):
                raise ValueError(f"invalid format {base!r} in spec {spec!r}: {err}") from None
            raise ValueError(
                f"unknown format {base!r} in spec {spec!r}; valid names: {valid_names()} "
                f"(or e<E>m<M>[_fn|_ext]), optionally with @<granularity> ({_GRAN_HELP}), "
                f":<scale format> and +options {_OPTIONS}") from None
        if not at and not sf_name and not opts:
            return resolve_spec(elem)
        parent = NAMED_SPECS.get(base)  # ternary / binary keep their absmean rule
        fields = {} if parent else {"elem": elem, "granularity": "tensor"}
    fields.update(gfields)
    if sf_name:
        fields["scale_format"] = None if sf_name in ("f32", "fp32") else element_format(sf_name)
    for o in opts:
        if o in ("asym", "full"):
            fields["int_range"] = "asymmetric" if o == "asym" else "full"
        elif o in _CLIP_OPTIONS:
            fields["clip"] = o
        elif o == "2level":
            fields["tensor_scale"] = True
        elif o == "headroom":
            fields["headroom"] = True
        else:
            fields["scale_rounding"] = o
    try:
        if parent is not None:
            return dataclasses.replace(parent, name="", **fields) if fields else parent
        return QuantSpec(**fields)
    except ValueError as err:
        raise ValueError(f"invalid spec {spec!r}: {err}") from None


def _parse_granularity(gran: str, spec: str) -> dict:
    m = _GRAN.match(gran)
    if not m:
        raise ValueError(f"unknown granularity {gran!r} in spec {spec!r}; use {_GRAN_HELP}")
    if m.group(2):
        return {"granularity": "block", "block_size": int(m.group(2))}
    if m.group(3):
        rows, cols = int(m.group(3)), int(m.group(4))
        if rows != cols:
            raise ValueError(f"granularity {gran!r} in spec {spec!r}: 2-D blocks must be square "
                             f"(g<N>x<N>, e.g. g{rows}x{rows}), got {rows} x {cols}")
        return {"granularity": "block2d", "block_size": rows}
    return {"granularity": m.group(1), "block_size": 0}

