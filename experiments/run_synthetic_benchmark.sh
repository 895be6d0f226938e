#!/bin/bash
# The pilot tables of experiments/README.md §5 (the papers' CEOD is loss=ceod_paper since the study): custom CNN, 20 epochs, CPU, 3 training seeds
# per row (dataset seed 0). Results also land in experiments/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
S="--seeds 0 1 2 --set trainer.max_epochs=20"
TUNED="ceod_paper:omega=0.1,filter_normalize=sum,tau=0"
mkdir -p experiments/results
$PY experiments/compare_losses.py --data synthetic_zipper_decoy_control --losses ce $S --json experiments/results/decoy_control_ce.json
$PY experiments/compare_losses.py --data synthetic_zipper_decoy --losses ce $S --json experiments/results/decoy_ce.json
$PY experiments/compare_losses.py --data synthetic_zipper --losses ce $S --json experiments/results/synthetic_zipper_ce.json
$PY experiments/compare_losses.py --data synthetic_zipper_decoy --losses ceod_paper "$TUNED" $S --json experiments/results/decoy_ceod.json
$PY experiments/compare_losses.py --data synthetic_zipper --losses ceod_paper $S --json experiments/results/synthetic_zipper_ceod.json
