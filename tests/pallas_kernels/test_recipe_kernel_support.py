"""The 4-bit recipe options (2-D blocks, +rms, +4o6, +headroom) and the Pallas kernels.

The quantize / hadamard / qmatmul kernels group along one axis with the absmax rules: their
support checks name the option, ``implementation="auto"`` falls back to XLA (bit-identical to
`bitscale`) and ``"pallas"`` raises with the reason. packed_matmul only decodes a `QArray`: +rms
and +4o6 weights decode like any NVFP4 / MXFP4 weight, which the interpreter checks bit for bit
(``x = I`` makes the product the dequantized weight, exactly); 2-D blocks and +headroom fall back.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitscale as bs
from pallas_kernels.quantize import fake_quant as kernel_fake_quant
from pallas_kernels.quantize import kernel_support
from pallas_kernels.quantize import quantize as kernel_quantize
from pallas_kernels.hadamard import hadamard_fake_quant
from pallas_kernels.packed_matmul import packed_matmul, packed_matmul_reference
from pallas_kernels.packed_matmul.api import unsupported_reason
from pallas_kernels.qmatmul import kernel_support as qmatmul_support
from pallas_kernels.qmatmul import qmatmul, qmatmul_reference

RECIPES = {
    "nvfp4_2d": r"2-D 16x16 blocks \(@g16x16\)",
    "mxfp4@g32x32": r"2-D 32x32 blocks",
    "mxfp4+rms": r"the RMS clip \(\+rms\)",
    "nvfp4+4o6": r"Four Over Six block scales \(\+4o6\)",
    "mxfp4+headroom": r"the stochastic-rounding headroom \(\+headroom\)",
}


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32),
                          np.asarray(b, np.float32).view(np.uint32))


@pytest.mark.parametrize("spec", RECIPES)
def test_quantize_and_hadamard_kernels_fall_back(spec):
    x = jax.random.normal(jax.random.key(0), (32, 64))
    resolved = bs.resolve_spec(spec)
    reason = kernel_support(resolved, x.shape, 1)
    assert reason is not None and resolved.name in reason
    assert re.search(RECIPES[spec], reason)
    for fn in (kernel_fake_quant, kernel_quantize):
        with pytest.raises(ValueError, match=RECIPES[spec]):
            fn(x, spec, implementation="pallas", interpret=True)
    with pytest.raises(ValueError, match=RECIPES[spec]):
        hadamard_fake_quant(x, 32, spec, implementation="pallas", interpret=True)

    @jax.jit  # one program: op-by-op dispatch of the quantizers costs seconds
    def auto_and_reference(v):
        auto = (kernel_fake_quant(v, spec, implementation="auto", interpret=True),
                bs.dequantize(kernel_quantize(v, spec, implementation="auto", interpret=True)),
                hadamard_fake_quant(v, 32, spec, implementation="auto", interpret=True))
        ref = bs.fake_quant(v, spec)
        return auto, (ref, ref, bs.fake_quant(bs.hadamard_transform(v, 32), spec))

    for a, b in zip(*auto_and_reference(x)):
        assert _same(a, b)


@pytest.mark.parametrize("spec", RECIPES)
def test_qmatmul_falls_back(spec):
    x = jax.random.normal(jax.random.key(1), (32, 64))
    w = jax.random.normal(jax.random.key(2), (64, 32))
    for role in ("x_spec", "w_spec", "grad_spec"):
        reason = qmatmul_support(bs.resolve_spec(spec), role, None)
        assert reason is not None and role in reason
        assert re.search(RECIPES[spec], reason)
    with pytest.raises(ValueError, match=RECIPES[spec]):
        qmatmul(x, w, x_spec="mxfp4", w_spec=spec, implementation="pallas", interpret=True)
    y, ref = jax.jit(lambda a, b: (
        qmatmul(a, b, x_spec="mxfp4", w_spec=spec, implementation="auto", interpret=True),
        qmatmul_reference(a, b, x_spec="mxfp4", w_spec=spec)))(x, w)
    assert _same(y, ref)


@pytest.mark.parametrize("spec", ["nvfp4+4o6", "mxfp4+rms"])
def test_packed_matmul_decodes_rms_and_4o6_weights_exactly(spec):
    w = jax.random.normal(jax.random.key(3), (64, 32)) * 3.0
    q = bs.quantize(w, spec, axis=0)
    eye = jnp.eye(64, dtype=jnp.float32)
    assert unsupported_reason(eye, q) is None
    y = jax.jit(lambda a, b: packed_matmul(a, b, implementation="pallas", interpret=True))(eye, q)
    # Exact products summed with zeros: the dequantized weight, up to the sign of zero (a sum
    # of +0 terms is +0 where a code is -0).
    np.testing.assert_array_equal(np.asarray(y), np.asarray(bs.dequantize(q)))


@pytest.mark.parametrize("spec,why", [("nvfp4_2d", "2-D block scales"),
                                      ("mxfp4+headroom", r"\+headroom")])
def test_packed_matmul_falls_back_for_2d_and_headroom(spec, why):
    w = jax.random.normal(jax.random.key(4), (64, 32))
    q = bs.quantize(w, spec, axis=0)
    x = jax.random.normal(jax.random.key(5), (8, 64))
    assert re.search(why, unsupported_reason(x, q))
    with pytest.raises(ValueError, match=why):
        packed_matmul(x, q, implementation="pallas", interpret=True)
    y = packed_matmul(x, q, implementation="auto", interpret=True)
    assert _same(y, packed_matmul_reference(x, q))
