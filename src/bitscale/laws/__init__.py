"""bitscale.laws: fitting precision scaling laws to a table of training runs.

- ``Run``, ``load_runs`` / ``save_runs`` (JSONL): the run table (N, D, loss, precision);
- ``KumarLaw``: ``L = A N_eff^-alpha + B D^-beta + E`` with
  ``N_eff = N prod_i (1 - exp(-P_i / gamma_i))`` over weights / activations / KV cache bits,
  and ``ptq_degradation`` (their post-training-quantization term);
- ``SunLaw``: ``L = n/N^alpha + d/D^beta + eps + D^beta/N^alpha log2(B) / (gamma (E+.5)^delta
  (M+.5)^nu)`` for FP formats ExMy with block size B;
- ``Law.fit(runs)`` -> ``LawFit`` (parameters + residual diagnostics): Huber loss on log-loss
  residuals, multi-start L-BFGS (optax, vmapped over starts) in float64;
- ``held_out_error`` (fit on some runs, relative error on others) and ``plot_fit``.

References:
    Kumar et al., "Scaling Laws for Precision", arXiv:2411.04330;
    Sun et al., "Scaling Laws for Floating-Point Quantization Training", arXiv:2501.02423;
    Hoffmann et al., arXiv:2203.15556 (fitting practice).
"""

from bitscale.laws._fit import HeldOutError, LawFit, held_out_error
from bitscale.laws._kumar import KumarLaw, ptq_degradation
from bitscale.laws._plot import plot_fit
from bitscale.laws._runs import Run, load_runs, save_runs
from bitscale.laws._sun import SunLaw

__all__ = ["HeldOutError", "KumarLaw", "LawFit", "Run", "SunLaw", "held_out_error",
           "load_runs", "plot_fit", "ptq_degradation", "save_runs"]
