#!/usr/bin/env bash
# The recorded precision scaling-law sweep (docs/laws.md): the Kumar et al. integer-QAT sweep and
# the Sun et al. ExMy / block-size sweep, 27 runs of 400 steps (Kumar: one depth, three widths), then the fits and the report.
#   experiments/laws_sweep.sh [extra flags, e.g. --fresh]
# Refit / re-render without training:
#   .venv/bin/python -m bitscale.studies.laws_sweep --from_runs=runs/laws/runs.jsonl --out=runs/laws
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
time "$PY" -m bitscale.studies.laws_sweep \
  --out=runs/laws \
  --sweep=kumar,sun \
  --kumar_sizes=32x2,64x2,96x2 \
  --sun_sizes=64x1,64x2 \
  --eval_steps=100,200,300,400 \
  --eval_problems=256 \
  --seed=0 \
  "$@"
