"""Fused quantize / fake-quantize kernel (one pass: read x, write the result or codes + scales)."""

from pallas_kernels.quantize.api import fake_quant, kernel_support, quantize
from pallas_kernels.quantize.config import QuantizeConfig

__all__ = ["QuantizeConfig", "fake_quant", "kernel_support", "quantize"]
