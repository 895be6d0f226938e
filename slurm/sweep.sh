#!/bin/bash
# Hydra multirun on SLURM through submitit: one 4-GPU job per sweep point; submitit owns requeue.
# Edit partition/account in conf/hydra/launcher/slurm.yaml or pass them here (hydra.launcher.partition=gpu).
#   bash slurm/sweep.sh +sweep=paper                                   # the papers' grid (60 jobs)
#   bash slurm/sweep.sh -m loss=ce,ceod loss.omega=0.001,0.1 model=custom_cnn,efficientnet_b0
#   bash slurm/sweep.sh +sweep=paper hydra.launcher.nodes=2            # 2 nodes x 4 GPUs per job
set -euo pipefail
source .venv/bin/activate
python -m ceod.train hydra/launcher=slurm trainer=slurm "$@"
