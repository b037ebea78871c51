"""Block sizes and launch parameters of the packed-weight matmul kernel, their checks, and the
GPU shared-memory model the defaults are chosen by.

The kernel's grid is (M / block_m, N / block_n, split_k); every program owns one output tile
[block_m, block_n] of one K slice (K / split_k rows) and loops over that slice in steps of
``block_k`` itself, so no two programs touch the same output block (split_k > 1 writes float32
partial products [split_k, M, N] that XLA sums). Every block size is a power of two (Triton and
Mosaic tiles); ``block_k`` must hold whole quantization groups, so it is a multiple of the spec's
group size along K. M is zero-padded up to a multiple of ``block_m``; K must be a multiple of
``block_k * split_k`` and N of ``block_n`` (the default config picks blocks that divide them).

Shared memory (GPU, Triton): `smem_footprint` models one program as

    num_stages * (x slice [block_m, block_k] + packed code slice [block_k, block_n * bits / 8]
                  + scale / zero-point rows of the slice)          # software-pipelined loads
    + x operand [block_m, kd] + weight operand [kd, block_n]       # dot operands, staged in smem
    + output tile [block_m, block_n] float32                       # epilogue layout conversion

with ``kd`` the K extent of one dot (the group size for block-scaled specs on the exact
per-group path, else block_k) and the operands in their dot dtypes. It is an upper bound of
what Triton allocates (it reuses buffers whose lifetimes do not overlap); the defaults keep it
under the smallest of `pallas_kernels.common.SMEM_LIMITS`.

References:
  JAX Pallas documentation, "Grid and BlockSpecs" and "Pallas TPU pipelining"; Frantar et al.,
  "Marlin", arXiv:2408.11743; Triton's software pipeliner (``num_stages``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from pallas_kernels.common import SMEM_LIMITS, check_launch

# Largest default blocks: a decode GEMV (M <= 16) streams weight tiles of block_k x block_n.
MAX_BLOCK_M = 64
MAX_BLOCK_N = 256
MAX_BLOCK_K = 512
MIN_BLOCK_M = 16  # GPU tensor-core dots need at least 16 rows
MIN_BLOCK_N = 32
MIN_BLOCK_K = 32
#: Programs the default config aims at on a GPU (H100: 132 SMs), via split_k for small M x N.
TARGET_PROGRAMS = 128
MAX_SPLIT_K = 8
#: The shared memory every default GPU config fits: the smallest of SMEM_LIMITS (A100).
SMEM_BUDGET = min(SMEM_LIMITS.values())
TPU_LANES = 128


def is_power_of_two(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def largest_power_of_two_divisor(n: int) -> int:
    return n & -n if n > 0 else 1


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What the shared-memory model needs to know about a problem (see the module docstring).

    Attributes:
      bits: code width (4 or 8).
      group: K rows per scale row (block size; 0 for channel / tensor / element casts).
      blocked: block granularity.
      x_bytes / w_bytes: itemsize of the dot's x and weight operands.
      scale_bytes: itemsize of the stored scales (0 without scales).
      zp: integer zero points (int32) are present.
      per_group: scales applied to per-group float32 partial products (dots of K = group).
    """

    bits: int
    group: int
    blocked: bool
    x_bytes: int
    w_bytes: int
    scale_bytes: int
    zp: bool
    per_group: bool


