"""pallas_kernels.common: the dispatch, the explicit lowering choice and `lowering_target`."""

from __future__ import annotations

import jax
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import common


def test_lowering_target_traces_for_an_accelerator_on_any_host():
    host = common.target_platform()
    with common.lowering_target("cuda"):
        assert common.target_platform() == "cuda"
        assert common.use_pallas("auto", False, "op") is True
        assert common.use_pallas("pallas", False, "op") is True
        assert common.kernel_platform(interpret=False) == "cuda"
        assert common.kernel_platform(interpret=True) is None
        with common.lowering_target("tpu"):
            assert common.target_platform() == "tpu"
        assert common.target_platform() == "cuda"
    assert common.target_platform() == host
    with pytest.raises(ValueError, match=r"unknown platform 'gpu'.*'cuda', 'rocm', 'tpu'"):
        with common.lowering_target("gpu"):
            pass


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU-host dispatch")
def test_cpu_dispatch():
    assert common.target_platform() is None
    assert common.use_pallas("auto", False, "op") is False
    assert common.use_pallas("auto", True, "op") is True
    assert common.use_pallas("xla", True, "op") is False
    with pytest.raises(ValueError, match="op: implementation='pallas' needs a GPU or TPU"):
        common.use_pallas("pallas", False, "op")
    with pytest.raises(ValueError, match="implementation must be one of"):
        common.use_pallas("cuda", False, "op")


def test_compiler_params_pick_the_lowering_explicitly():
    p = common.compiler_params("cuda", num_warps=4, num_stages=3)
    assert isinstance(p, pltriton.CompilerParams) and (p.num_warps, p.num_stages) == (4, 3)
    assert isinstance(common.compiler_params("rocm", num_warps=8, num_stages=1),
                      pltriton.CompilerParams)
    t = common.compiler_params("tpu", num_warps=4, num_stages=3,
                               dimension_semantics=("parallel", "arbitrary"))
    assert isinstance(t, pltpu.CompilerParams)
    assert tuple(t.dimension_semantics) == ("parallel", "arbitrary")
    assert common.compiler_params(None, num_warps=4, num_stages=3) is None
    with pytest.raises(ValueError, match="unknown platform 'metal'"):
        common.compiler_params("metal", num_warps=4, num_stages=3)


@pytest.mark.parametrize("warps,stages,match", [
    (3, 2, "num_warps=3 must be a power of two in"), (64, 2, "num_warps=64"),
    (True, 2, "num_warps=True"), (4, 0, "num_stages=0 must be an int >= 1"),
    (4, 1.5, "num_stages=1.5")])
def test_check_launch(warps, stages, match):
    with pytest.raises(ValueError, match=match):
        common.check_launch(warps, stages)
    common.check_launch(4, 2)
