"""Dispatch between the Pallas kernels and their XLA (pure jnp) references, and the lowering
each kernel is compiled with.

``implementation="auto"`` picks Pallas on GPU and TPU and XLA on CPU; ``"pallas"`` forces the
kernel (on CPU only with ``interpret=True``, which runs the kernel body through the Pallas
interpreter, or inside `lowering_target`); ``"xla"`` runs the jnp reference from
`bitscale.numerics`.

The lowering is never JAX's default: on NVIDIA / AMD GPUs every kernel passes Triton compiler
parameters (``num_warps``, ``num_stages`` from its config), which selects Pallas' Triton backend
whatever ``JAX_PALLAS_USE_MOSAIC_GPU`` says (its default changed between JAX releases); on TPUs
Mosaic TPU parameters. `lowering_target` lets a CPU host trace the kernels for a GPU or TPU, so
that ``jax.export.export(jax.jit(f), platforms=["cuda"])`` checks the real lowering in CI.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Callable

import jax

from bitscale.numerics import ieee
from bitscale.numerics.validate import (  # noqa: F401  (re-exported)
    IMPLEMENTATIONS, Implementation, check_implementation)

PALLAS_BACKENDS = ("gpu", "tpu")
#: What a kernel can be lowered for: Triton on NVIDIA ("cuda") and AMD ("rocm"), Mosaic on TPU.
PLATFORMS = ("cuda", "rocm", "tpu")
#: Per-block shared memory the default GPU configs must fit (bytes): H100 / H200, and A100.
SMEM_LIMITS = {"h100": 227 * 1024, "a100": 163 * 1024}

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("pallas_target",
                                                                     default=None)


def backend() -> str:
    return jax.default_backend()


@contextlib.contextmanager
def lowering_target(platform: str) -> Iterator[None]:
    """Within the block, kernels trace for ``platform`` ("cuda", "rocm" or "tpu") on any host:
    `use_pallas` picks the kernel under "auto" and "pallas" and `compiler_params` that
    platform's lowering. For exporting (``jax.export``) a GPU / TPU program from a CPU host; the
    result cannot run on the host itself. From JAX 0.11 a GPU target also sets an abstract
    device (`ABSTRACT_GPUS`), whose compute capability Triton's lowering reads. Trace a fresh
    function per target: the target is not part of JAX's jit cache key."""
    if platform not in PLATFORMS:
        raise ValueError(f"lowering_target: unknown platform {platform!r}; valid: {PLATFORMS}")
    token = _TARGET.set(platform)
    try:
        with _abstract_gpu(platform):
            yield
    finally:
        _TARGET.reset(token)


#: The GPU an export from a host without one targets (JAX >= 0.11's Triton lowering reads the
#: compute capability of the device it lowers for).
ABSTRACT_GPUS = {"cuda": "NVIDIA H100", "rocm": "gfx942"}


def _abstract_gpu(platform: str) -> contextlib.AbstractContextManager:
    """On JAX versions whose Triton lowering needs a GPU's compute capability, and a host
    without a GPU: an abstract one-device mesh of `ABSTRACT_GPUS`' device (no-op otherwise)."""
    abstract_device = getattr(jax.sharding, "AbstractDevice", None)
    if (platform not in ABSTRACT_GPUS or abstract_device is None or backend() == "gpu"
            or jax.__version_info__ < (0, 11)):
        return contextlib.nullcontext()
    device = abstract_device(device_kind=ABSTRACT_GPUS[platform], num_cores=None,
                             platform=platform)
    mesh = jax.sharding.AbstractMesh((1,), ("pallas_target",), abstract_device=device)
    return jax.sharding.use_abstract_mesh(mesh)


def target_platform() -> str | None:
    """The platform kernels are traced for: `lowering_target`'s, else the default backend's
    ("cuda" / "rocm" for a GPU, "tpu"), or None on a CPU."""
    target = _TARGET.get()
    if target is not None:
        return target
    b = backend()
    if b == "gpu":
        version = getattr(jax.devices()[0].client, "platform_version", "") or ""
        return "rocm" if "rocm" in version.lower() else "cuda"
    return "tpu" if b == "tpu" else None


def use_pallas(implementation: str, interpret: bool, op: str) -> bool:
    """Resolves ``implementation`` to True (run the Pallas kernel) or False (run XLA).

    Raises ValueError for an unknown choice, and for ``"pallas"`` on a backend without a Pallas
    lowering unless ``interpret=True`` (or inside `lowering_target`).
    """
    check_implementation(implementation)
    if implementation == "xla":
        return False
    if interpret:
        return True
    supported = target_platform() is not None
    if implementation == "pallas" and not supported:
        raise ValueError(
            f"{op}: implementation='pallas' needs a GPU or TPU backend, but JAX's default backend is "
            f"{backend()!r}; pass interpret=True to run the kernel in the Pallas interpreter, or "
            "implementation='xla' (or 'auto') for the jnp reference")
    return supported


def kernel_platform(interpret: bool) -> str | None:
    """The platform a kernel call lowers for: None in the interpreter, else `target_platform`.
    Pass it to the jitted kernel wrapper as a static argument (so a trace for one platform is
    never reused for another) and on to `compiler_params`."""
    return None if interpret else target_platform()


def compiler_params(platform: str | None, *, num_warps: int, num_stages: int,
                    dimension_semantics: tuple[str, ...] | None = None):
    """The ``compiler_params`` of a ``pl.pallas_call`` lowered for ``platform`` (see
    `kernel_platform`): Triton's (``num_warps``, ``num_stages``) on a GPU, Mosaic TPU's
    (``dimension_semantics``, "parallel" / "arbitrary" per grid axis) on a TPU, None in the
    interpreter."""
    if platform is not None and platform not in PLATFORMS:
        raise ValueError(f"compiler_params: unknown platform {platform!r}; valid: {PLATFORMS}")
    if platform in ("cuda", "rocm"):
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    if platform == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=dimension_semantics)
    return None


def check_positive_multiple(name: str, value: int, multiple: int, what: str) -> None:
    if not isinstance(value, int) or value < 1 or value % multiple:
        raise ValueError(f"{name}={value!r} must be a positive multiple of {multiple} ({what})")


def check_launch(num_warps: int, num_stages: int) -> None:
    """Triton launch parameters: ``num_warps`` a power of two in [1, 32], ``num_stages`` >= 1."""
    if not isinstance(num_warps, int) or isinstance(num_warps, bool) or not (
            1 <= num_warps <= 32 and num_warps & (num_warps - 1) == 0):
        raise ValueError(f"num_warps={num_warps!r} must be a power of two in [1, 32]")
    if not isinstance(num_stages, int) or isinstance(num_stages, bool) or num_stages < 1:
        raise ValueError(f"num_stages={num_stages!r} must be an int >= 1")


def portable_body(kernel: Callable) -> Callable:
    """``kernel`` traced under `bitscale.numerics.ieee.portable`: the numerics it calls use
    their integer emulations, which every Pallas lowering has, instead of a per-platform switch
    (Triton cannot lower one), and so give the XLA path's bits on every backend."""
    @functools.wraps(kernel)
    def body(*refs):
        with ieee.portable():
            return kernel(*refs)
    return body
