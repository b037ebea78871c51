"""Packed-weight matmul (W4A16 / W8A16 inference): ``x @ dequantize(w)`` from packed codes."""

from pallas_kernels.packed_matmul.api import packed_matmul
from pallas_kernels.packed_matmul.config import PackedMatmulConfig, default_config
from pallas_kernels.packed_matmul.reference import packed_matmul_reference

__all__ = ["PackedMatmulConfig", "default_config", "packed_matmul", "packed_matmul_reference"]
