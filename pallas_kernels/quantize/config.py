"""Tile sizes and launch parameters of the fused quantize kernel, with the checks the hardware
tiling needs, and the GPU shared-memory model the defaults are chosen by."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from bitscale.numerics.qarray import elem_bits
from bitscale.numerics.specs import QuantSpec
from pallas_kernels.common import SMEM_LIMITS, check_launch

#: The default configs must fit the smallest per-block shared memory of `SMEM_LIMITS` (A100).
DEFAULT_SMEM_BUDGET = min(SMEM_LIMITS.values())
DEFAULT_NUM_WARPS = 4
DEFAULT_NUM_STAGES = 2
#: Mosaic TPU blocks: the last two dims divisible by (8, 128) or equal to the array's.
TPU_TILE = (8, 128)


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class Launch(NamedTuple):
    """A resolved kernel launch: static (hashable) arguments of the jitted kernel wrappers.

    ``platform`` is `pallas_kernels.common.kernel_platform`'s (None: the interpreter), so a
    trace for one platform is never reused for another."""

    block_axis: int
    block_other: int
    num_warps: int
    num_stages: int
    platform: str | None


def scale_itemsize(spec) -> int:
    if not isinstance(spec, QuantSpec):
        return 0
    if spec.scale_format is None:
        return 4
    return 2 if spec.scale_format.storage_bits > 8 else 1


def block_smem_bytes(tile_elems: int, in_itemsize: int, spec, want_codes: bool,
                     num_stages: int, group: int, extra_in: int = 0) -> int:
    """The GPU shared-memory model of one program (see `QuantizeConfig.smem_bytes`)."""
    inputs = tile_elems * in_itemsize + extra_in
    if not want_codes:
        outputs = tile_elems * in_itemsize
    else:
        nbits = elem_bits(spec)
        outputs = tile_elems * 2 if nbits > 8 else -(-tile_elems * nbits // 8)
        if isinstance(spec, QuantSpec):
            groups = tile_elems // group
            outputs += groups * scale_itemsize(spec)
            if spec.int_range == "asymmetric":
                outputs += groups * 4
    return inputs * num_stages + outputs


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """Tile extents and launch parameters of the fused quantize (and Hadamard) kernels.

    Attributes:
      block_axis: tile extent along the quantization axis; a power of two and a multiple of the
        spec's block size. ``None``: 512 (or the whole axis, rounded up to a power of two, for
        per-channel specs).
      block_other: tile extent along the other (non-quantized) dimension; a power of two.
        ``None``: 8 when the quantization axis is the last axis; otherwise 128 on TPU (a lane
        tile) and on GPU the largest power of two <= 16 whose program fits the shared-memory
        budget. Per-channel specs (whole axis in one tile) shrink it until the program fits.
      num_warps: Triton warps per program (power of two in [1, 32]). ``None``: 4.
      num_stages: Triton pipeline depth (>= 1). ``None``: 2, or 1 where a default tile only
        fits the shared-memory budget with one stage.

    Defaults are chosen so that `smem_bytes` fits ``DEFAULT_SMEM_BUDGET`` (A100's 163 KiB, so
    H100's 227 KiB too); explicit values are taken as given.
    """

    block_axis: int | None = None
    block_other: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None

    def __post_init__(self):
        for name in ("block_axis", "block_other"):
            v = getattr(self, name)
            if v is not None and not _is_pow2(v):
                raise ValueError(f"{name}={v!r} must be a power of two (Pallas GPU/TPU tiles)")
        check_launch(DEFAULT_NUM_WARPS if self.num_warps is None else self.num_warps,
                     DEFAULT_NUM_STAGES if self.num_stages is None else self.num_stages)

    def resolve(self, spec, axis_len: int, axis_last: bool) -> tuple[int, int]:
        """Returns (block_axis, block_other) for a spec and axis length, or raises ValueError.

        The interpreter / GPU defaults; `launch` resolves for a platform and a dtype."""
        return self._tiles(spec, axis_len, axis_last, None)

    def _tiles(self, spec, axis_len: int, axis_last: bool, platform,
               want_codes: bool = False) -> tuple[int, int]:
        tpu = platform == "tpu"
        if self.block_other is not None:
            other = self.block_other
        elif axis_last:
            other = 8
        elif tpu:
            # Mosaic: the packed codes' block ([block_axis, packed columns]) needs a multiple of
            # 128 columns when the non-quantized extent spans several tiles.
            nbits = elem_bits(spec) if want_codes else 8
            other = 128 if nbits >= 8 else (1024 if 8 % nbits else 1024 // nbits)
        else:
            other = 16
        if isinstance(spec, QuantSpec) and spec.granularity == "channel":
            need = next_pow2(axis_len)
            if self.block_axis is not None and self.block_axis < axis_len:
                raise ValueError(
                    f"per-channel spec {spec.name!r} needs the whole axis (length {axis_len}) in "
                    f"one tile, but block_axis={self.block_axis}")
            if tpu and axis_last and self.block_axis is None and need != axis_len:
                need = max(need, TPU_TILE[1])
            return self.block_axis or need, other
        block = self.block_axis or min(512, next_pow2(axis_len))
        if tpu and self.block_axis is None and block != axis_len:
            block = max(block, TPU_TILE[1] if axis_last else TPU_TILE[0])
        if isinstance(spec, QuantSpec) and spec.granularity == "block":
            bs = spec.block_size
            if self.block_axis is None:
                block = max(block, bs)
                if tpu and not axis_last and block < axis_len:
                    # Mosaic: a [groups per tile, block_other] scale block needs 8 | groups.
                    block = max(block, min(TPU_TILE[0] * bs, next_pow2(axis_len)))
            if not _is_pow2(bs) or block % bs:
                raise ValueError(
                    f"block size {bs} of spec {spec.name!r} cannot be tiled with "
                    f"block_axis={block}: Pallas tiles are powers of two, so the spec's block "
                    "size must be a power of two that divides block_axis")
        return block, other

    def launch(self, spec, axis_len: int, axis_last: bool, dtype, want_codes: bool,
               platform: str | None, *, extra_in: int = 0) -> Launch:
        """The tiles and launch parameters for ``platform`` (None: the interpreter).

        Defaults (fields left ``None``) on a GPU (and in the interpreter, which runs the same
        tiles) shrink ``block_other`` and then ``num_stages`` until `smem_bytes` fits
        ``DEFAULT_SMEM_BUDGET``; if nothing fits, the smallest candidate is returned and
        `launch_support` names the overflow."""
        block_axis, other = self._tiles(spec, axis_len, axis_last, platform, want_codes)
        warps = DEFAULT_NUM_WARPS if self.num_warps is None else self.num_warps
        stages = DEFAULT_NUM_STAGES if self.num_stages is None else self.num_stages
        if platform != "tpu":
            itemsize = np.dtype(dtype).itemsize
            group = _group(spec, block_axis)

            def fits(o, s):
                return block_smem_bytes(block_axis * o, itemsize, spec, want_codes, s, group,
                                        extra_in) <= DEFAULT_SMEM_BUDGET
            # Codes packed along the other axis need whole bytes per tile.
            floor = 1
            if want_codes and not axis_last and elem_bits(spec) < 8:
                nbits = elem_bits(spec)
                floor = 8 if 8 % nbits else 8 // nbits
            if self.block_other is None:
                while other > floor and not fits(other, stages):
                    other //= 2
            if self.num_stages is None and not fits(other, stages):
                stages = 1
        return Launch(block_axis, other, warps, stages, platform)

    def smem_bytes(self, spec, shape: tuple[int, ...], dtype, *, axis: int = -1,
                   want_codes: bool = False, platform: str | None = "cuda",
                   extra_in: int = 0) -> int:
        """GPU shared memory (bytes) of one program of this config on ``shape`` / ``dtype``.

        Model: every block a program touches is staged in shared memory; each input block
        (the x tile, plus ``extra_in`` bytes of other inputs such as a Hadamard matrix) is
        buffered ``num_stages`` times (Triton's software pipeline depth), each output block
        (the y tile, or the packed codes + scales + zero points) once. The key / tensor-amax
        inputs (8 bytes) are ignored. This is an upper bound: Triton keeps much of a tile in
        registers."""
        axis = axis % len(shape)
        axis_last = all(d == 1 for d in shape[axis + 1:])
        lc = self.launch(spec, shape[axis], axis_last, dtype, want_codes, platform,
                         extra_in=extra_in)
        return launch_smem_bytes(lc, spec, np.dtype(dtype).itemsize, want_codes, extra_in)


def _group(spec, block_axis: int) -> int:
    if not isinstance(spec, QuantSpec):
        return 1
    return block_axis if spec.granularity == "channel" else spec.block_size


def launch_smem_bytes(lc: Launch, spec, itemsize: int, want_codes: bool,
                      extra_in: int = 0) -> int:
    return block_smem_bytes(lc.block_axis * lc.block_other, itemsize, spec, want_codes,
                            lc.num_stages, _group(spec, lc.block_axis), extra_in)


def launch_support(lc: Launch, spec, itemsize: int, want_codes: bool,
                   extra_in: int = 0) -> str | None:
    """None if ``lc`` can launch on its platform, else the reason (GPU shared memory)."""
    if lc.platform in ("cuda", "rocm"):
        need = launch_smem_bytes(lc, spec, itemsize, want_codes, extra_in)
        limit = max(SMEM_LIMITS.values())
        if need > limit:
            return (f"one program needs {need} bytes of GPU shared memory (tile "
                    f"{lc.block_other}x{lc.block_axis}, num_stages={lc.num_stages}), over the "
                    f"{limit}-byte limit of an H100")
    return None
