"""Self-check for a new GPU / TPU box: the same bits as the CPU, and kernels equal to XLA.

``python -m bitscale.selfcheck [--quick]`` runs, on JAX's default device:

* every spec x rounding of `bitscale.fake_quant`, `bitscale.quantize` (codes, scales, zero
  points, tensor scale) and `bitscale.dequantize`, compared bit for bit with the same call on the
  CPU device of the same process, on random data with edge rows (ties, float32 subnormals, NaN,
  Inf, zero and tiny blocks);
* every Pallas kernel against its XLA path on the same device: the fused quantize / fake-quant
  kernels bit for bit; the kernels that end in a matmul (Hadamard, packed_matmul, qmatmul) to a
  tolerance, reported as ``approx`` because a matmul's accumulation order is the backend's;
* the lowering of every fake_quant case for CUDA and TPU (`jax.export` on any host), failing on a
  float convert round trip that XLA:GPU would delete.

One line per case, a summary, and a non-zero exit on any mismatch or failure. On a CPU-only host
the device comparison is the CPU against itself and the kernels run in the Pallas interpreter;
``--quick`` is the subset the test suite runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import bitscale as bs
from bitscale.numerics.elementwise import from_f32
from bitscale.selfcheck.hlo import export_text, float_round_trips

ELEMENT_SPECS = ("fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "bf16", "fp16",
                 "e3m4", "e4m3", "ue4m3", "int8", "int4", "uint4", "e8m0")
NAMED_SPECS = tuple(bs.NAMED_SPECS)
COMPOSITE_SPECS = ("int8@channel", "int8@tensor", "int4@g128", "int4@g32+asym",
                   "int8@channel+full", "int8@channel+mse", "int4@g32+asym+mse",
                   "fp8_e4m3@channel", "fp8_e5m2@channel", "mxfp4+rceil", "mxfp4+ceil",
                   "mxfp8_e4m3+even", "mxfp4+mse", "int8@g32:bf16", "int4@g16:ue4m3+2level",
                   "ternary@channel", "e3m3@g32:e8m0")
ALL_SPECS = ELEMENT_SPECS + NAMED_SPECS + COMPOSITE_SPECS
QUICK_SPECS = ("fp8_e4m3", "mxfp4", "nvfp4", "int4@g32+asym", "ternary")
KERNEL_SPECS = ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "mxfp8_e4m3", "mxfp6_e3m2", "mxfp4",
                "mxint8", "nvfp4", "nvfp4_single", "int8@channel", "int4@g128", "int4@g128+asym",
                "mxfp4+rceil")
QUICK_KERNEL_SPECS = ("fp8_e4m3", "mxfp4", "nvfp4")
ROUNDINGS = ("nearest", "stochastic")

OK, MISMATCH, FAIL, APPROX, SKIP = "ok", "MISMATCH", "FAIL", "approx", "skip"


@dataclasses.dataclass
class Result:
    """One case: ``status`` is ok / MISMATCH / FAIL / approx (within a tolerance, not bitwise by
    design) / skip (the backend cannot run it; ``detail`` says why)."""

    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.status:<9} {self.name}{tail}  ({self.seconds:.1f}s)"


@dataclasses.dataclass
class Report:
    device: str
    results: list[Result]

    @property
    def counts(self) -> dict[str, int]:
        """Cases per status: ok, mismatch, fail, approx, skip."""
        out = {s.lower(): 0 for s in (OK, MISMATCH, FAIL, APPROX, SKIP)}
        for r in self.results:
            out[r.status.lower()] += 1
        return out

    @property
    def passed(self) -> bool:
        c = self.counts
        return c["mismatch"] == 0 and c["fail"] == 0

    def summary(self) -> str:
        return f"SUMMARY device={self.device!r} " + " ".join(
            f"{k}={v}" for k, v in self.counts.items())

    def to_json(self) -> str:
        return json.dumps({"device": self.device, "counts": self.counts,
                           "results": [dataclasses.asdict(r) for r in self.results]}, indent=1)


# ---------------------------------------------------------------------------------------------
# Inputs


def edge_values() -> np.ndarray:
    """float32 values every spec must handle: zeros, infinities, NaNs, subnormals, the limits
    of the common formats and their overflow ties, and exact ties of the fp4 / fp8 grids."""
    v = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-42, 2.0**-149, -2.0**-126,
         448.0, 464.0, -480.0, 6.0, 6.5, -7.0, 57344.0, 61440.0, 3.4028235e38, -3.4028235e38,
         0.25, 0.75, -1.25, 2.5, 5.0, 2.0**-10, 3 * 2.0**-10, 1.5, 127.5, -126.5]
    out = np.array(v, np.float32)
    nan_payload = np.array([0x7FC00001, 0xFFC00000, 0x7F800001], np.uint32).view(np.float32)
    return np.concatenate([out, nan_payload])


def make_input(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random normal * 3 with edge rows: row 0 starts with `edge_values`, row 1 has a zero
    block and an Inf block, row 2 is all float32 subnormals, row 3 tiny normals (2^-120 scale),
    row 4 huge values (2^100 scale), row 5 exact multiples of 0.25 (ties of coarse grids)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
    e = edge_values()
    x[0, :e.size] = e
    x[1, :32] = 0.0
    x[1, 32:48] = np.float32(np.inf)
    x[2] = (rng.standard_normal(cols) * 1e-39).astype(np.float32)
    x[3] = (rng.standard_normal(cols) * 2.0**-120).astype(np.float32)
    x[4] = (rng.standard_normal(cols) * 2.0**100).astype(np.float32)
    x[5] = (rng.integers(-40, 40, cols) * 0.25).astype(np.float32)
    return x


# ---------------------------------------------------------------------------------------------
# Comparison


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "f" or a.dtype == jnp.bfloat16:
        return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])
    return a


def diff_message(got, want) -> str | None:
    """None when ``got`` and ``want`` have the same shape and bits, else a short description."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"shape/dtype {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    gb, wb = _bits(got), _bits(want)
    bad = gb != wb
    if not bad.any():
        return None
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"{int(bad.sum())} of {bad.size} elements differ (first at {first}: "
            f"{hex(int(gb[first]))} vs {hex(int(wb[first]))})")


