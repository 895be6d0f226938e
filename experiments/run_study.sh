#!/bin/bash
# The evidence study of experiments/README.md §1, in rounds of decreasing priority; resumable (finished
# cells are skipped), so stop it any time and run it again. Results: experiments/results/study/*/*/seed*.json;
# tables: python experiments/study.py report.
#   WORKERS=2 bash experiments/run_study.sh          # the core grid: 4 benchmarks × {CE, CEOD} × 5 seeds
#                                                     # (ceod = loss=ceod: 17×17 AOI dilation; ceod_k9 = the 9×9 of the first study),
#                                                     # RRR / energy / background randomisation × 2 decoys × 3 seeds
#   EXTRA=1 WORKERS=2 bash experiments/run_study.sh  # + the ablation and the papers' setting (3 seeds)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W="--workers ${WORKERS:-2} --threads 1"
ALL="synthetic_decoy synthetic_control digits_decoy digits_control"
DECOYS="synthetic_decoy digits_decoy"
$PY experiments/study.py run $W --seeds 0 1 2 --benchmarks $ALL --methods ce ceod
$PY experiments/study.py run $W --seeds 0 1 2 --benchmarks $DECOYS --methods rrr energy bg_random
$PY experiments/study.py run $W --seeds 3 4 --benchmarks $ALL --methods ce ceod
if [ "${EXTRA:-0}" = 1 ]; then  # not yet run in full: ablation and papers' setting with 3 seeds, baselines on controls
  $PY experiments/study.py run $W --seeds 0 1 2 --benchmarks $ALL --methods ceod_nodilation
  $PY experiments/study.py run $W --seeds 0 1 2 3 4 --benchmarks $ALL --methods ceod_k9
  $PY experiments/study.py run $W --seeds 0 1 2 --benchmarks $DECOYS --methods ceod_paper
  $PY experiments/study.py run $W --seeds 0 1 2 --benchmarks synthetic_control digits_control --methods rrr energy bg_random
fi
$PY experiments/study.py report
