#!/bin/bash
# The synthetic benchmark table of experiments/README.md: 3 training seeds per row, 20 epochs, CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
S="--seeds 0 1 2 --set trainer.max_epochs=20"
TUNED="ceod:omega=0.1,filter_normalize=sum,tau=0"
$PY experiments/compare_losses.py --data synthetic_zipper --losses ce ceod "$TUNED" $S --json experiments/results/synthetic_zipper.json
$PY experiments/compare_losses.py --data synthetic_zipper_decoy_control --losses ce $S --json experiments/results/decoy_control.json
$PY experiments/compare_losses.py --data synthetic_zipper_decoy --losses ce ceod "$TUNED" $S --json experiments/results/decoy.json