def _tree_diff(got, want) -> str | None:
    gl, wl = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    if len(gl) != len(wl):
        return f"{len(gl)} vs {len(wl)} arrays"
    msgs = [m for m in (diff_message(g, w) for g, w in zip(gl, wl)) if m]
    return "; ".join(msgs) or None


def _run_case(name: str, fn: Callable[[], tuple[str, str]]) -> Result:
    t0 = time.perf_counter()
    try:
        status, detail = fn()
    except Exception as err:  # noqa: BLE001 -- a failing case is reported, not raised
        frames = traceback.format_exception_only(type(err), err)[-1].strip()
        status, detail = FAIL, frames[:400]
    return Result(name, status, detail, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Cases


def _on(device, fn: Callable, *args):
    """``jax.jit(fn)(*args)`` on ``device``, fetched to numpy."""
    with jax.default_device(device):
        placed = [jax.device_put(a, device) for a in args]
        out = jax.jit(fn)(*placed)
    return jax.tree_util.tree_map(np.asarray, out)


def _qarray_leaves(q: bs.QArray):
    return {k: v for k, v in (("codes", q.codes), ("scales", q.scales),
                              ("zero_point", q.zero_point), ("tensor_scale", q.tensor_scale))
            if v is not None}


def spec_cases(specs: Iterable[str], x: np.ndarray, device, cpu,
               key: jax.Array) -> list[tuple[str, Callable[[], tuple[str, str]]]]:
    """fake_quant / quantize / dequantize of each spec and rounding, device vs CPU."""
    cases = []
    for spec in specs:
        for rounding in ROUNDINGS:
            k = key if rounding == "stochastic" else None
            fq = lambda a, s=spec, r=rounding, k=k: bs.fake_quant(a, s, rounding=r, key=k)
            qz = lambda a, s=spec, r=rounding, k=k: _qarray_leaves(
                bs.quantize(a, s, rounding=r, key=k))
            dq = lambda a, s=spec, r=rounding, k=k: bs.dequantize(
                bs.quantize(a, s, rounding=r, key=k))
            for op, fn in (("fake_quant", fq), ("quantize", qz), ("dequantize", dq)):
                cases.append((f"{op} {spec} {rounding}", _versus_cpu(fn, x, device, cpu)))
    bf = np.asarray(from_f32(jnp.asarray(x[:8]), jnp.bfloat16))
    for spec in ("int8@channel", "nvfp4", "fp8_e4m3"):
        fn = lambda a, s=spec: bs.fake_quant(a, s)
        cases.append((f"fake_quant {spec} nearest bfloat16 input",
                      _versus_cpu(fn, bf, device, cpu)))
    return cases


def _versus_cpu(fn: Callable, x: np.ndarray, device, cpu) -> Callable[[], tuple[str, str]]:
    def case():
        got = _on(device, fn, x)
        if device == cpu:
            return OK, "ran on the CPU only"
        msg = _tree_diff(got, _on(cpu, fn, x))
        return (MISMATCH, f"device != cpu: {msg}") if msg else (OK, "")
    return case


def lowering_cases(specs: Iterable[str], shape: tuple[int, int],
                   key: jax.Array) -> list[tuple[str, Callable[[], tuple[str, str]]]]:
    """Export fake_quant of each spec (both roundings) for CUDA and TPU; no round trips."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    ks = jax.ShapeDtypeStruct(key.shape, key.dtype)
    cases = []
    for spec in specs:
        def case(spec=spec):
            found = []
            for rounding in ROUNDINGS:
                fn = lambda a, k, r=rounding: bs.fake_quant(
                    a, spec, rounding=r, key=k if r == "stochastic" else None)
                found += float_round_trips(export_text(fn, [x, ks]))
            if found:
                return MISMATCH, f"{len(found)} float convert round trip(s): {found[0]}"
            return OK, ""
        cases.append((f"lowering cuda+tpu {spec}", case))
    return cases


def kernel_cases(specs: Sequence[str], x: np.ndarray, device, interpret: bool, key: jax.Array,
                 quick: bool) -> list[tuple[str, Callable[[], tuple[str, str]]]]:
    """Pallas kernels against their XLA paths on ``device``."""
    import pallas_kernels as pk
    from pallas_kernels.packed_matmul import packed_matmul
    from pallas_kernels.qmatmul import qmatmul
    from pallas_kernels.quantize.api import kernel_support

    cases = []
    for spec in specs:
        resolved = bs.resolve_spec(spec)
        reason = kernel_support(resolved, x.shape, x.ndim - 1)
        for rounding in ROUNDINGS:
            k = key if rounding == "stochastic" else None

            def case(spec=spec, rounding=rounding, k=k, reason=reason):
                if reason:
                    return SKIP, f"no kernel: {reason}"
                pal = lambda a: pk.fake_quant(a, spec, rounding=rounding, key=k,
                                              implementation="pallas", interpret=interpret)
                ref = lambda a: bs.fake_quant(a, spec, rounding=rounding, key=k)
                msg = _tree_diff(_on(device, pal, x), _on(device, ref, x))
                return (MISMATCH, f"pallas != xla: {msg}") if msg else (OK, "")
            cases.append((f"kernel fake_quant {spec} {rounding}", case))

        def qcase(spec=spec, reason=reason):
            if reason:
                return SKIP, f"no kernel: {reason}"
            pal = lambda a: _qarray_leaves(pk.quantize(a, spec, implementation="pallas",
                                                       interpret=interpret))
            ref = lambda a: _qarray_leaves(bs.quantize(a, spec))
            msg = _tree_diff(_on(device, pal, x), _on(device, ref, x))
            return (MISMATCH, f"pallas != xla: {msg}") if msg else (OK, "")
        cases.append((f"kernel quantize {spec}", qcase))

    def approx(name, pal, ref, args, tol):
        def case():
            p, r = _on(device, pal, *args), _on(device, ref, *args)
            pl_, rl = jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(r)
            worst = 0.0
            for a, b in zip(pl_, rl):
                a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
                worst = max(worst, float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30)))
            if not np.isfinite(worst) or worst > tol:
                return MISMATCH, f"max relative difference {worst:.2e} > {tol:.0e}"
            exact = all(diff_message(a, b) is None for a, b in zip(pl_, rl))
            if exact:
                return OK, "bit-identical"
            return APPROX, (f"max relative difference {worst:.2e} <= {tol:.0e} (not bitwise: "
                            "the matmul accumulation order is the backend's)")
        cases.append((name, case))

    rng = np.random.default_rng(1)
    xs = (rng.standard_normal((16, 256)) * 3).astype(np.float32)
    approx("kernel hadamard_transform b128",
           lambda a: pk.hadamard_transform(a, 128, key=key, implementation="pallas",
                                           interpret=interpret),
           lambda a: bs.hadamard_transform(a, 128, key=key), [xs], 1e-5)
    for spec in (("mxfp4",) if quick else ("mxfp4", "nvfp4_single")):
        approx(f"kernel hadamard_fake_quant {spec}",
               lambda a, s=spec: pk.hadamard_fake_quant(a, 128, s, key=key,
                                                        implementation="pallas",
                                                        interpret=interpret),
               lambda a, s=spec: pk.hadamard_fake_quant(a, 128, s, key=key,
                                                        implementation="xla"), [xs], 0.3)
    kdim = 256
    w = (rng.standard_normal((kdim, 128))).astype(np.float32)
    for spec in (("int4@g128",) if quick else ("int4@g128", "int8@channel", "mxfp4", "nvfp4")):
        for m in ((16,) if quick else (1, 16, 128)):
            a = rng.standard_normal((m, kdim)).astype(np.float32)
            approx(f"kernel packed_matmul {spec} M={m}",
                   lambda a, w, s=spec: packed_matmul(a, bs.quantize(w, s, axis=0),
                                                      implementation="pallas",
                                                      interpret=interpret),
                   lambda a, w, s=spec: packed_matmul(a, bs.quantize(w, s, axis=0),
                                                      implementation="xla"),
                   [a.astype(jnp.bfloat16), w], 1e-2)
    xa = rng.standard_normal((128, 128)).astype(np.float32)
    wb = rng.standard_normal((128, 128)).astype(np.float32)
    specs_mm = [("mxfp4", "mxfp4", "mxfp8_e4m3")]
    if not quick:
        specs_mm += [("nvfp4", "nvfp4", "nvfp4"), ("int8@g32", "int8@g32", "int8@g32")]
    for xs_, ws_, gs_ in specs_mm:
        def fwd_bwd(impl, xs_=xs_, ws_=ws_, gs_=gs_):
            f = lambda a, b: qmatmul(a, b, x_spec=xs_, w_spec=ws_, grad_spec=gs_, key=key,
                                     implementation=impl,
                                     interpret=interpret and impl == "pallas")
            return lambda a, b: (f(a, b), jax.grad(lambda u, v: jnp.sum(f(u, v) ** 2),
                                                   argnums=(0, 1))(a, b))
        approx(f"kernel qmatmul {xs_}/{ws_}/{gs_} fwd+bwd", fwd_bwd("pallas"), fwd_bwd("xla"),
               [xa, wb], 2e-2)
    return cases


# ---------------------------------------------------------------------------------------------
# Runner


def run(quick: bool = False, *, kernels: bool = True, lowering: bool = True,
        specs: Sequence[str] | None = None, echo: Callable[[str], None] | None = print) -> Report:
    """Runs the self-check on JAX's default device; returns the `Report` (``echo`` gets each
    line as it is produced)."""
    device = jax.devices()[0]
    cpu = jax.devices("cpu")[0]
    interpret = device.platform == "cpu"
    name = f"{device.platform}:{getattr(device, 'device_kind', device.platform)}"
    echo = echo or (lambda _: None)
    echo(f"bitscale self-check: jax {jax.__version__}, device {name} vs {cpu.platform}"
         + (" (no accelerator: the device comparison is the CPU against itself, kernels run "
            "in the Pallas interpreter)" if interpret else ""))
    rows, cols = (16, 256) if quick else (64, 1024)
    x = make_input(rows, cols)
    key = jax.random.key(7)
    specs = tuple(specs) if specs else (QUICK_SPECS if quick else ALL_SPECS)
    cases = spec_cases(specs, x, device, cpu, key)
    if kernels:
        cases += kernel_cases(QUICK_KERNEL_SPECS if quick else KERNEL_SPECS,
                              x[:8] if quick else x, device, interpret, key, quick)
    if lowering:
        cases += lowering_cases(specs, (16, 256), key)  # 16 rows: 16x16 tiles
    results = []
    for case_name, fn in cases:
        r = _run_case(case_name, fn)
        results.append(r)
        echo(r.line())
    report = Report(name, results)
    echo(report.summary())
    return report


__all__ = ["ALL_SPECS", "QUICK_SPECS", "Report", "Result", "diff_message", "edge_values",
           "make_input", "run"]