@dataclasses.dataclass(frozen=True)
class PackedMatmulConfig:
    """Tile sizes and launch parameters of `packed_matmul` (block sizes: positive powers of two).

    Attributes:
      block_m: rows of x per tile (M is zero-padded to a multiple of it).
      block_n: output columns per tile (a divisor of N).
      block_k: contraction depth per loop step (divides K / split_k; a multiple of the group).
      num_warps: Triton warps per program (a power of two in [1, 32]).
      num_stages: Triton software-pipelining depth of the K loop (>= 1).
      split_k: K slices computed by separate programs (a power of two); their float32 partial
        products are summed by XLA. More programs for small M x N (decode GEMVs).
    """

    block_m: int = 16
    block_n: int = 128
    block_k: int = 256
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k", "split_k"):
            value = getattr(self, name)
            if not is_power_of_two(value):
                raise ValueError(
                    f"PackedMatmulConfig.{name}={value!r} must be a positive power of two")
        try:
            check_launch(self.num_warps, self.num_stages)
        except ValueError as e:
            raise ValueError(f"PackedMatmulConfig: {e}") from None

    def smem_footprint(self, fp: Footprint) -> int:
        """Modelled shared memory of one program on a GPU (bytes; the module docstring)."""
        bm, bn, bk = self.block_m, self.block_n, self.block_k
        rows = bk // fp.group if fp.blocked else 1
        staged = bm * bk * fp.x_bytes + bk * bn * fp.bits // 8 + rows * bn * fp.scale_bytes
        if fp.zp:
            staged += rows * bn * 4
        kd = fp.group if (fp.blocked and fp.per_group) else bk
        operands = bm * kd * fp.x_bytes + kd * bn * fp.w_bytes
        return self.num_stages * staged + operands + bm * bn * 4

    def smem_bytes(self, m: int, k: int, n: int, spec: Any, x_dtype: Any, *,
                   w_dtype: Any = jnp.float32, compute_dtype: Any = None) -> int:
        """Modelled GPU shared memory of one program (bytes) for x [m, k] (``x_dtype``) times
        ``bs.quantize(w, spec, axis=0)`` of a [k, n] weight of dtype ``w_dtype``, with the plan
        `packed_matmul` makes for them (``compute_dtype`` as there). Compare it with
        `pallas_kernels.common.SMEM_LIMITS`."""
        from pallas_kernels.packed_matmul.api import footprint_of

        del m, k, n  # the footprint depends on the tiles and dtypes only
        return self.smem_footprint(footprint_of(spec, x_dtype, w_dtype, compute_dtype,
                                                self.block_k))


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
    if k % (cfg.block_k * cfg.split_k):
        raise ValueError(f"K={k} is not a multiple of block_k * split_k = {cfg.block_k} * "
                         f"{cfg.split_k}; pick a split_k that divides {k // cfg.block_k}")
    if n % cfg.block_n:
        raise ValueError(f"N={n} is not a multiple of block_n={cfg.block_n}; pick a block_n that "
                         f"divides {n}")
    per_byte = 8 // bits
    if cfg.block_n % per_byte:
        raise ValueError(f"block_n={cfg.block_n} must be a multiple of {per_byte}: {bits}-bit "
                         f"codes pack {per_byte} columns per byte")


def platform_problem(cfg: PackedMatmulConfig, *, platform: str | None, m: int, k: int, n: int,
                     fp: Footprint) -> str | None:
    """Why ``cfg`` cannot be lowered for ``platform`` (None: it can). ``m`` is the padded M."""
    if platform in ("cuda", "rocm"):
        if cfg.block_m < MIN_BLOCK_M or cfg.block_n < 16 or cfg.block_k < 16:
            return (f"Triton dots need tiles of at least 16 x 16 x 16, got block_m={cfg.block_m}, "
                    f"block_n={cfg.block_n}, block_k={cfg.block_k}")
        if fp.blocked and fp.per_group and fp.group < 16:
            return f"Triton dots need K >= 16 per dot, got quantization groups of {fp.group}"
    if platform == "tpu":
        cols = cfg.block_n * fp.bits // 8
        if cols % TPU_LANES and cfg.block_n != n:
            return (f"Mosaic TPU blocks need a last dim divisible by {TPU_LANES} or the full dim: "
                    f"the packed code block has {cols} columns (block_n={cfg.block_n}, "
                    f"{fp.bits}-bit codes) of {n * fp.bits // 8}")
        if cfg.block_m % 8 and cfg.block_m != m:
            return f"Mosaic TPU blocks need block_m divisible by 8, got {cfg.block_m}"
        if cfg.split_k > 1:
            kslice = k // cfg.split_k
            rows = kslice // fp.group if fp.blocked else 1
            if kslice % TPU_LANES or (fp.blocked and fp.scale_bytes and rows % 8):
                return (f"Mosaic TPU blocks of K / split_k = {kslice} rows need K slices "
                        f"divisible by {TPU_LANES} and 8 scale rows")
    return None


