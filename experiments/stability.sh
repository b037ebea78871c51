#!/usr/bin/env bash
# Training-stability grid (issue 17 item 4; Lee et al., "To FP8 and Back Again",
# arXiv:2405.18710): fp32 / bf16 / fp8 / mxfp4 and the E4M3 reduction family (mantissa-only
# E4M2, E4M1 vs exponent-only E3M3, E2M3) x 5 peak learning rates x 3 seeds, 100 steps each
# (configs/stability.py). Writes runs/stability/{report.md,results.json,final_loss.png};
# recorded in docs/stability.md. About 20 minutes on an idle 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m bitscale.studies.stability \
  --out=runs/stability \
  --policies=fp32,bf16,fp8,mxfp4,e4m3,e4m2,e4m1,e3m3,e2m3 \
  --lrs=0.03,0.1,0.2,0.3,0.5 \
  --seeds=0,1,2 \
  --config=configs/stability.py \
  "$@"
