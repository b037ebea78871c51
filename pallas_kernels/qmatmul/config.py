"""Block sizes and launch parameters of the quantized-operand matmul kernel, and their checks.

The kernel computes one product ``A [M, K] @ B [K, N]``, one program per (block_m, block_n)
output tile; dimensions are zero-padded up to block multiples (zero groups quantize to zero and
the random bits use the unpadded operand's flat indices). On a GPU (Triton) each program loops
over the K / block_k contraction tiles itself; on a TPU (Mosaic) and in the interpreter the
contraction tiles are the innermost grid axis, accumulated into the resident output tile (see
`kernel`). Each operand is fake-quantized per tile, so the tile's extent along the operand's
quantization axis must hold whole quantization blocks: in the forward ``block_k`` is a multiple
of the block sizes of both ``x_spec`` and ``w_spec``. A config given to `qmatmul` is used for
the backward products too, with (block_m, block_n, block_k) mapped onto each product's (rows,
columns, contraction): dx [M, K, N] needs ``block_k`` and ``block_n`` to hold grad_spec and
w_spec blocks, dw [K, N, M] needs ``block_m`` and ``block_k`` to hold x_spec and grad_spec
blocks. Without a config each product gets `default_config` for its shape, operand dtypes and
the platform it is lowered for.

GPU shared memory (`QMatmulConfig.smem_bytes`): the model of one program's footprint is

* ``num_stages`` copies of the stored A and B tiles (``block_m x block_k`` and ``block_k x
  block_n`` in their stored dtypes): Triton's software pipeline over the contraction loop;
* layout-conversion scratch, the larger of one copy of both fake-quantized tiles in the dot's
  compute dtype (the quantization runs in registers; Triton converts its result to the
  tensor-core operand layout through shared memory) and one float32 copy of the larger operand
  tile (the group reshape and transposes of the quantization); Triton's allocator lets scratch
  buffers whose live ranges do not overlap share memory, so the larger one counts;
* the key words and tensor amaxes (24 bytes);
* the float32 accumulator lives in registers (the loop carry), so it costs nothing; the
  epilogue's ``block_m x block_n`` float32 layout conversion reuses the pipeline's buffers, so
  the total is the larger of the two.

It is an upper estimate (Triton may keep a dot operand in registers and skip its conversion
buffer); `default_config` keeps it within the smallest of `common.SMEM_LIMITS` (A100: 163 KiB).

References:
  JAX Pallas documentation, "Grid and BlockSpecs" and "Pallas on GPU (Triton)".
  Tillet et al., "Triton: an intermediate language and compiler for tiled neural network
  computations", MAPL 2019 (software pipelining of the K loop: ``num_stages``).
"""

from __future__ import annotations

import dataclasses

from pallas_kernels.common import SMEM_LIMITS, check_launch

MAX_BLOCK_M = 128
MAX_BLOCK_N = 128
MAX_BLOCK_K = 256
MIN_BLOCK = 16  # GPU tensor-core dots need at least 16 rows / columns / depth
#: GPU defaults before the shared-memory fit (`default_config`).
GPU_BLOCK_K = 64
GPU_NUM_STAGES = 3
#: TPU (Mosaic) tiles: the last two dims of a block divisible by 8 and 128, or the full dims.
TPU_LANES = 128
#: Bytes of the key words (uint32 [4]) and tensor amaxes (float32 [2]) each program reads.
SCALAR_BYTES = 4 * 4 + 2 * 4


