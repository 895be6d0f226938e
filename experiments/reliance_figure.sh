#!/bin/bash
# Heat maps beside reliance maps (experiments/README.md §1c): CE, CEOD and CEOD on counterfactual images trained
# on the decoy-digits "beside" benchmark (a small square a few px from the digit's box: inside the same CAM
# cell), then `python -m ceod.audit` on each model's test split. Writes
# experiments/results/reliance_maps/<method>.png and <method>.json (the audit summary).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=experiments/results/reliance_maps
mkdir -p "$OUT" outputs/reliance_figure
for m in ce ceod ceod_swap; do
  run="outputs/reliance_figure/$m"
  rm -rf "$run"
  $PY -m ceod.train +experiment=decoy_digits data.variant=decoy_digits_beside loss=$m logger=none \
      callbacks.figures=null trainer.enable_progress_bar=false hydra.run.dir="$run" > "$run.log" 2>&1 || { tail -5 "$run.log"; exit 1; }
  $PY -m ceod.audit ckpt="$run/checkpoints/last.ckpt" data.root=data/decoy_digits_beside_seed0 split=test top=6 \
      out="$run/audit"
  cp "$run/audit/most_reliant.png" "$OUT/$m.png"
  cp "$run/audit/summary.json" "$OUT/$m.json"
done
