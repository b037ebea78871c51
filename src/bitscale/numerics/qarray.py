"""`QArray`: packed element codes plus their scales, and the storage width of a spec's codes."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from bitscale.numerics.specs import QuantSpec, Spec


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """Quantized array: packed element codes plus scales.

    Attributes:
      codes: uint8 codes packed along the last axis (uint16 for 16-bit formats).
      scales: per-group scales in the caller's layout (``axis`` holds the groups; 2-D block
        specs: ``[..., R/b, C/b]``, one per tile of the last two axes): float32, or uint8 codes
        of the spec's scale format (E8M0 exponents, UE4M3 bits); None for casts.
      zero_point: int32 per-group zero points (asymmetric integers) or None.
      tensor_scale: float32 scalar of two-level specs (NVFP4) or None.
      spec, shape, dtype, axis: static metadata.
    """

    codes: jax.Array
    scales: jax.Array | None
    zero_point: jax.Array | None
    tensor_scale: jax.Array | None
    spec: Spec = dataclasses.field(metadata=dict(static=True))
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))
    axis: int = dataclasses.field(metadata=dict(static=True))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def bits_per_element(self) -> float:
        """Storage bits per element: element codes plus scales, zero points and tensor scale."""
        total = self.size * elem_bits(self.spec)
        for a in (self.scales, self.zero_point):
            if a is not None:
                per = 8 * a.dtype.itemsize if a is self.scales else elem_bits(self.spec)
                total += per * int(np.prod(a.shape))
        if self.tensor_scale is not None:
            total += 32
        return total / max(self.size, 1)


def elem_bits(spec: Spec) -> int:
    fmt = spec.elem if isinstance(spec, QuantSpec) else spec
    return fmt.storage_bits