def is_power_of_two(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def smem_budget() -> int:
    """Bytes the default GPU configs must fit: the smallest of `common.SMEM_LIMITS`."""
    return min(SMEM_LIMITS.values())


@dataclasses.dataclass(frozen=True)
class QMatmulConfig:
    """Tile sizes of one `qmatmul` product (all positive powers of two) and its GPU launch.

    Attributes:
      block_m: rows of the left operand per tile.
      block_n: columns of the right operand per tile.
      block_k: contraction depth per tile (holds whole quantization blocks of both operands).
      num_warps: Triton warps per program (a power of two in [1, 32]); unused on TPU.
      num_stages: Triton software-pipeline depth of the contraction loop (>= 1); unused on TPU.
    """

    block_m: int = 64
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if not is_power_of_two(value):
                raise ValueError(f"QMatmulConfig.{name}={value!r} must be a positive power of two")
        try:
            check_launch(self.num_warps, self.num_stages)
        except ValueError as e:
            raise ValueError(f"QMatmulConfig.{e}") from None

    def smem_bytes(self, a_itemsize: int = 4, b_itemsize: int = 4,
                   compute_itemsize: int | None = None) -> int:
        """Estimated GPU shared memory of one program (bytes), by the module docstring's model.

        ``a_itemsize`` / ``b_itemsize``: bytes per stored element of A and B; ``compute_itemsize``:
        of the dot's operands (default the larger of the two, as `jnp.promote_types` gives).
        """
        cd = max(a_itemsize, b_itemsize) if compute_itemsize is None else compute_itemsize
        a_tile = self.block_m * self.block_k
        b_tile = self.block_k * self.block_n
        scratch = max((a_tile + b_tile) * cd, max(a_tile, b_tile) * 4)
        pipeline = self.num_stages * (a_tile * a_itemsize + b_tile * b_itemsize) + scratch
        epilogue = self.block_m * self.block_n * 4
        return max(pipeline, epilogue) + SCALAR_BYTES


def check_multiple(cfg: QMatmulConfig, field: str, multiple: int, what: str) -> None:
    """Raises unless ``cfg.<field>`` is a multiple of the quantization block ``multiple``."""
    value = getattr(cfg, field)
    if value % multiple:
        raise ValueError(f"{field}={value} is not a multiple of the quantization block size "
                         f"{multiple} of {what}; use a {field} that is a multiple of {multiple}")


def check_tpu_blocks(cfg: QMatmulConfig, dims: dict[str, int], what: str) -> None:
    """Mosaic TPU tiles: every block that splits its (padded) dimension into several tiles is a
    multiple of 128 (each of block_m / block_n / block_k is the lane dim of some operand tile)."""
    for ax, dim in dims.items():
        value = getattr(cfg, f"block_{ax}")
        if value < dim and value % TPU_LANES:
            raise ValueError(
                f"block_{ax}={value} does not suit a TPU for {what} ({ax}={dim}): Mosaic TPU "
                f"tiles are multiples of {TPU_LANES} (or cover the whole dimension); use "
                f"block_{ax} >= {dim} or a multiple of {TPU_LANES}")


def default_config(m: int, n: int, k: int, *, mult_m: int = 1, mult_n: int = 1,
                   mult_k: int = 1, platform: str | None = None, a_itemsize: int = 4,
                   b_itemsize: int = 4) -> QMatmulConfig:
    """Blocks for an [m, k] @ [k, n] product whose tiles must be multiples of ``mult_*``.

    ``platform`` None (the interpreter) or "tpu": tiles up to (128, 128, 256), a whole
    dimension when it is smaller (so TPU tiles are multiples of 128 or the whole padded
    dimension). "cuda" / "rocm": tiles up to (128, 128, 64), 3 pipeline stages, 8 warps for
    128 x 128 outputs, then stages, block_m / block_n (the larger first) and stages again are
    reduced until `QMatmulConfig.smem_bytes` for the operand item sizes fits `smem_budget`.
    """
    for mult in (mult_m, mult_n, mult_k):
        if not is_power_of_two(mult):
            raise ValueError(f"quantization block size {mult} is not a power of two; the Pallas "
                             "kernel's tiles are powers of two (use implementation='xla')")

    def pick(dim: int, cap: int, mult: int) -> int:
        return max(mult, min(max(next_power_of_two(dim), MIN_BLOCK), cap))

    gpu = platform in ("cuda", "rocm")
    bm, bn = pick(m, MAX_BLOCK_M, mult_m), pick(n, MAX_BLOCK_N, mult_n)
    bk = pick(k, GPU_BLOCK_K if gpu else MAX_BLOCK_K, mult_k)
    if not gpu:
        return QMatmulConfig(bm, bn, bk)
    budget = smem_budget()

    def make(bm, bn, stages):
        warps = 8 if bm * bn >= 128 * 128 else 4
        return QMatmulConfig(bm, bn, bk, num_warps=warps, num_stages=stages)

    lo_m, lo_n = max(MIN_BLOCK, mult_m), max(MIN_BLOCK, mult_n)
    stages = GPU_NUM_STAGES
    cfg = make(bm, bn, stages)
    while cfg.smem_bytes(a_itemsize, b_itemsize) > budget:
        if stages > 2:
            stages -= 1
        elif bm >= bn and bm > lo_m:
            bm //= 2
        elif bn > lo_n:
            bn //= 2
        elif bm > lo_m:
            bm //= 2
        elif stages > 1:
            stages -= 1
        else:
            break  # the quantization blocks alone exceed the budget
        cfg = make(bm, bn, stages)
    return cfg
