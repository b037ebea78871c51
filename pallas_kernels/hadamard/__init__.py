"""Randomized block Hadamard rotation kernel, alone or fused with fake quantization."""

from pallas_kernels.hadamard.api import hadamard_fake_quant, hadamard_transform

__all__ = ["hadamard_fake_quant", "hadamard_transform"]
