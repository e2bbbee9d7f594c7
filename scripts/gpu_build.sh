#!/usr/bin/env bash
# One lent-GPU session's work, in one device call that ends by DEADLINE seconds:
#
#   1. time training steps of the three models at batch 256 and profile the DRNet's, run the CUDA tests;
#   2. train the three shipped models side by side for as many epochs as fit (skipped when the DRNet
#      step is too slow). `drnets train` leaves cuDNN off for the routed DRNet only, which the first
#      H100 session found spending seconds per step building cuDNN plans (docs/BENCHMARKS.md "GPU path");
#   3. benchmark on the GPU: inference (latency, masked, app path, threshold sweep) and training
#      throughput, with the new models when step 2 ran (copied over assets/models/ of this checkout).
#
# The number of epochs is the one thing training chooses: a probe times every model (all three at
# once, as they will run), then as many epochs as fit in the time left for the slowest, capped at
# MAX_EPOCHS. Every model gets the same epochs and recipe; each run's command is in runs-gpu/M/args.json.
#
# Env:   DEADLINE (s, default 530), MAX_EPOCHS (30), DATA_ROOT (Fashion-MNIST idx folder), LIMIT (train
#        on the first N images; smoke runs only), OUT (where results go), DIAG_TIMEOUT (s, 60),
#        MAX_STEP_MS (slowest DRNet step worth training, 1500), PY.
# Lent machines here lack captum and the data: keep them in git-ignored folders of the checkout
# (`pip download captum==0.9.0 --no-deps -d .whl`, `cp -r /usr/share/datasets/fashion-mnist .devdata/`),
# carry both, and run: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site; mkdir -p /usr/share/datasets && cp -r .devdata/fashion-mnist /usr/share/datasets/ &&
#   OUT=$OUT scripts/gpu_build.sh
# Leaves: $OUT/log.txt, $OUT/train-steps.json and $OUT/breakdown-train.txt (step 1), $OUT/models.tar
#         (runs-gpu/M/{model/,log.csv,args.json}), $OUT/bench-gpu.json, $OUT/train-gpu.json
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-runs-gpu/out}
DEADLINE=${DEADLINE:-530}
MAX_EPOCHS=${MAX_EPOCHS:-30}
DATA=(--data fashion-mnist ${DATA_ROOT:+--data-root "$DATA_ROOT"})
LIMIT_ARGS=(${LIMIT:+--limit "$LIMIT"})
PROBE_IMAGES=${PROBE_IMAGES:-5120}
BENCH_RESERVE=${BENCH_RESERVE:-150}  # seconds kept for step 3
RUNS=runs-gpu
MODELS=(drnet dense mobilenetv2)
# The retrain recipe (docs/MODELS.md, "Routing that routes"): a DRNet with cell-reading routers,
# independent sigmoid gates and a budget chosen at inference, trained with the sandwich rule; photo
# augmentation for all three. The routing flags act on the DRNet only; a GPU affords batch 256.
declare -A CONFIG=([drnet]='{"channels":12,"num_nodes":3,"router_input":"cell","gate":"sigmoid","open_bias":2.0,"budgeted":true,"budget":0.15,"threshold":0.5}'
                   [dense]='{"channels":12,"num_nodes":3}' [mobilenetv2]='{}')
RECIPE=(--batch-size 256 --lr 3e-3 --augment photo --cost-weight 5 --difficulty-spread 0.5 --cost-warmup 0.3
        --budget-min 0.03 --budget-max 0.6 --tau-start 1.0 --tau-end 1.0 --threshold 0.5 --seed 0)
mkdir -p "$OUT" "$RUNS"
exec > >(tee -a "$OUT/log.txt") 2>&1
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1

echo "== machine"; date -u; nvidia-smi -L 2>/dev/null
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "cudnn", torch.backends.cudnn.version())'

echo "== 1. training steps at batch 256 (cuDNN off for the DRNet only: drnets.device.cudnn_suits_training)"
timeout "${DIAG_TIMEOUT:-60}" $PY -m bench.train_throughput --batch 256 --layout nchw --warmup 2 --repeats 5 --json > "$OUT/train-steps.json"
echo "   exit $?: $($PY -c 'import json, sys; print({r["model"]: round(r["ms_per_step"]) for r in json.load(open(sys.argv[1]))["rows"]}, "ms/step")' "$OUT/train-steps.json" 2>&1 | tail -n 1)"
STEP_MS=$($PY -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["rows"][0]["ms_per_step"]))' "$OUT/train-steps.json" 2>/dev/null || echo 1000000000)
timeout 50 $PY -m bench.breakdown --train --batches 256 --layout nchw --rows 12 > "$OUT/breakdown-train.txt" 2>&1
echo "   breakdown --train exit $?:"; grep -A 16 -- "-- drnet" "$OUT/breakdown-train.txt" | cut -c1-150
echo "== the CUDA tests"
timeout 45 $PY -m pytest -q -p no:cacheprovider tests/test_model.py -k cuda 2>&1 | tail -n 3

