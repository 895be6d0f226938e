#!/bin/bash
# Hydra multirun on SLURM through submitit: one 4-GPU job per sweep point; submitit owns requeue.
# Edit partition/account in conf/hydra/launcher/slurm.yaml or pass them here.
#   bash slurm/sweep.sh loss=ce,ceod loss.omega=0.001,0.1 model=custom_cnn,efficientnet_b0
set -euo pipefail
source .venv/bin/activate
python -m ceod.train -m hydra/launcher=slurm trainer=slurm "$@"
