"""`packed_matmul`: x @ dequantize(w) for packed 4-/8-bit `QArray` weights (W4A16 / W8A16).

Dispatch (``pallas_kernels.common.use_pallas``): ``"auto"`` runs the Pallas kernel on GPU/TPU and
the jnp reference on CPU, ``"pallas"`` forces the kernel (on CPU only with ``interpret=True``),
``"xla"`` runs `packed_matmul_reference`.

Supported weights for the kernel: a 2-D [K, N] `QArray` whose codes are 4 or 8 bits wide, with

* element casts (``"int8"``, ``"fp8_e4m3"``, ``"fp8_e5m2"``, ``"int4"``, ``"fp4_e2m1"``, ...);
* scaled integers and floats quantized with ``axis=0`` (groups along K): ``int4@g<N>``,
  ``int8@g<N>``, ``int8@channel``, ``@tensor``, ``+asym`` zero points, ``+full``;
* OCP MX (``mxfp4``, ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxint8``; E8M0 scales) and NVFP4
  (``nvfp4``: E4M3 block scales times an FP32 tensor scale; ``nvfp4_single``), also with the
  ``+rms`` and ``+4o6`` options (they choose the codes and scales, which decode as usual).
  2-D block specs (``nvfp4_2d``) and ``+headroom`` run on the XLA path.

The result is float32: the products of x and the dequantized weights are exact and accumulated in
float32, so it equals ``x @ dequantize(w)`` (computed in float32 or float64) up to the order of the
float32 sums. The XLA path supports every `QArray` that `bitscale.dequantize` does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import bitscale as bs
from bitscale.numerics import resolve_spec
from bitscale.numerics.formats import FloatFormat, IntFormat
from bitscale.numerics.specs import QuantSpec

from pallas_kernels.common import kernel_platform, use_pallas
from pallas_kernels.packed_matmul import config as C
from pallas_kernels.packed_matmul.kernel import Plan, packed_matmul_kernel
from pallas_kernels.packed_matmul.reference import packed_matmul_reference

_X_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# (mantissa bits, largest exponent, smallest subnormal exponent) of the dtypes x can have.
_DTYPE_GRID = {jnp.dtype(jnp.float32): (23, 127, -149), jnp.dtype(jnp.bfloat16): (7, 127, -133),
               jnp.dtype(jnp.float16): (10, 15, -24)}


def _exact_in(fmt, dtype) -> bool:
    """Whether every element value of ``fmt`` (and an 8-bit code minus a zero point) is exact."""
    mbits, emax, sub = _DTYPE_GRID[jnp.dtype(dtype)]
    if isinstance(fmt, IntFormat):
        return True  # |value| <= 255 needs 8 significant bits
    return fmt.mbits <= mbits and fmt.emax <= emax and fmt.emin - fmt.mbits >= sub


def _unsupported(spec, why: str) -> ValueError:
    return ValueError(
        f"packed_matmul's Pallas kernel does not support spec {getattr(spec, 'name', spec)!r}: "
        f"{why}; use implementation='xla' (x @ dequantize(w))")


def _check_weight(w: Any) -> None:
    if not isinstance(w, bs.QArray):
        raise TypeError(f"w must be a bitscale QArray (bs.quantize(w, spec, axis=0)), got "
                        f"{type(w).__name__}")
    if len(w.shape) != 2:
        raise ValueError(f"w must be a 2-D [K, N] QArray, got shape {w.shape}")


def _check_x(x: Any, k: int) -> jax.Array:
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _X_DTYPES]:
        raise TypeError(f"x must be a float32, bfloat16 or float16 array, got dtype {dtype}")
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"x's last axis must equal w's K={k}; got x of shape {x.shape}")
    return x


def _plan_of(spec: Any, w_axis: int | None, w_dtype: Any, asym: bool, two_level: bool,
             x_dtype: Any, compute_dtype: Any, block_k: int | None) -> Plan:
    """Validates the spec for the kernel; the static plan (group = block_k when unblocked)."""
    fmt = spec.elem if isinstance(spec, QuantSpec) else spec
    if not isinstance(fmt, (IntFormat, FloatFormat)):
        raise _unsupported(spec, "elements must be integers or minifloats")
    bits = fmt.storage_bits
    if bits not in (4, 8):
        raise _unsupported(spec, f"codes must be 4 or 8 bits wide, got {bits}")
    blocked = False
    group = block_k or 0
    if isinstance(spec, QuantSpec):
        # +rms and +4o6 only choose the codes and scales; the QArray decodes as any other (the
        # interpreter test gives dequantize(w) bit for bit). 2-D blocks store [K/b, N/b] scales
        # and +headroom divides by 3/4 on decode, which the kernel does not do.
        if spec.granularity == "block2d":
            raise _unsupported(spec, f"its {spec.block_size}x{spec.block_size} 2-D block scales "
                               "([K/b, N/b]) are not laid out per K group and column")
        if spec.headroom:
            raise _unsupported(spec, "+headroom decodes as code * scale / (3/4), which the kernel "
                               "does not implement")
        if spec.granularity != "tensor" and w_axis not in (0, None):
            raise ValueError(f"packed_matmul needs w quantized with axis=0 (groups along K), got "
                             f"axis={w_axis}")
        blocked = spec.granularity == "block"
        group = spec.block_size if blocked else group
    else:
        asym = two_level = False
    xd = jnp.dtype(compute_dtype or x_dtype)
    w_round = jnp.dtype(w_dtype)
    w_dt = jnp.dtype(compute_dtype or w_round)
    per_group = w_round == jnp.float32 and w_dt == jnp.float32
    if per_group:
        # Element values in x's dtype when exact there, else everything in float32.
        w_dt = xd if _exact_in(fmt, xd) else jnp.dtype(jnp.float32)
        xd = w_dt
    else:
        xd = w_dt = jnp.promote_types(xd, w_dt)
    return Plan(spec, bits, group, blocked, asym, two_level, per_group, xd, w_dt, w_round)


def _plan(x_dtype, w: bs.QArray, compute_dtype, block_k: int | None) -> Plan:
    return _plan_of(w.spec, w.axis, w.dtype, w.zero_point is not None,
                    w.tensor_scale is not None, x_dtype, compute_dtype, block_k)


def _scale_bytes(spec: Any) -> int:
    """Itemsize of the stored scales: E8M0 / minifloat scale codes are bytes, else float32."""
    if not isinstance(spec, QuantSpec):
        return 0
    return 1 if (spec.pow2_scales or spec.scale_format is not None) else 4


def _footprint(plan: Plan) -> C.Footprint:
    return C.Footprint(bits=plan.bits, group=plan.group if plan.blocked else 0,
                       blocked=plan.blocked, x_bytes=jnp.dtype(plan.x_dtype).itemsize,
                       w_bytes=jnp.dtype(plan.w_dtype).itemsize,
                       scale_bytes=_scale_bytes(plan.spec), zp=plan.asym,
                       per_group=plan.per_group)


def footprint_of(spec: Any, x_dtype: Any, w_dtype: Any = jnp.float32, compute_dtype: Any = None,
                 block_k: int | None = None) -> C.Footprint:
    """The `config.Footprint` of x (``x_dtype``) @ ``bs.quantize(w.astype(w_dtype), spec,
    axis=0)``, as `packed_matmul` plans it."""
    spec = resolve_spec(spec) if isinstance(spec, str) else spec
    asym = isinstance(spec, QuantSpec) and spec.int_range == "asymmetric"
    two_level = isinstance(spec, QuantSpec) and bool(spec.tensor_scale)
    return _footprint(_plan_of(spec, 0, w_dtype, asym, two_level, x_dtype, compute_dtype,
                               block_k))


def _prepare(x: jax.Array, w: bs.QArray, compute_dtype: Any, config: C.PackedMatmulConfig | None,
             platform: str | None):
    """(plan, config) for the kernel, or the reason it cannot run x @ w on ``platform``
    (a ValueError naming it)."""
    k, n = w.shape
    m = max(int(np.prod(x.shape[:-1])), 1)
    plan = _plan(x.dtype, w, compute_dtype, None)
    spec_name = getattr(w.spec, "name", str(w.spec))
    fp = _footprint(plan)
    if config is None:
        config = C.default_config(m=m, k=k, n=n, group=plan.group, blocked=plan.blocked, fp=fp,
                                  platform=platform)
    C.check_config(config, k=k, n=n, group=plan.group, spec_name=spec_name, bits=plan.bits,
                   blocked=plan.blocked)
    plan = _plan(x.dtype, w, compute_dtype, config.block_k)
    m_pad = -(-m // config.block_m) * config.block_m
    why = C.platform_problem(config, platform=platform, m=m_pad, k=k, n=n, fp=_footprint(plan))
    if why is not None:
        raise _unsupported(w.spec, f"{why} (lowering for {platform!r})")
    return plan, config


def _interpret_params(interpret: Any) -> bool:
    return interpret is not None and not isinstance(interpret, (bool, int))


def unsupported_reason(x: Any, w: bs.QArray, *, compute_dtype: Any = None,
                       config: C.PackedMatmulConfig | None = None,
                       platform: str | None = None) -> str | None:
    """Why the Pallas kernel cannot compute ``x @ dequantize(w)`` when lowered for ``platform``
    ("cuda", "rocm", "tpu"; None: the interpreter), or None when it can. ``implementation=
    "auto"`` then runs XLA; ``"pallas"`` raises a ValueError with this reason. ``x`` may be a
    ``jax.ShapeDtypeStruct``."""
    _check_weight(w)
    try:
        _prepare(x, w, compute_dtype, config, platform)
    except ValueError as e:
        return str(e)
    return None


def packed_matmul(x: jax.Array, w: bs.QArray, *, compute_dtype: Any = None,
                  implementation: str = "auto", interpret: Any = False,
                  config: C.PackedMatmulConfig | None = None) -> jax.Array:
    """``x @ dequantize(w)`` with the weight read as packed codes; returns float32 [..., N].

    Args:
      x: [..., K] float32 / bfloat16 / float16 activations.
      w: [K, N] `QArray` from ``bs.quantize(w, spec, axis=0)`` (see the module docstring).
      compute_dtype: optional dtype both operands are cast to before the product (the
        dequantized weights are rounded to it); None keeps x's dtype and exact dequantized
        weights.
      implementation: ``"auto"``, ``"pallas"`` or ``"xla"``. Cases the kernel cannot run
        (spec, shapes, or the target platform's tile rules) run XLA under ``"auto"`` and raise a
        ValueError naming the reason under ``"pallas"``.
      interpret: run the Pallas kernel in the interpreter (CPU tests); a
        ``jax.experimental.pallas.tpu.InterpretParams`` selects the TPU interpret mode with
        every grid axis "parallel" (randomized program order, NaN-initialized buffers).
      config: block sizes and launch parameters; None picks `config.default_config` for the
        shape, spec and target platform.
    """
    _check_weight(w)
    k, n = w.shape
    x = _check_x(x, k)
    if compute_dtype is not None and jnp.dtype(compute_dtype) not in [jnp.dtype(d)
                                                                      for d in _X_DTYPES]:
        raise TypeError(f"compute_dtype must be float32, bfloat16 or float16, got {compute_dtype}")
    if not use_pallas(implementation, interpret, "packed_matmul"):
        return packed_matmul_reference(x, w, compute_dtype=compute_dtype)
    platform = kernel_platform(bool(interpret))
    try:
        plan, config = _prepare(x, w, compute_dtype, config, platform)
    except ValueError:
        if implementation == "auto" and config is None:
            # The kernel cannot run this case (`unsupported_reason` says why): XLA can.
            return packed_matmul_reference(x, w, compute_dtype=compute_dtype)
        raise
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    m_pad = -(-max(m, 1) // config.block_m) * config.block_m
    x2 = jnp.pad(x2.astype(plan.x_dtype), ((0, m_pad - m), (0, 0)))
    scales = zp = ts = None
    if isinstance(w.spec, QuantSpec):
        rows = k // plan.group if plan.blocked else 1
        scales = jnp.broadcast_to(jnp.reshape(w.scales, (-1, n) if w.scales.ndim else (1, 1)),
                                  (rows, n))
        if plan.asym:
            zp = jnp.broadcast_to(jnp.reshape(w.zero_point, (-1, n) if w.zero_point.ndim
                                              else (1, 1)), (rows, n)).astype(jnp.int32)
        if plan.two_level:
            ts = jnp.reshape(w.tensor_scale, (1, 1)).astype(jnp.float32)
    y = packed_matmul_kernel(x2, w.codes, scales, zp, ts, plan=plan, config=config,
                             interpret=interpret if _interpret_params(interpret)
                             else bool(interpret), platform=platform)
    return y[:m].reshape(lead + (n,))
