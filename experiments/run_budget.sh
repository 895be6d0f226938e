#!/bin/bash
# The annotation-budget study of experiments/README.md §7 (issue 18); resumable: finished cells are skipped, so
# stop it any time and run it again. Results: experiments/results/study_budget/<benchmark>/<method>/seed*.json;
# covered-mask IoUs: data/budget/*/budget.json (copied to experiments/results/study_budget/masks/); tables and
# plot: python experiments/budget_report.py. The drawn masks are the ones data.mask_fraction=F data.mask_seed=0
# keeps, the same for every training seed, so the ways are paired on the same drawn images.
# Full annotation, CE and the controls are the decoy-zoo runs (experiments/results/study_zoo, same protocol and
# data; round "check" re-runs one of them here to show the numbers are the same at this commit).
#   WORKERS=2 bash experiments/run_budget.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-experiments/results/study_budget}
DATA=${DATA_DIR:-data/zoo}
BUDGET=${BUDGET_DIR:-data/budget}
W="--workers ${WORKERS:-2} --threads 1 --out $OUT --data-dir $DATA --seeds 0 1 2"
BENCH="digits_decoy synthetic_decoy"
S="loss=ceod_swap,data.mask_seed=0"
export OMP_NUM_THREADS=1
partial() { local loss=$1 tag=$2; shift 2; for f in "$@"; do echo "${tag}_mf$f:loss=$loss,data.mask_seed=0,data.mask_fraction=$f"; done; }
prepare() {  # way bench fractions...
  local way=$1 b=$2; shift 2
  for f in "$@"; do $PY experiments/budget_masks.py --bench $b --fraction $f --way $way --data-dir $DATA --out $BUDGET; done
  mkdir -p $OUT/masks
  for d in $BUDGET/${b}_${way}_*; do cp $d/budget.json $OUT/masks/$(basename $d).json; done
}
covered() { local way=$1 b=$2; shift 2; for f in "$@"; do echo "cs_${way}$f:$S,data.root=$PWD/$BUDGET/${b}_${way}_f${f}_m0"; done; }
for round in ${ROUNDS:-check partial fit imperfect ceod shared baselines baselines2}; do
  case $round in
    check)   $PY experiments/study.py run $W --seeds 0 --benchmarks $BENCH --methods "cs_mf1:$S,data.mask_fraction=1.0" ;;
    partial) $PY experiments/study.py run $W --benchmarks $BENCH --methods $(partial ceod_swap cs 0.01 0.02 0.05 0.1 0.25 0.5) ;;
    fit)
      for b in $BENCH; do prepare fit $b 0.01 0.02 0.05 0.1; done
      for b in $BENCH; do $PY experiments/study.py run $W --benchmarks $b --methods $(covered fit $b 0.01 0.02 0.05 0.1); done ;;
    imperfect)
      $PY experiments/study.py run $W --benchmarks $BENCH --methods "cs_dilate3:$S,data.mask_noise=dilate:3" \
        "cs_erode2:$S,data.mask_noise=erode:2" "cs_shift4:$S,data.mask_noise=shift:4"
      $PY experiments/study.py run $W --benchmarks synthetic_decoy --methods "cs_box:$S,data.mask_noise=box" ;;
    ceod)    $PY experiments/study.py run $W --benchmarks $BENCH --methods $(partial ceod ceod 0.02 0.1 0.5) ;;
    shared)
      prepare shared synthetic_decoy 0.01 0.1
      $PY experiments/study.py run $W --benchmarks synthetic_decoy --methods $(covered shared synthetic_decoy 0.01 0.1) ;;
    baselines)
      for l in bg_random energy rrr; do
        $PY experiments/study.py run $W --benchmarks $BENCH --methods "${l}_mf1:loss=$l" $(partial $l $l 0.1)
      done ;;
    baselines2)  # the cheaper baselines at more budgets
      $PY experiments/study.py run $W --benchmarks $BENCH --methods $(partial energy energy 0.02 0.5) $(partial bg_random bg_random 0.02 0.5) ;;
  esac
done