def default_config(*, m: int, k: int, n: int, group: int, blocked: bool,
                   fp: Footprint | None = None, platform: str | None = None
                   ) -> PackedMatmulConfig:
    """The default tiles for x [m, k] @ w [k, n].

    Largest blocks (up to MAX_BLOCK_*) that divide K and N and hold whole groups; on a GPU
    (``platform`` "cuda" / "rocm", or None: the interpreter checks the GPU choice) block_k,
    then num_stages, then block_n shrink until `PackedMatmulConfig.smem_footprint` fits
    SMEM_BUDGET, then block_n narrows to 128 and split_k grows until about TARGET_PROGRAMS
    programs run; on a TPU block_n
    is widened to whole 128-lane packed-code blocks.
    """
    block_m = min(max(next_power_of_two(m), MIN_BLOCK_M), MAX_BLOCK_M)
    block_n = min(largest_power_of_two_divisor(n), MAX_BLOCK_N)
    block_k = min(largest_power_of_two_divisor(k), max(MAX_BLOCK_K, group if blocked else 1))
    if blocked and block_k % group:
        raise ValueError(
            f"no power-of-two block_k divides K={k} and is a multiple of the quantization group "
            f"size {group}; the Pallas kernel needs both (use implementation='xla')")
    small_m = block_m <= 16
    cfg = PackedMatmulConfig(block_m, block_n, block_k, num_warps=4,
                             num_stages=4 if small_m else 3)
    if fp is None:
        return cfg
    if platform == "tpu":
        per_byte = 8 // fp.bits
        wide = TPU_LANES * per_byte
        if n % wide == 0:
            bn = max(block_n, wide)
        elif is_power_of_two(n):
            bn = n  # one block of the full N
        else:
            bn = block_n  # `platform_problem` names the rule this breaks
        return dataclasses.replace(cfg, block_n=bn, num_stages=1)
    min_k = max(MIN_BLOCK_K, group if blocked else 1)
    while cfg.smem_footprint(fp) > SMEM_BUDGET:
        if cfg.block_k > min_k and cfg.block_k // 2 >= min_k:
            cfg = dataclasses.replace(cfg, block_k=cfg.block_k // 2)
        elif cfg.num_stages > 2:
            cfg = dataclasses.replace(cfg, num_stages=cfg.num_stages - 1)
        elif cfg.block_n > MIN_BLOCK_N:
            cfg = dataclasses.replace(cfg, block_n=cfg.block_n // 2)
        elif cfg.block_m > MIN_BLOCK_M:
            cfg = dataclasses.replace(cfg, block_m=cfg.block_m // 2)
        else:
            break
    m_pad = -(-max(m, 1) // cfg.block_m) * cfg.block_m
    programs = (m_pad // cfg.block_m) * (n // cfg.block_n)
    if programs < TARGET_PROGRAMS and cfg.block_n > 128:
        # More, narrower tiles before split-K (whose partial products cost memory traffic).
        cfg = dataclasses.replace(cfg, block_n=128)
        programs = (m_pad // cfg.block_m) * (n // cfg.block_n)
    split = 1
    while (programs * split * 2 <= TARGET_PROGRAMS and split * 2 <= MAX_SPLIT_K
           and k % (cfg.block_k * split * 2) == 0):
        split *= 2
    return dataclasses.replace(cfg, split_k=split)