train() {  # train MODEL EPOCHS OUTDIR SECONDS [extra args]; stopped after SECONDS (its last finished epoch stays)
  local m=$1 epochs=$2 dir=$3 seconds=$4; shift 4
  timeout "$seconds" $PY -m drnets train --model "$m" --model-config "${CONFIG[$m]}" --epochs "$epochs" "${RECIPE[@]}" \
      "${DATA[@]}" --out "$dir" --no-progress "$@" > "$dir.out" 2>&1
  echo "   $m ($epochs epochs) exit $?: $(tail -n 1 "$dir.out" | cut -c1-300)"
}

TRAINED=0
if [ "$STEP_MS" -gt "${MAX_STEP_MS:-1500}" ]; then
  echo "== 2. no training: a DRNet step takes ${STEP_MS} ms"
else
  echo "== 2. probe: 2 epochs of $PROBE_IMAGES images per model, all at once (the 2nd is timed: no warm-up in it)"
  pids=()  # waited for by pid: a bare `wait` would also wait for the log's tee
  for m in "${MODELS[@]}"; do train "$m" 2 "$RUNS/probe-$m" 120 --limit "$PROBE_IMAGES" & pids+=($!); done
  wait "${pids[@]}"
  BUDGET=$((DEADLINE - SECONDS - BENCH_RESERVE))
  EPOCHS=$($PY - "$RUNS" "$PROBE_IMAGES" "${LIMIT:-60000}" "$BUDGET" "$MAX_EPOCHS" "${MODELS[@]}" <<'EOF'
import csv, sys
runs, probe, images, budget, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
models = sys.argv[6:]
times = []
for m in models:
    try:
        rows = list(csv.DictReader(open(f"{runs}/probe-{m}/log.csv")))
        times.append(float(rows[-1]["seconds"]) * images / probe)
        print(f"   {m}: {times[-1]:.1f} s per {images}-image epoch", file=sys.stderr)
    except (OSError, KeyError, IndexError) as err:
        print(f"   {m}: probe failed ({err})", file=sys.stderr)
        times.append(float("inf"))
# 15 s per run for start-up and data loading, 10% slack per epoch
print(min(cap, int((budget - 15) / (1.1 * max(times)))) if times and max(times) < float("inf") else 0)
EOF
)
  echo "   ${BUDGET} s left for training -> $EPOCHS epochs"
  if [ "$EPOCHS" -ge 1 ]; then
    echo "== 2. train: $EPOCHS epochs each, all at once"
    pids=()
    for m in "${MODELS[@]}"; do train "$m" "$EPOCHS" "$RUNS/$m" "$BUDGET" "${LIMIT_ARGS[@]}" & pids+=($!); done
    wait "${pids[@]}"
    tar -cf "$OUT/models.tar" "$RUNS"/{drnet,dense,mobilenetv2}/{model,log.csv,args.json} "$RUNS"/*.out 2>/dev/null
    echo "   wrote $OUT/models.tar"
    TRAINED=1
    for m in "${MODELS[@]}"; do
      epochs_done=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["training"]["epochs_done"])' "$RUNS/$m/model/config.json" 2>/dev/null)
      [ "$epochs_done" = "$EPOCHS" ] || TRAINED=0
    done
  fi
fi

if [ "$TRAINED" = 1 ]; then
  echo "== 3. GPU benchmarks of the new models"
  for m in "${MODELS[@]}"; do cp "$RUNS/$m/model/"* "assets/models/$m/"; done
else
  echo "== 3. GPU benchmarks of the shipped models (training did not finish for all three)"
fi
left() { local s=$((DEADLINE - SECONDS - $1)); echo $((s > 20 ? s : 20)); }  # seconds for a step, at least 20
timeout "$(left 40)" $PY -m bench --json --only latency,masked,app,sweep > "$OUT/bench-gpu.json"
echo "   bench exit $?"
timeout "$(left 0)" $PY -m bench.train_throughput --batch 256 --layout nchw --json > "$OUT/train-gpu.json"
echo "   train_throughput exit $?"
date -u
