"""Quantized-operand training matmul: fake-quantized x and w in-kernel, quantized-gradient VJP."""

from pallas_kernels.qmatmul.api import kernel_support, product_configs, qmatmul
from pallas_kernels.qmatmul.config import QMatmulConfig, default_config
from pallas_kernels.qmatmul.kernel import fake_quant_tile
from pallas_kernels.qmatmul.reference import grad_keys, qmatmul_reference

__all__ = ["QMatmulConfig", "default_config", "fake_quant_tile", "grad_keys", "kernel_support",
           "product_configs", "qmatmul", "qmatmul_reference"]
