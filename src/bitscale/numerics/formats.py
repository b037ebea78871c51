"""Element number formats: integer, ExMy minifloat and E8M0, as frozen hashable dataclasses.

A format describes one element's grid of representable values. It says nothing about scaling; the
scaled and block specs in `specs.py` combine an element format with a scale rule. Every format here
is hashable and can be a `jax.jit` static argument.

Floating-point conventions (bias = 2^(e-1) - 1, emin = 1 - bias):

* ``ieee`` – top exponent reserved for Inf/NaN, emax = bias (fp8_e5m2, fp16, bf16).
* ``fn``   – OCP E4M3 style: only S.1..1.1..1 is NaN, no Inf, emax = bias + 1 (fp8_e4m3, ue4m3).
* ``ext``  – no Inf and no NaN encodings at all, emax = bias + 1 (OCP FP6 and FP4).

References:
    OCP 8-bit Floating Point Specification (OFP8) rev 1.0, 2023.
    OCP Microscaling Formats (MX) Specification v1.0, 2023.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, Union

Convention = Literal["ieee", "fn", "ext"]
_CONVENTIONS = ("ieee", "fn", "ext")


@dataclasses.dataclass(frozen=True)
class IntFormat:
    """An integer grid: two's complement ``bits`` wide (signed) or ``[0, 2^bits - 1]`` (unsigned).

    As a plain element format it is a saturating round-to-integer cast (no scale).
    """

    bits: int
    signed: bool = True
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise ValueError(f"IntFormat bits must be an int in 1..16, got {self.bits!r}")
        if self.signed and self.bits < 2:
            raise ValueError("a signed IntFormat needs at least 2 bits; use `binary` for 1-bit signs")
        if not self.name:
            object.__setattr__(self, "name", f"{'int' if self.signed else 'uint'}{self.bits}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def max_value(self) -> float:
        return float(self.qmax)

    @property
    def storage_bits(self) -> int:
        return self.bits

    @property
    def emax(self) -> int:
        """Largest power of two of the grid, as OCP MX uses for INT8 elements (k/64, emax 0)."""
        return 0


@dataclasses.dataclass(frozen=True)
class TernaryFormat:
    """The grid {-1, 0, 1}. Scaled by BitNet b1.58's absmean rule in `specs.ternary`."""

    name: str = "ternary"

    @property
    def qmin(self) -> int:
        return -1

    @property
    def qmax(self) -> int:
        return 1

    @property
    def max_value(self) -> float:
        return 1.0

    @property
    def storage_bits(self) -> int:
        return 2


