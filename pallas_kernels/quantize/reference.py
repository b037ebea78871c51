"""The jnp reference of the fused quantize kernel: the numerics core itself."""

from bitscale import dequantize, fake_quant, quantize  # noqa: F401  (re-exported references)

fake_quant_reference = fake_quant
quantize_reference = quantize
