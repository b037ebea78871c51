"""``python -m bitscale.selfcheck [--quick] [--nokernels] [--nolowering] [--json=out.json]``

Checks, on JAX's default device, that every spec x rounding of fake_quant / quantize /
dequantize gives the same bits as the CPU, that every Pallas kernel matches its XLA path, and that
every case lowers for CUDA and TPU without a float convert round trip. Prints one line per case
and a summary; exits with status 1 on any mismatch or failure.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from bitscale._logs import quiet_library_logs

_QUICK = flags.DEFINE_bool("quick", False, "A small subset (what the test suite runs).")
_KERNELS = flags.DEFINE_bool("kernels", True, "Check the Pallas kernels against XLA.")
_LOWERING = flags.DEFINE_bool("lowering", True, "Export every case for CUDA and TPU.")
_SPECS = flags.DEFINE_list("specs", None, "Only these specs (default: all, or the quick set).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    from bitscale.selfcheck import run  # after flag parsing: importing JAX backends is slow

    report = run(_QUICK.value, kernels=_KERNELS.value, lowering=_LOWERING.value,
                 specs=_SPECS.value)
    if _JSON.value:
        pathlib.Path(_JSON.value).write_text(report.to_json())
    sys.stdout.flush()
    if not report.passed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
