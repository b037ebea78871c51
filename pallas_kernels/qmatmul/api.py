"""`qmatmul`: training matmul with both operands (and optionally the gradient) fake-quantized.

``y = fake_quant(x, x_spec, axis=-1) @ fake_quant(w, w_spec, axis=0)``, float32, with a
`jax.custom_vjp`:

* ``dx = q_g(g) @ wq^T`` with ``q_g`` = ``fake_quant(g, grad_spec, axis=-1)``;
* ``dw = xq^T @ q_g(g)`` with ``q_g`` = ``fake_quant(g, grad_spec, axis=0)`` (the weight gradient
  is formed from the quantized activation ``xq``: straight-through estimator for both operands);
* the gradient copies use stochastic rounding with keys ``fold_in(key, 0)`` (dx) and
  ``fold_in(key, 1)`` (dw) when ``key`` is given, nearest rounding otherwise; ``grad_spec=None``
  leaves g unquantized (plain STE gradients).

On the Pallas path all three products run through the same kernel (`kernel.qmatmul_kernel`): the
forward fake-quantizes x and w per tile, ``dx`` fake-quantizes g (blocks along N) and recomputes
``wq`` per tile, ``dw`` recomputes ``xq`` and fake-quantizes g (blocks along M). Only x, w and the
key words are saved for the backward pass. In-kernel specs: element casts (``fp8_e4m3``, ...)
and block specs along the contraction axis (``mxfp4``, ``mxfp8_e4m3``, ``nvfp4_single``,
``nvfp4``, ``int8@g32``, ``int4@g32``, ...); channel / tensor granularity needs the whole axis and
runs only on the XLA path, as does the MSE clip search (``+mse``) (`kernel_support` gives the
reason): ``implementation="auto"`` falls back to XLA for them,
``"pallas"`` raises a ValueError with the reason.

Lowering: the platform a call lowers for (`common.kernel_platform`: "cuda" / "rocm" for Triton,
"tpu" for Mosaic TPU, None in the interpreter) is a static part of the custom_vjp's data and of
the kernel's jit, so a trace for one platform is never reused for another. It picks the compiler
parameters (Triton ``num_warps`` / ``num_stages`` from the config; TPU dimension semantics), the
contraction scheme (`kernel`) and the default tiles (`config.default_config`: GPU tiles fitted to
shared memory, TPU tiles that are multiples of 128 or whole dimensions; `product_configs` lists
the three products' configs).

References:
  Castro et al., "Quartet: Native FP4 Training Can Be Optimal for Large Language Models",
  arXiv:2505.14669.
  Chmiel et al., "Elucidating the Design Space of FP4 Training", arXiv:2509.17791.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import bitscale as bs
from bitscale.numerics import bits as B
from bitscale.numerics import scaling as S
from bitscale.numerics.formats import BinaryFormat, TernaryFormat
from bitscale.numerics.specs import QuantSpec, Spec, recipe_options

from pallas_kernels.common import kernel_platform, use_pallas
from pallas_kernels.qmatmul import config as C
from pallas_kernels.qmatmul.kernel import (
    OperandQuant, Product, qmatmul_kernel, tensor_amax)
from pallas_kernels.qmatmul.reference import grad_keys, qmatmul_reference

_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class _Static:
    x_spec: Spec | None
    w_spec: Spec | None
    grad_spec: Spec | None
    stochastic: bool
    config: C.QMatmulConfig | None
    interpret: bool
    platform: str | None  # `common.kernel_platform`: None in the interpreter


def _resolve(spec: Any) -> Spec | None:
    return None if spec is None else bs.resolve_spec(spec)


def _check_operand(a: Any, name: str) -> jax.Array:
    dtype = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _DTYPES]:
        raise TypeError(f"{name} must be a float32, bfloat16 or float16 array, got dtype {dtype}")
    a = jnp.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    return a


def kernel_support(spec: Spec | None, role: str, platform: str | None) -> str | None:
    """Why the kernel cannot fake-quantize ``spec`` when lowered for ``platform`` (None: it can).

    The kernel fake-quantizes per tile: element casts and block specs with power-of-two blocks,
    without the MSE clip search and the 4-bit recipe options (2-D blocks, ``+rms``, ``+4o6``,
    ``+headroom``: `specs.recipe_options`). Everything else lowers for Triton and Mosaic TPU.
    """
    if not isinstance(spec, QuantSpec):
        return None
    recipe = recipe_options(spec)
    if recipe:
        return (f"{role} spec {spec.name!r} uses {', '.join(recipe)}, which qmatmul's Pallas "
                "kernel (per-tile absmax scale groups along one axis) does not implement; use "
                "implementation='xla' (or 'auto', which falls back to it)")
    if isinstance(spec.elem, (TernaryFormat, BinaryFormat)) or spec.granularity != "block":
        return (f"qmatmul's Pallas kernel fake-quantizes per tile, so {role} spec {spec.name!r} "
                f"({spec.granularity} granularity) is not supported: it needs the whole axis; "
                "use a block spec (e.g. 'int8@g32', 'mxfp4') or implementation='xla'")
    if spec.clip == "mse":
        return (f"{role} spec {spec.name!r}: the MSE clip search (+mse) is not supported by "
                "qmatmul's Pallas kernel (its candidate clips are an array constant a kernel body "
                "cannot capture, scanned with lax.scan, which Triton does not lower); use "
                "implementation='xla'")
    if not C.is_power_of_two(spec.block_size):
        return (f"{role} spec {spec.name!r}: quantization block size {spec.block_size} is not a "
                "power of two; the Pallas kernel's tiles are powers of two (use "
                "implementation='xla')")
    return None


def _amax(a: jax.Array, spec: Spec | None, axis: int) -> jax.Array:
    if isinstance(spec, QuantSpec) and spec.tensor_scale:
        return tensor_amax(a, spec, axis)
    return jnp.float32(0.0)


def _pad_to(a: jax.Array, rows: int, cols: int) -> jax.Array:
    return jnp.pad(a, ((0, -a.shape[0] % rows), (0, -a.shape[1] % cols)))


def _plan(a_shape, b_shape, a_dtype, b_dtype, qa: OperandQuant, qb: OperandQuant, a_t: bool,
          b_t: bool, config: C.QMatmulConfig | None, platform: str | None,
          names: tuple[str, str]) -> tuple[C.QMatmulConfig, tuple[int, int, int]]:
    """The config of one product (given, or `config.default_config` for its shape, operand
    dtypes and platform) after its checks, and the product's (m, n, k)."""
    m, k = (a_shape[1], a_shape[0]) if a_t else a_shape
    n = b_shape[0] if b_t else b_shape[1]
    # Logical tile axis ('m', 'n' or 'k') holding each operand's quantization blocks.
    a_axes = ("k", "m") if a_t else ("m", "k")
    b_axes = ("n", "k") if b_t else ("k", "n")
    mult = {"m": 1, "n": 1, "k": 1}
    roles = {}
    for q, axes, role in ((qa, a_axes, names[0]), (qb, b_axes, names[1])):
        if q.spec is not None and q.block > 1:
            ax = axes[q.group_axis]
            mult[ax] = max(mult[ax], q.block)
            roles.setdefault(ax, []).append((q.block, f"{role} spec {q.spec.name!r}"))
    if config is None:
        config = C.default_config(m, n, k, mult_m=mult["m"], mult_n=mult["n"], mult_k=mult["k"],
                                  platform=platform, a_itemsize=jnp.dtype(a_dtype).itemsize,
                                  b_itemsize=jnp.dtype(b_dtype).itemsize)
    if not isinstance(config, C.QMatmulConfig):
        raise TypeError(f"config must be a QMatmulConfig, got {type(config).__name__}")
    for ax, items in roles.items():
        for block, what in items:
            C.check_multiple(config, f"block_{ax}", block, what)
    if platform == "tpu":
        what = names[0].split(":")[0] if ":" in names[0] else "y = xq @ wq"
        C.check_tpu_blocks(config, {"m": m, "n": n, "k": k}, what)
    return config, (m, n, k)


