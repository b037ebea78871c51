"""Tile sizes of the fused quantize kernel, with the checks the hardware tiling needs."""

from __future__ import annotations

import dataclasses

from bitscale.numerics.specs import QuantSpec


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """Tile extents of the fused quantize kernel.

    Attributes:
      block_axis: tile extent along the quantization axis; a power of two and a multiple of the
        spec's block size. ``None``: 512 (or the whole axis, rounded up to a power of two, for
        per-channel specs).
      block_other: tile extent along the other (non-quantized) dimension; a power of two.
        ``None``: 8 when the quantization axis is the last axis, else 128.
    """

    block_axis: int | None = None
    block_other: int | None = None

    def __post_init__(self):
        for name in ("block_axis", "block_other"):
            v = getattr(self, name)
            if v is not None and not _is_pow2(v):
                raise ValueError(f"{name}={v!r} must be a power of two (Pallas GPU/TPU tiles)")

    def resolve(self, spec, axis_len: int, axis_last: bool) -> tuple[int, int]:
        """Returns (block_axis, block_other) for a spec and axis length, or raises ValueError."""
        other = self.block_other or (8 if axis_last else 128)
        if isinstance(spec, QuantSpec) and spec.granularity == "channel":
            need = next_pow2(axis_len)
            if self.block_axis is not None and self.block_axis < axis_len:
                raise ValueError(
                    f"per-channel spec {spec.name!r} needs the whole axis (length {axis_len}) in "
                    f"one tile, but block_axis={self.block_axis}")
            return self.block_axis or need, other
        block = self.block_axis or min(512, next_pow2(axis_len))
        if isinstance(spec, QuantSpec) and spec.granularity == "block":
            bs = spec.block_size
            if self.block_axis is None:
                block = max(block, bs)
            if not _is_pow2(bs) or block % bs:
                raise ValueError(
                    f"block size {bs} of spec {spec.name!r} cannot be tiled with "
                    f"block_axis={block}: Pallas tiles are powers of two, so the spec's block "
                    "size must be a power of two that divides block_axis")
        return block, other
