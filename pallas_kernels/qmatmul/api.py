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
runs only on the XLA path.

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
from bitscale.numerics.specs import QuantSpec, Spec

from pallas_kernels.common import use_pallas
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


def _check_kernel_spec(spec: Spec | None, role: str) -> None:
    """The kernel fake-quantizes per tile: element casts and block specs only."""
    if not isinstance(spec, QuantSpec):
        return
    if isinstance(spec.elem, (TernaryFormat, BinaryFormat)) or spec.granularity != "block":
        raise ValueError(
            f"qmatmul's Pallas kernel fake-quantizes per tile, so {role} spec {spec.name!r} "
            f"({spec.granularity} granularity) is not supported: it needs the whole axis; use a "
            "block spec (e.g. 'int8@g32', 'mxfp4') or implementation='xla'")


def _amax(a: jax.Array, spec: Spec | None, axis: int) -> jax.Array:
    if isinstance(spec, QuantSpec) and spec.tensor_scale:
        return tensor_amax(a, spec, axis)
    return jnp.float32(0.0)


def _pad_to(a: jax.Array, rows: int, cols: int) -> jax.Array:
    return jnp.pad(a, ((0, -a.shape[0] % rows), (0, -a.shape[1] % cols)))


def _product(a: jax.Array, b: jax.Array, qa: OperandQuant, qb: OperandQuant, a_t: bool,
             b_t: bool, key_words: jax.Array, amax: jax.Array,
             config: C.QMatmulConfig | None, interpret: bool, names: tuple[str, str]) -> jax.Array:
    """float32 A @ B through the kernel: checks tile multiples, pads, runs, slices."""
    m, k = (a.shape[1], a.shape[0]) if a_t else a.shape
    n = b.shape[0] if b_t else b.shape[1]
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
        config = C.default_config(m, n, k, mult_m=mult["m"], mult_n=mult["n"], mult_k=mult["k"])
    if not isinstance(config, C.QMatmulConfig):
        raise TypeError(f"config must be a QMatmulConfig, got {type(config).__name__}")
    for ax, items in roles.items():
        for block, what in items:
            C.check_multiple(config, f"block_{ax}", block, what)
    blocks = {"m": config.block_m, "n": config.block_n, "k": config.block_k}
    a_p = _pad_to(a, blocks[a_axes[0]], blocks[a_axes[1]])
    b_p = _pad_to(b, blocks[b_axes[0]], blocks[b_axes[1]])
    prod = Product(qa, qb, a_t, b_t, a.shape[1], b.shape[1])
    y = qmatmul_kernel(a_p, b_p, key_words, amax, prod=prod, config=config, interpret=interpret)
    return y[:m, :n]


def _forward(x, w, st: _Static) -> jax.Array:
    amax = jnp.stack([_amax(x, st.x_spec, 1), _amax(w, st.w_spec, 0)])
    return _product(x, w, OperandQuant(st.x_spec, 1), OperandQuant(st.w_spec, 0), False, False,
                    jnp.zeros((4,), jnp.uint32), amax, st.config, st.interpret,
                    ("x_spec", "w_spec"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _qmatmul_pallas(x, w, key_words, st: _Static):
    return _forward(x, w, st)


def _qmatmul_pallas_fwd(x, w, key_words, st: _Static):
    return _forward(x, w, st), (x, w, key_words)


def _qmatmul_pallas_bwd(st: _Static, res, g):
    x, w, kw = res
    gs, sr = st.grad_spec, st.stochastic
    g_amax_dx, g_amax_dw = _amax(g, gs, 1), _amax(g, gs, 0)
    zeros2 = jnp.zeros((2,), jnp.uint32)
    # dx [M, K] = q_g(g) [M, N] @ wq^T: w stored [K, N], its blocks along stored axis 0.
    dx = _product(g, w, OperandQuant(gs, 1, sr), OperandQuant(st.w_spec, 0), False, True,
                  jnp.concatenate([kw[:2], zeros2]),
                  jnp.stack([g_amax_dx, _amax(w, st.w_spec, 0)]), st.config, st.interpret,
                  ("dx = q_g(g) @ wq^T: grad_spec", "dx = q_g(g) @ wq^T: w_spec"))
    # dw [K, N] = xq^T @ q_g(g): x stored [M, K] (blocks along axis 1), g blocks along axis 0.
    dw = _product(x, g, OperandQuant(st.x_spec, 1), OperandQuant(gs, 0, sr), True, False,
                  jnp.concatenate([zeros2, kw[2:]]),
                  jnp.stack([_amax(x, st.x_spec, 1), g_amax_dw]), st.config, st.interpret,
                  ("dw = xq^T @ q_g(g): x_spec", "dw = xq^T @ q_g(g): grad_spec"))
    return dx.astype(x.dtype), dw.astype(w.dtype), None


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
        each tile must hold whole quantization blocks of the operands it fake-quantizes. None
        picks `config.default_config` per product.

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
    for spec, role in ((xs, "x_spec"), (ws, "w_spec"), (gs, "grad_spec")):
        _check_kernel_spec(spec, role)
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
    st = _Static(xs, ws, gs, stochastic, config, bool(interpret))
    return _qmatmul_pallas(x, w, kw, st)
