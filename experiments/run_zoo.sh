#!/bin/bash
# The decoy-zoo study of experiments/README.md §8 (issue 16), in rounds (one seed per round over the whole zoo,
# so a cut-off study is still balanced); resumable: finished cells are skipped, so stop it any time and run it
# again. Results: experiments/results/study_zoo/*/*/seed*.json; tables: python experiments/zoo_report.py
#   WORKERS=2 bash experiments/run_zoo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-experiments/results/study_zoo}
W="--workers ${WORKERS:-2} --threads 1 --out $OUT ${DATA_DIR:+--data-dir $DATA_DIR}"
KINDS="ring bar stripes beside position shade"
DECOYS="digits_decoy synthetic_decoy $(for k in $KINDS; do echo -n "digits_${k}_decoy "; done)"
DECOYS="$DECOYS $(for k in bar stripes beside shade; do echo -n "synthetic_${k}_decoy "; done)"
CONTROLS="digits_control synthetic_control digits_beside_control digits_shade_control synthetic_beside_control synthetic_shade_control"
for seed in 0 1 2; do
  $PY experiments/study.py run $W --seeds $seed --benchmarks $DECOYS --methods ce ceod swap ceod_swap
  $PY experiments/study.py run $W --seeds $seed --benchmarks $CONTROLS --methods ce swap ceod_swap
done
$PY experiments/study.py run $W --seeds 0 1 2 --benchmarks digits_beside_decoy synthetic_beside_decoy --methods ce_sel ceod_sel ce_valbest
# baselines on the zoo, then CEOD on the zoo controls
$PY experiments/study.py run $W --seeds 0 1 2 --benchmarks $DECOYS --methods bg_random
$PY experiments/study.py run $W --seeds 0 1 2 --benchmarks $CONTROLS --methods ceod
$PY experiments/study.py run $W --seeds 0 --benchmarks $DECOYS --methods rrr energy swap_kl
