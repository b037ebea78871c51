"""Block sizes of the packed-weight matmul kernel and their checks.

The kernel's grid is (M / block_m, N / block_n, K / block_k). Every block size is a power of two
(Triton and Mosaic tiles); ``block_k`` must hold whole quantization groups, so it is a multiple of
the spec's group size along K. M is zero-padded up to a multiple of ``block_m``; K and N must be
multiples of ``block_k`` and ``block_n`` (the default config picks blocks that divide them).

References:
  JAX Pallas documentation, "Grid and BlockSpecs"; Frantar et al., "Marlin", arXiv:2408.11743.
"""

from __future__ import annotations

import dataclasses

# Largest default blocks: a decode GEMV (M <= 16) streams weight tiles of block_k x block_n.
MAX_BLOCK_M = 64
MAX_BLOCK_N = 256
MAX_BLOCK_K = 512
MIN_BLOCK_M = 16  # GPU tensor-core dots need at least 16 rows


def is_power_of_two(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def largest_power_of_two_divisor(n: int) -> int:
    return n & -n if n > 0 else 1


@dataclasses.dataclass(frozen=True)
class PackedMatmulConfig:
    """Tile sizes of `packed_matmul` (all positive powers of two).

    Attributes:
      block_m: rows of x per tile (M is zero-padded to a multiple of it).
      block_n: output columns per tile (a divisor of N).
      block_k: contraction depth per tile (a divisor of K and a multiple of the group size).
    """

    block_m: int = 16
    block_n: int = 128
    block_k: int = 256

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if not is_power_of_two(value):
                raise ValueError(
                    f"PackedMatmulConfig.{name}={value!r} must be a positive power of two")


def check_config(cfg: PackedMatmulConfig, *, k: int, n: int, group: int, spec_name: str,
                 bits: int, blocked: bool) -> None:
    """Checks ``cfg`` against the problem; every message names both numbers involved."""
    if not isinstance(cfg, PackedMatmulConfig):
        raise TypeError(f"config must be a PackedMatmulConfig, got {type(cfg).__name__}")
    if blocked and cfg.block_k % group:
        raise ValueError(
            f"block_k={cfg.block_k} is not a multiple of the quantization group size {group} of "
            f"spec {spec_name!r}; use a block_k that is a multiple of {group}")
    if k % cfg.block_k:
        raise ValueError(f"K={k} is not a multiple of block_k={cfg.block_k}; pick a block_k that "
                         f"divides {k}")
    if n % cfg.block_n:
        raise ValueError(f"N={n} is not a multiple of block_n={cfg.block_n}; pick a block_n that "
                         f"divides {n}")
    per_byte = 8 // bits
    if cfg.block_n % per_byte:
        raise ValueError(f"block_n={cfg.block_n} must be a multiple of {per_byte}: {bits}-bit "
                         f"codes pack {per_byte} columns per byte")


def default_config(*, m: int, k: int, n: int, group: int, blocked: bool) -> PackedMatmulConfig:
    """Largest blocks (up to MAX_BLOCK_*) that divide K and N and hold whole groups."""
    block_m = min(max(next_power_of_two(m), MIN_BLOCK_M), MAX_BLOCK_M)
    block_n = min(largest_power_of_two_divisor(n), MAX_BLOCK_N)
    block_k = min(largest_power_of_two_divisor(k), max(MAX_BLOCK_K, group if blocked else 1))
    if blocked and block_k % group:
        raise ValueError(
            f"no power-of-two block_k divides K={k} and is a multiple of the quantization group "
            f"size {group}; the Pallas kernel needs both (use implementation='xla')")
    return PackedMatmulConfig(block_m, block_n, block_k)