def _product(a: jax.Array, b: jax.Array, qa: OperandQuant, qb: OperandQuant, a_t: bool,
             b_t: bool, names: tuple[str, str], key_words: jax.Array, amax: jax.Array,
             st: _Static) -> jax.Array:
    """float32 A @ B through the kernel: checks tile multiples (and, for a TPU, Mosaic's tile
    rules), pads, runs, slices. A given config's GPU shared memory is not checked: the estimate
    (`QMatmulConfig.smem_bytes`) is an upper bound, and Triton names the real need."""
    config, (m, n, _) = _plan(a.shape, b.shape, a.dtype, b.dtype, qa, qb, a_t, b_t, st.config,
                              st.platform, names)
    blocks = {"m": config.block_m, "n": config.block_n, "k": config.block_k}
    a_axes = ("k", "m") if a_t else ("m", "k")
    b_axes = ("n", "k") if b_t else ("k", "n")
    a_p = _pad_to(a, blocks[a_axes[0]], blocks[a_axes[1]])
    b_p = _pad_to(b, blocks[b_axes[0]], blocks[b_axes[1]])
    prod = Product(qa, qb, a_t, b_t, a.shape[1], b.shape[1])
    y = qmatmul_kernel(a_p, b_p, key_words, amax, prod=prod, config=config, platform=st.platform,
                       interpret=st.interpret)
    return y[:m, :n]


