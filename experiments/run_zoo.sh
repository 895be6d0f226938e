#!/bin/bash
# The decoy-zoo study of experiments/README.md §1c (issue 16); resumable: finished cells are skipped, so stop it
# any time and run it again. Results: experiments/results/study_zoo/*/*/seed*.json; tables:
# python experiments/zoo_report.py. Sized for 2 CPU cores: every candidate on seed 0, then CE, CEOD and the
# recommended setting ($REC) on seeds 1 and 2, then model selection and a baseline.
#   WORKERS=2 bash experiments/run_zoo.sh            # all rounds
#   ROUNDS=seeds REC=swap WORKERS=2 bash experiments/run_zoo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-experiments/results/study_zoo}
REC=${REC:-ceod_swap}
W="--workers ${WORKERS:-2} --threads 1 --out $OUT ${DATA_DIR:+--data-dir $DATA_DIR}"
DECOYS="digits_decoy synthetic_decoy digits_ring_decoy digits_bar_decoy digits_stripes_decoy digits_beside_decoy"
DECOYS="$DECOYS digits_shade_decoy synthetic_stripes_decoy synthetic_beside_decoy synthetic_shade_decoy"
CONTROLS="digits_control synthetic_control digits_shade_control synthetic_beside_control"
for round in ${ROUNDS:-screen seeds extra}; do
  case $round in
    screen)  # every candidate, seed 0
      $PY experiments/study.py run $W --seeds 0 --benchmarks $DECOYS --methods ce ceod swap ceod_swap
      $PY experiments/study.py run $W --seeds 0 --benchmarks $CONTROLS --methods ce swap ceod_swap ;;
    seeds)   # CE, CEOD and the recommended setting, seeds 1 and 2
      for seed in 1 2; do
        $PY experiments/study.py run $W --seeds $seed --benchmarks $DECOYS --methods ce ceod $REC
        $PY experiments/study.py run $W --seeds $seed --benchmarks $CONTROLS --methods ce $REC
      done ;;
    extra)   # model selection by validation reliance; background randomisation on the zoo
      $PY experiments/study.py run $W --seeds 0 1 2 --benchmarks digits_beside_decoy synthetic_beside_decoy --methods ce_sel ceod_sel
      $PY experiments/study.py run $W --seeds 0 --benchmarks $DECOYS --methods bg_random ;;
  esac
done
