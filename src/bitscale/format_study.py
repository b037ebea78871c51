"""Format study: quantization error of every named format on LLM-like tensors (seconds on a CPU).

Heavy-tailed, LLM-like weights and activations (Student-t weights, activations with outlier
channels), quantized with and without a block Hadamard rotation; `section` returns the markdown
table that the `make demo` report appends, ``main`` writes it to ``<out>/formats.md``.

    python -m bitscale.format_study [--out runs/formats] [--seed 0]
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp

import bitscale as bs

SPECS = ["bf16", "fp8_e4m3", "fp8_e5m2", "int8@channel", "mxfp8_e4m3", "mxfp6_e2m3", "mxint8",
         "int4@g128", "int4@g128+mse", "mxfp4", "mxfp4+rceil", "nvfp4", "fp4_e2m1@g32:e8m0",
         "ternary@channel"]


def sqnr_db(x: jax.Array, y: jax.Array) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    return float(10 * jnp.log10(jnp.sum(x * x) / jnp.maximum(jnp.sum((x - y) ** 2), 1e-30)))


def make_tensors(seed: int) -> dict[str, jax.Array]:
    kw, ka, ko = jax.random.split(jax.random.key(seed), 3)
    weight = 0.02 * jax.random.t(kw, 5.0, (1024, 1024), jnp.float32)
    act = jax.random.normal(ka, (256, 1024), jnp.float32)
    outliers = jax.random.choice(ko, 1024, (8,), replace=False)
    act = act.at[:, outliers].multiply(50.0)
    return {"weight (Student-t, nu=5)": weight, "activation (8 outlier channels)": act}


def section(seed: int = 0, heading: str = "#") -> str:
    """The markdown table (SQNR of every spec in `SPECS`, with and without rotation)."""
    tensors = make_tensors(seed)
    rot_key = jax.random.key(seed + 1)
    lines = [f"{heading} Quantization error by format", "",
             "SQNR in dB (higher is better) of `fake_quant` along the last axis; `+H` applies a",
             "randomized block-128 Hadamard rotation first (QuaRot/QuEST style).", ""]
    header = "| spec | bits/elem | " + " | ".join(
        f"{name} | {name} +H" for name in tensors) + " |"
    lines += [header, "|" + "---|" * (2 + 2 * len(tensors))]
    for spec in SPECS:
        row = [spec]
        bpe = None
        for x in tensors.values():
            q = bs.quantize(x, spec)
            bpe = q.bits_per_element
            xr = bs.hadamard_transform(x, 128, key=rot_key)
            row += [f"{sqnr_db(x, bs.dequantize(q)):.1f}", f"{sqnr_db(xr, bs.fake_quant(xr, spec)):.1f}"]
        row.insert(1, f"{bpe:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/formats", type=pathlib.Path)
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args()
    text = section(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "formats.md").write_text(text)
    print(text)
    print(f"wrote {args.out / 'formats.md'}")


if __name__ == "__main__":
    main()
