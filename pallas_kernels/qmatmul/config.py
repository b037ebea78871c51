"""Block sizes of the quantized-operand matmul kernel and their checks.

The kernel computes one product ``A [M, K] @ B [K, N]`` on the grid (M / block_m, N / block_n,
K / block_k); dimensions are zero-padded up to block multiples (zero groups quantize to zero and
the random bits use the unpadded operand's flat indices). Each operand is fake-quantized per tile,
so the tile's extent along the operand's quantization axis must hold whole quantization blocks:
in the forward ``block_k`` is a multiple of the block sizes of both ``x_spec`` and ``w_spec``. A
config given to `qmatmul` is used for the backward products too, with (block_m, block_n, block_k)
mapped onto each product's (rows, columns, contraction): dx [M, K, N] needs ``block_k`` and
``block_n`` to hold grad_spec and w_spec blocks, dw [K, N, M] needs ``block_m`` and ``block_k`` to
hold x_spec and grad_spec blocks. Without a config each product gets `default_config`.

References:
  JAX Pallas documentation, "Grid and BlockSpecs".
"""

from __future__ import annotations

import dataclasses

MAX_BLOCK_M = 128
MAX_BLOCK_N = 128
MAX_BLOCK_K = 256
MIN_BLOCK = 16  # GPU tensor-core dots need at least 16 rows / columns / depth


def is_power_of_two(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


@dataclasses.dataclass(frozen=True)
class QMatmulConfig:
    """Tile sizes of one `qmatmul` product (all positive powers of two).

    Attributes:
      block_m: rows of the left operand per tile.
      block_n: columns of the right operand per tile.
      block_k: contraction depth per tile (holds whole quantization blocks of both operands).
    """

    block_m: int = 64
    block_n: int = 64
    block_k: int = 64

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if not is_power_of_two(value):
                raise ValueError(f"QMatmulConfig.{name}={value!r} must be a positive power of two")


def check_multiple(cfg: QMatmulConfig, field: str, multiple: int, what: str) -> None:
    """Raises unless ``cfg.<field>`` is a multiple of the quantization block ``multiple``."""
    value = getattr(cfg, field)
    if value % multiple:
        raise ValueError(f"{field}={value} is not a multiple of the quantization block size "
                         f"{multiple} of {what}; use a {field} that is a multiple of {multiple}")


def default_config(m: int, n: int, k: int, *, mult_m: int = 1, mult_n: int = 1,
                   mult_k: int = 1) -> QMatmulConfig:
    """Blocks for an [m, k] @ [k, n] product whose tiles must be multiples of ``mult_*``."""
    def pick(dim: int, cap: int, mult: int) -> int:
        if not is_power_of_two(mult):
            raise ValueError(f"quantization block size {mult} is not a power of two; the Pallas "
                             "kernel's tiles are powers of two (use implementation='xla')")
        return max(mult, min(max(next_power_of_two(dim), MIN_BLOCK), cap))

    return QMatmulConfig(pick(m, MAX_BLOCK_M, mult_m), pick(n, MAX_BLOCK_N, mult_n),
                         pick(k, MAX_BLOCK_K, mult_k))
