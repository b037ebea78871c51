"""Low-precision numerics: formats, rounding, scaling, quantize / dequantize / fake_quant."""

from bitscale.numerics.eden import ms_eden
from bitscale.numerics.estimators import ClippedSTE, STE, TrustMask, lsq_fake_quant
from bitscale.numerics.formats import (
    BinaryFormat,
    E8M0Format,
    ELEMENT_FORMATS,
    FloatFormat,
    IntFormat,
    TernaryFormat,
    element_format,
)
from bitscale.numerics.gaussian import gaussian_optimal_clip, gaussian_optimal_clip_for
from bitscale.numerics.qarray import QArray
from bitscale.numerics.quantization import dequantize, fake_quant, quantize
from bitscale.numerics.specs import NAMED_SPECS, QuantSpec, resolve_spec, valid_names
from bitscale.numerics.transforms import (
    gaussian_pseudo_quant, hadamard_matrix, hadamard_transform, random_signs)

__all__ = [
    "BinaryFormat", "ClippedSTE", "E8M0Format", "ELEMENT_FORMATS", "FloatFormat", "IntFormat",
    "NAMED_SPECS", "QArray", "QuantSpec", "STE", "TernaryFormat", "TrustMask", "dequantize",
    "element_format", "fake_quant", "gaussian_optimal_clip", "gaussian_optimal_clip_for",
    "gaussian_pseudo_quant", "hadamard_matrix", "hadamard_transform", "lsq_fake_quant",
    "ms_eden", "quantize", "random_signs", "resolve_spec", "valid_names",
]