def _products(st: _Static) -> dict[str, tuple]:
    """(a's quantization, b's, a transposed, b transposed, role names) of the three products:
    y = xq @ wq; dx = q_g(g) @ wq^T (w stored [K, N], blocks along its axis 0); dw = xq^T @ q_g(g)
    (x stored [M, K], blocks along axis 1; g blocks along axis 0)."""
    gs, sr = st.grad_spec, st.stochastic
    return {
        "y": (OperandQuant(st.x_spec, 1), OperandQuant(st.w_spec, 0), False, False,
              ("x_spec", "w_spec")),
        "dx": (OperandQuant(gs, 1, sr), OperandQuant(st.w_spec, 0), False, True,
               ("dx = q_g(g) @ wq^T: grad_spec", "dx = q_g(g) @ wq^T: w_spec")),
        "dw": (OperandQuant(st.x_spec, 1), OperandQuant(gs, 0, sr), True, False,
               ("dw = xq^T @ q_g(g): x_spec", "dw = xq^T @ q_g(g): grad_spec")),
    }


def _forward(x, w, st: _Static) -> jax.Array:
    amax = jnp.stack([_amax(x, st.x_spec, 1), _amax(w, st.w_spec, 0)])
    return _product(x, w, *_products(st)["y"], jnp.zeros((4,), jnp.uint32), amax, st)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _qmatmul_pallas(x, w, key_words, st: _Static):
    return _forward(x, w, st)


def _qmatmul_pallas_fwd(x, w, key_words, st: _Static):
    return _forward(x, w, st), (x, w, key_words)


def _qmatmul_pallas_bwd(st: _Static, res, g):
    x, w, kw = res
    gs = st.grad_spec
    prods = _products(st)
    zeros2 = jnp.zeros((2,), jnp.uint32)
    dx = _product(g, w, *prods["dx"], jnp.concatenate([kw[:2], zeros2]),
                  jnp.stack([_amax(g, gs, 1), _amax(w, st.w_spec, 0)]), st)
    dw = _product(x, g, *prods["dw"], jnp.concatenate([zeros2, kw[2:]]),
                  jnp.stack([_amax(x, st.x_spec, 1), _amax(g, gs, 0)]), st)
    return dx.astype(x.dtype), dw.astype(w.dtype), None


def product_configs(m: int, k: int, n: int, *, x_spec: "str | Spec | None",
                    w_spec: "str | Spec | None", grad_spec: "str | Spec | None" = None,
                    x_dtype=jnp.float32, w_dtype=jnp.float32, platform: str | None = None,
                    config: C.QMatmulConfig | None = None,
                    stochastic: bool = False) -> dict[str, tuple[C.QMatmulConfig, int, int]]:
    """The config each product of ``qmatmul(x [m, k], w [k, n])`` runs with when lowered for
    ``platform`` ("cuda" / "rocm" / "tpu"; None: the interpreter), with the item sizes of its
    stored operands: ``{"y" | "dx" | "dw": (config, a_itemsize, b_itemsize)}`` (the output
    gradient is float32). For sizing, e.g. ``cfg.smem_bytes(a_itemsize, b_itemsize)``."""
    st = _Static(_resolve(x_spec), _resolve(w_spec), _resolve(grad_spec), stochastic, config,
                 platform is None, platform)
    shapes = {"y": ((m, k), (k, n), x_dtype, w_dtype),
              "dx": ((m, n), (k, n), jnp.float32, w_dtype),
              "dw": ((m, k), (m, n), x_dtype, jnp.float32)}
    out = {}
    for name, (qa, qb, a_t, b_t, names) in _products(st).items():
        a_shape, b_shape, a_dtype, b_dtype = shapes[name]
        cfg, _ = _plan(a_shape, b_shape, a_dtype, b_dtype, qa, qb, a_t, b_t, config, platform,
                       names)
        out[name] = (cfg, jnp.dtype(a_dtype).itemsize, jnp.dtype(b_dtype).itemsize)
    return out


