#!/usr/bin/env bash
# The GPU checks of issue #6 as one prepared run on a CUDA machine (written for a lent H200 with a
# ~9-minute window; nothing here is needed on CPU):
#   1. scripts/bench_gpu.py alone on the GPU: lstmkit vs a plain PyTorch loop, float32 and bf16-mixed;
#   2. with PTB_MEDIUM=1 only (measured on 2026-12-01: test perplexity 75.5): PTB at Zaremba et al.'s
#      medium size (2 x 650, dropout 0.5) under trainer=gpu (float32), with as many epochs (at most 39)
#      as the remaining budget fits, sized from step 1's measured step time;
#   3. every task's embedded default for 2 epochs under trainer=gpu, and sentiment under trainer=ddp on
#      every visible GPU (DEVICES; the DDP strategy and NCCL process group, multi-GPU when there are several).
#
#   scripts/gpu_checks.sh OUT_DIR DATA_ROOT [BUDGET_SECONDS]     # e.g. out ../shared/data 520
#
# A dry run of the script on CPU (tiny sizes): TRAINER=cpu DDP=ddp_cpu BENCH_ARGS="--device cpu --quick"
#   PTB_EXTRA="trainer.limit_train_batches=3 trainer.limit_val_batches=2 trainer.limit_test_batches=2"
#   SMOKE_EXTRA="trainer.limit_train_batches=3 trainer.limit_val_batches=2 trainer.limit_test_batches=2"
#
# The machine needs lstmkit's dependencies; where only torch, torchaudio and lightning are installed,
# carry wheels of hydra-core, omegaconf, antlr4-python3-runtime (and soundfile, cffi, pycparser for
# speech) and put src/ on PYTHONPATH.
# Writes to OUT_DIR: speed_gpu.json / .md, profile_gpu.txt (where lstmkit's step time goes, both sides), bench_gpu.log, ptb.log, ptb_metrics.csv, smoke.log, nvidia.txt.
set -u
OUT=${1:?OUT_DIR}; DATA=${2:?DATA_ROOT}; BUDGET=${3:-520}
PY=${PYTHON:-python3}
TRAINER=${TRAINER:-gpu}; DDP=${DDP:-ddp}; BENCH_ARGS=${BENCH_ARGS:-}; PTB_EXTRA=${PTB_EXTRA:-}; SMOKE_EXTRA=${SMOKE_EXTRA:-}
PTB_MEDIUM=${PTB_MEDIUM:-0}
DEVICES=${DEVICES:-$($PY -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)}  # what torch can see
[ "${DEVICES:-0}" -ge 1 ] 2>/dev/null || DEVICES=1
START=$(date +%s)
mkdir -p "$OUT"
rm -rf /tmp/gpu_logs /tmp/smoke_*.log   # nothing of an earlier run is reported as this one's
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia.txt" 2>&1
$PY -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), 'lightning', lightning.__version__, torch.cuda.is_available())" >> "$OUT/nvidia.txt" 2>&1

# 1. speed, GPU to itself
timeout 260 $PY scripts/bench_gpu.py --out "$OUT" --profile 50 $BENCH_ARGS > "$OUT/bench_gpu.log" 2>&1
echo "bench_gpu rc=$? after $(( $(date +%s) - START )) s" | tee -a "$OUT/bench_gpu.log"

# 2. PTB medium: epochs from the measured lstmkit float32 step (1,328 windows per epoch, +25 % for validation and the
# smoke runs beside it)
LEFT=$(( BUDGET - ($(date +%s) - START) - 75 ))   # 75 s: start-up, the test pass, copying back
LEFT=$(( LEFT < 60 ? 60 : LEFT ))
EPOCHS=$($PY - "$OUT/speed_gpu.json" "$LEFT" <<'EOF'
import json, sys
try:
    w = json.load(open(sys.argv[1]))["workloads"]
    step = next(v["lstmkit/32-true"]["step_ms"] for k, v in w.items() if "650" in k) / 1000
except Exception:
    step = 0.010  # no measurement: assume 10 ms
print(max(1, min(39, int(int(sys.argv[2]) / (1328 * step * 1.25)))))
EOF
)
echo "PTB medium: $EPOCHS epochs in at most $LEFT s" | tee "$OUT/ptb.log"
[ "$PTB_MEDIUM" = 1 ] || { echo "skipped (PTB_MEDIUM=1 runs it)" >> "$OUT/ptb.log"; EPOCHS=0; }
[ "$EPOCHS" = 0 ] || LSTMKIT_LOG_DIR=/tmp/gpu_logs timeout $(( LEFT + 60 )) $PY -m lstmkit train experiment=next_word_real trainer=$TRAINER trainer.precision=32-true \
  paths.data_root="$DATA" trainer.max_epochs="$EPOCHS" trainer.max_time="$(printf '00:00:%02d:%02d' $((LEFT / 60)) $((LEFT % 60)))" \
  trainer.enable_progress_bar=false encoder.dim=650 model.hidden_size=650 model.dropout=0.5 encoder.dropout=0.5 \
  callbacks.early_stopping.patience=100 task_name=ptb_medium_gpu $PTB_EXTRA >> "$OUT/ptb.log" 2>&1 &
PTB=$!

# 3. the embedded defaults on the GPU, beside it
for task in next_word sentiment speech stock ecg; do
  ( LSTMKIT_LOG_DIR=/tmp/gpu_logs timeout 240 $PY -m lstmkit train task=$task trainer=$TRAINER trainer.max_epochs=2 \
      trainer.enable_progress_bar=false $SMOKE_EXTRA > "/tmp/smoke_$task.log" 2>&1; echo "rc=$?" >> "/tmp/smoke_$task.log" ) &
done
( LSTMKIT_LOG_DIR=/tmp/gpu_logs timeout 240 $PY -m lstmkit train task=sentiment trainer=$DDP trainer.devices=$DEVICES \
    trainer.max_epochs=1 trainer.enable_progress_bar=false task_name=sentiment_ddp $SMOKE_EXTRA > /tmp/smoke_ddp.log 2>&1
  echo "rc=$?" >> /tmp/smoke_ddp.log ) &
for job in $(jobs -p); do [ "$job" = "$PTB" ] || wait "$job"; done
for f in /tmp/smoke_*.log; do echo "=== $f"; grep -v "Tip:" "$f" | tail -40; done > "$OUT/smoke.log"

wait $PTB; rc=$?; [ "$EPOCHS" = 0 ] || echo "ptb rc=$rc after $(( $(date +%s) - START )) s" >> "$OUT/ptb.log"
csv=$(ls -t /tmp/gpu_logs/ptb_medium_gpu/runs/*/csv/*/metrics.csv /tmp/gpu_logs/ptb_medium_gpu/runs/*/*/metrics.csv 2>/dev/null | head -1)
[ -n "$csv" ] && cp "$csv" "$OUT/ptb_metrics.csv"
echo "done after $(( $(date +%s) - START )) s"
