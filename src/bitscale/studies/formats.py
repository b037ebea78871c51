"""Format study: quantization error of every named format on LLM-like tensors (seconds on a CPU).

Heavy-tailed, LLM-like weights and activations (Student-t weights, activations with outlier
channels), quantized with and without a block Hadamard rotation. `run` measures, `section`
formats the markdown table the `make demo` report appends; the command line writes it to
``<out>/formats.md``:

    python -m bitscale.studies.formats [--out=runs/formats] [--seed=0]
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from absl import flags

import bitscale as bs
from bitscale.studies.report import markdown_table

__all__ = ["SPECS", "make_tensors", "run", "section", "sqnr_db"]

SPECS = ("bf16", "fp8_e4m3", "fp8_e5m2", "int8@channel", "mxfp8_e4m3", "mxfp6_e2m3", "mxint8",
         "int4@g128", "int4@g128+mse", "mxfp4", "mxfp4+rceil", "nvfp4", "fp4_e2m1@g32:e8m0",
         "ternary@channel")
ROTATION_BLOCK = 128


def sqnr_db(x: jax.Array, y: jax.Array) -> float:
    """Signal-to-quantization-noise ratio of ``y`` against ``x``, in dB."""
    return float(10 * jnp.log10(jnp.sum(x * x) / jnp.maximum(jnp.sum((x - y) ** 2), 1e-30)))


def make_tensors(seed: int) -> dict[str, jax.Array]:
    """A Student-t (nu = 5) weight [1024, 1024] and an activation [256, 1024] with 8 outlier
    channels (x50)."""
    kw, ka, ko = jax.random.split(jax.random.key(seed), 3)
    weight = 0.02 * jax.random.t(kw, 5.0, (1024, 1024), jnp.float32)
    act = jax.random.normal(ka, (256, 1024), jnp.float32)
    outliers = jax.random.choice(ko, 1024, (8,), replace=False)
    act = act.at[:, outliers].multiply(50.0)
    return {"weight (Student-t, nu=5)": weight, "activation (8 outlier channels)": act}


@functools.partial(jax.jit, static_argnums=(2,))
def _round_trips(x: jax.Array, xr: jax.Array, spec: str) -> tuple[jax.Array, jax.Array]:
    """``dequantize(quantize(x))`` and ``fake_quant(xr)``, compiled (op-by-op dispatch of the
    bit-level quantizers costs seconds per spec)."""
    return bs.dequantize(bs.quantize(x, spec)), bs.fake_quant(xr, spec)


def run(seed: int = 0, specs: tuple[str, ...] = SPECS) -> dict[str, Any]:
    """SQNR (dB) of `bitscale.quantize` along the last axis for every spec and tensor, without
    and with a randomized block-128 Hadamard rotation.

    Returns:
      ``{"tensors": [names], "rows": [{"spec", "bits", "sqnr": {tensor: (plain, rotated)}}]}``.
    """
    tensors = make_tensors(seed)
    rot_key = jax.random.key(seed + 1)
    rotated = {name: bs.hadamard_transform(x, ROTATION_BLOCK, key=rot_key)
               for name, x in tensors.items()}
    rows = []
    for spec in specs:
        sqnr, bits = {}, None
        for name, x in tensors.items():
            bits = jax.eval_shape(lambda v: bs.quantize(v, spec), x).bits_per_element
            xr = rotated[name]
            y, yr = _round_trips(x, xr, spec)
            sqnr[name] = (sqnr_db(x, y), sqnr_db(xr, yr))
        rows.append({"spec": spec, "bits": float(bits), "sqnr": sqnr})
    return {"tensors": list(tensors), "rows": rows}


def section(results: dict[str, Any], heading: str = "##") -> str:
    """The markdown section of `run`'s results."""
    names = results["tensors"]
    headers = ["spec", "bits/elem"] + [h for n in names for h in (n, f"{n} +H")]
    rows = [[r["spec"], f"{r['bits']:.3f}"] + [f"{v:.1f}" for n in names for v in r["sqnr"][n]]
            for r in results["rows"]]
    lines = [f"{heading} Quantization error by format", "",
             "SQNR in dB (higher is better) of `fake_quant` along the last axis; `+H` applies a",
             f"randomized block-{ROTATION_BLOCK} Hadamard rotation first (QuaRot/QuEST style).",
             "", markdown_table(headers, rows)]
    return "\n".join(lines) + "\n"


def define_flags() -> dict[str, flags.FlagHolder]:
    return {"out": flags.DEFINE_string("out", "runs/formats", "Output directory."),
            "seed": flags.DEFINE_integer("seed", 0, "Tensor and rotation seed.")}


def main(args: dict[str, Any]) -> None:
    out = pathlib.Path(args["out"])
    text = section(run(args["seed"]), heading="#")
    out.mkdir(parents=True, exist_ok=True)
    (out / "formats.md").write_text(text)
    print(text)
    print(f"wrote {out / 'formats.md'}")


if __name__ == "__main__":
    from bitscale._cli import launch_study

    launch_study(define_flags, main)
