"""Pallas GPU/TPU kernels for bitscale, each bit-identical to its jnp reference.

Every entry point takes ``implementation="auto" | "pallas" | "xla"`` and ``interpret``; see
README.md beside this file. `lowering_target` traces the kernels for a GPU or TPU on any host
(for ``jax.export``).
"""

from pallas_kernels.common import IMPLEMENTATIONS, PLATFORMS, lowering_target, use_pallas
from pallas_kernels.hadamard import hadamard_fake_quant, hadamard_transform
from pallas_kernels.packed_matmul import PackedMatmulConfig, packed_matmul
from pallas_kernels.qmatmul import QMatmulConfig, qmatmul
from pallas_kernels.quantize import QuantizeConfig, fake_quant, quantize

__all__ = ["IMPLEMENTATIONS", "PLATFORMS", "PackedMatmulConfig", "QMatmulConfig", "QuantizeConfig",
           "fake_quant", "hadamard_fake_quant", "hadamard_transform", "lowering_target",
           "packed_matmul", "qmatmul", "quantize", "use_pallas"]