@dataclasses.dataclass(frozen=True)
class BinaryFormat:
    """The grid {-1, +1} with sign(0) := +1 (XNOR-Net convention)."""

    name: str = "binary"

    @property
    def max_value(self) -> float:
        return 1.0

    @property
    def storage_bits(self) -> int:
        return 1


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format with ``ebits`` exponent and ``mbits`` mantissa bits.

    IEEE-style bias and gradual underflow (subnormals). ``signed=False`` drops the sign bit (the
    NVFP4 block-scale format UE4M3). Use `E8M0Format` for the exponent-only MX scale.
    """

    ebits: int
    mbits: int
    convention: Convention = "ieee"
    signed: bool = True
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.ebits, int) or not 1 <= self.ebits <= 8:
            raise ValueError(f"FloatFormat ebits must be an int in 1..8, got {self.ebits!r}")
        if not isinstance(self.mbits, int) or not 0 <= self.mbits <= 23:
            raise ValueError(f"FloatFormat mbits must be an int in 0..23, got {self.mbits!r}")
        if self.convention not in _CONVENTIONS:
            raise ValueError(
                    f"FloatFormat convention must be one of {_CONVENTIONS}, got {self.convention!r}")
        if self.convention == "fn" and self.mbits == 0:
            raise ValueError("the 'fn' convention needs mbits >= 1 (its only NaN is S.1..1.1..1)")
        if self.convention == "ieee" and self.ebits == 1:
            raise ValueError("the 'ieee' convention needs ebits >= 2 (ebits=1 has no finite normals)")
        if self.max_value > 3.4028234663852886e38:
            raise ValueError(f"e{self.ebits}m{self.mbits} ({self.convention}) exceeds float32's range")
        if not self.name:
            suffix = "" if self.convention == "ieee" else f"_{self.convention}"
            object.__setattr__(self, "name", f"{'' if self.signed else 'u'}e{self.ebits}m{self.mbits}{suffix}")

    @property
    def bias(self) -> int:
        return 2 ** (self.ebits - 1) - 1

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def emax(self) -> int:
        return self.bias if self.convention == "ieee" else self.bias + 1

    @property
    def max_significand(self) -> int:
        """Largest integer significand M such that max_value = M * 2^(emax - mbits)."""
        full = 2 ** (self.mbits + 1) - 1
        return full - 1 if self.convention == "fn" else full

    @property
    def max_value(self) -> float:
        return float(self.max_significand) * 2.0 ** (self.emax - self.mbits)

    @property
    def min_normal(self) -> float:
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.mbits)

    @property
    def has_inf(self) -> bool:
        return self.convention == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.convention != "ext"

    @property
    def storage_bits(self) -> int:
        return self.ebits + self.mbits + (1 if self.signed else 0)


@dataclasses.dataclass(frozen=True)
class E8M0Format:
    """OCP MX shared scale: 2^(c - 127) for codes c = 0..254, c = 255 is NaN; no zero, no sign.

    As an element cast it follows ml_dtypes' ``float8_e8m0fnu``: a mantissa of exactly .5 rounds up,
    zero and negative inputs give NaN; finite overflow and +Inf saturate to 2^127 (ml_dtypes gives NaN).
    """

    name: str = "e8m0"

    @property
    def max_value(self) -> float:
        return 2.0**127

    @property
    def storage_bits(self) -> int:
        return 8

    @property
    def emin(self) -> int:
        return -127

    @property
    def emax(self) -> int:
        return 127


ElementFormat = Union[IntFormat, FloatFormat, E8M0Format, TernaryFormat, BinaryFormat]

INT_FORMATS: dict[str, IntFormat] = {}
for _b in range(2, 9):
    INT_FORMATS[f"int{_b}"] = IntFormat(_b, True)
for _b in range(1, 9):
    INT_FORMATS[f"uint{_b}"] = IntFormat(_b, False)

FLOAT_FORMATS: dict[str, FloatFormat] = {
        "fp8_e4m3": FloatFormat(4, 3, "fn", name="fp8_e4m3"),
        "fp8_e5m2": FloatFormat(5, 2, "ieee", name="fp8_e5m2"),
        "fp6_e3m2": FloatFormat(3, 2, "ext", name="fp6_e3m2"),
        "fp6_e2m3": FloatFormat(2, 3, "ext", name="fp6_e2m3"),
        "fp4_e2m1": FloatFormat(2, 1, "ext", name="fp4_e2m1"),
        "bf16": FloatFormat(8, 7, "ieee", name="bf16"),
        "fp16": FloatFormat(5, 10, "ieee", name="fp16"),
        "ue4m3": FloatFormat(4, 3, "fn", signed=False, name="ue4m3"),
        # UE5M3 has no reference implementation (ml_dtypes, torch, torchao lack it); bitscale defines it
        # as unsigned E5M3 with the OCP "fn" convention: bias 15, max 114688, min subnormal 2^-17.
        "ue5m3": FloatFormat(5, 3, "fn", signed=False, name="ue5m3"),
}

ELEMENT_FORMATS: dict[str, ElementFormat] = {
        **INT_FORMATS,
        **FLOAT_FORMATS,
        "e8m0": E8M0Format(),
        "ternary": TernaryFormat(),
        "binary": BinaryFormat(),
}

_EXMY = re.compile(r"^(u?)e(\d+)m(\d+)(?:_(ieee|fn|ext))?$")


def element_format(name: str) -> ElementFormat:
    """Looks up an element format by name; also parses arbitrary ``[u]e<E>m<M>[_ieee|_fn|_ext]``."""
    if not isinstance(name, str):
        raise TypeError(f"format name must be a str, got {type(name).__name__}: {name!r}")
    if name in ELEMENT_FORMATS:
        return ELEMENT_FORMATS[name]
    m = _EXMY.match(name)
    if m:
        return FloatFormat(int(m.group(2)), int(m.group(3)), m.group(4) or "ieee",
                                              signed=not m.group(1))
    raise ValueError(
            f"unknown element format {name!r}; valid names: {sorted(ELEMENT_FORMATS)}, or an arbitrary "
            "minifloat 'e<E>m<M>' with optional suffix _ieee (default), _fn or _ext and optional 'u' prefix")
