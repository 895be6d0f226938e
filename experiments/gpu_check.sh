#!/usr/bin/env bash
# GPU smoke + speed check (one script, ~6 min on one H100/H200): CEOD training in fp32 / fp16 / bf16
# mixed precision, DDP on NCCL (one process per GPU present), the CEOD step cost on the GPU and
# predict on the GPU. Logs to $OUT (default ./gpu_check_out). Results: experiments/README.md §2/§4.
#   bash experiments/gpu_check.sh
set -u
OUT=${OUT:-gpu_check_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
PY=${PY:-python3}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/summary.txt"
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/summary.txt"
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")

train() {  # name, overrides…
  local name=$1; shift
  local t0=$SECONDS
  timeout ${T:-150} $PY -m ceod.train +experiment=decoy_digits trainer.accelerator=${ACC:-gpu} ${EXTRA:-} hydra.run.dir="${RUNS:-$OUT/runs}/$name" \
      trainer.enable_progress_bar=false "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "$name rc=$rc $((SECONDS - t0)) s: $(grep -E 'test/(auroc|aoi_energy|acc)\b' "$OUT/$name.log" | tr -s ' ─│┃' | tr '\n' ' ')"
  [ $rc -eq 0 ] || tail -20 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
}
train ceod_fp32
train ceod_fp16 trainer.precision=16-mixed
train ceod_bf16 trainer.precision=bf16-mixed
train ce_fp32 loss=ce
train ceod_ddp_nccl_fp16 trainer=ddp trainer.devices=$NGPU trainer.num_nodes=1 trainer.precision=16-mixed
log "step cost (CEOD vs CE) on the GPU"
for amp in none fp16; do
  timeout 120 $PY experiments/bench_step.py --models custom_cnn efficientnet_b0 --batch 32 --reps 20 --warmup 5 --amp $amp \
      2>&1 | tee -a "$OUT/summary.txt" | grep -E "^(\||[a-z])"
done
log "predict on the GPU"
timeout 150 $PY experiments/bench_predict.py --device cuda --workers 4 --n 2048 --repeats 2 2>&1 | tail -6 | tee -a "$OUT/summary.txt"
