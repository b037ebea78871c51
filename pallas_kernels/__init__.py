"""Pallas GPU/TPU kernels for bitscale, each bit-identical to its jnp reference.

Every entry point takes ``implementation="auto" | "pallas" | "xla"`` and ``interpret``; see
README.md beside this file.
"""

from pallas_kernels.common import IMPLEMENTATIONS, use_pallas
from pallas_kernels.hadamard import hadamard_fake_quant, hadamard_transform
from pallas_kernels.packed_matmul import PackedMatmulConfig, packed_matmul
from pallas_kernels.qmatmul import QMatmulConfig, qmatmul
from pallas_kernels.quantize import QuantizeConfig, fake_quant, quantize

__all__ = ["IMPLEMENTATIONS", "PackedMatmulConfig", "QMatmulConfig", "QuantizeConfig",
           "fake_quant", "hadamard_fake_quant", "hadamard_transform", "packed_matmul", "qmatmul",
           "quantize", "use_pallas"]