_qmatmul_pallas.defvjp(_qmatmul_pallas_fwd, _qmatmul_pallas_bwd)


def qmatmul(x: jax.Array, w: jax.Array, *, x_spec: "str | Spec | None",
            w_spec: "str | Spec | None", grad_spec: "str | Spec | None" = None,
            key: jax.Array | None = None, implementation: str = "auto", interpret: bool = False,
            config: C.QMatmulConfig | None = None) -> jax.Array:
    """``fake_quant(x) @ fake_quant(w)`` in float32 with a quantized-gradient VJP.

    Args:
      x: [M, K] activations (float32 / bfloat16 / float16).
      w: [K, N] weights.
      x_spec: spec of x, blocks along K (axis -1); None leaves x unquantized.
      w_spec: spec of w, blocks along K (axis 0); None leaves w unquantized.
      grad_spec: spec of the output gradient in the backward products; None: unquantized.
      key: `jax.random` key for stochastic rounding of the gradient (see the module docstring).
      implementation: ``"auto"``, ``"pallas"`` or ``"xla"`` (`qmatmul_reference`).
      interpret: run the Pallas kernel in the interpreter (CPU tests).
      config: block sizes (block_m, block_n, block_k) of every product, mapped onto each
        product's (rows, columns, contraction): forward [M, N, K], dx [M, K, N], dw [K, N, M];
        each tile must hold whole quantization blocks of the operands it fake-quantizes (and on
        a TPU be a multiple of 128 or cover its dimension); ``num_warps`` / ``num_stages`` are
        the GPU launch. None picks `config.default_config` per product, platform and dtypes.

    Returns:
      float32 [M, N]. Gradients come back in x's and w's dtypes.
    """
    x, w = _check_operand(x, "x"), _check_operand(w, "w")
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"x's K={x.shape[1]} does not match w's K={w.shape[0]} "
                         f"(x {x.shape}, w {w.shape})")
    xs, ws, gs = _resolve(x_spec), _resolve(w_spec), _resolve(grad_spec)
    m, n = x.shape[0], w.shape[1]
    # The same block-size checks bs.fake_quant makes, eagerly (also for the backward's g).
    for spec, shape, axis in ((xs, x.shape, 1), (ws, w.shape, 0), (gs, (m, n), 1),
                              (gs, (m, n), 0)):
        if isinstance(spec, QuantSpec):
            S.grouping(shape, spec, axis)
    if key is not None:
        B.key_words(key)  # validates the key
    if not use_pallas(implementation, interpret, "qmatmul"):
        return qmatmul_reference(x, w, x_spec=xs, w_spec=ws, grad_spec=gs, key=key)
    platform = kernel_platform(bool(interpret))
    for spec, role in ((xs, "x_spec"), (ws, "w_spec"), (gs, "grad_spec")):
        reason = kernel_support(spec, role, platform)
        if reason is not None:
            if implementation == "auto":  # the kernel cannot: the XLA path
                return qmatmul_reference(x, w, x_spec=xs, w_spec=ws, grad_spec=gs, key=key)
            raise ValueError(reason)
    stochastic = key is not None and gs is not None
    if stochastic:
        k_dx, k_dw = grad_keys(key)
        kw = jnp.stack([*B.key_words(k_dx), *B.key_words(k_dw)])
    else:
        kw = jnp.zeros((4,), jnp.uint32)
    if config is not None:  # validate the forward blocks eagerly
        if not isinstance(config, C.QMatmulConfig):
            raise TypeError(f"config must be a QMatmulConfig, got {type(config).__name__}")
        for spec, what in ((xs, "x_spec"), (ws, "w_spec")):
            if isinstance(spec, QuantSpec):
                C.check_multiple(config, "block_k", spec.block_size, f"{what} {spec.name!r}")
    st = _Static(xs, ws, gs, stochastic, config, bool(interpret), platform)
    return _qmatmul_pallas(x, w, kw, st)
