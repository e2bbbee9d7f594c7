#!/usr/bin/env bash
# Train the three shipped models side by side on one GPU, then run the GPU benchmarks.
#
# The number of epochs is the one thing this script chooses: it times 20 training steps of
# every model (all three at once, as they will run, after 20 steps of warm-up), then takes as many epochs as fit in
# BUDGET seconds for the slowest, capped at MAX_EPOCHS. Every model gets the same epochs
# and the same recipe; the command each ran is in runs-gpu/M/args.json.
#
# Usage: scripts/gpu_build.sh            (on a machine with a GPU; a CPU works, slowly)
# Known problem: DRNet training was far too slow on an H100 (docs/BENCHMARKS.md "GPU path"); the
# script first times DRNet training steps with and without cuDNN and trains it with the faster.
# Env:   BUDGET (s, default 330), MAX_EPOCHS (30), DATA_ROOT (Fashion-MNIST idx folder),
#        LIMIT (train on the first N images; smoke runs only), OUT (where results go),
#        SKIP_BENCH=1 (stop after training; otherwise the new models replace assets/models/).
# Leaves: $OUT/models.tar (runs-gpu/M/{model/,log.csv,args.json}), $OUT/bench-gpu.json, $OUT/log.txt,
#         $OUT/train--{cudnn,no-cudnn}.json and $OUT/breakdown-train.txt (the diagnosis)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-runs-gpu/out}
BUDGET=${BUDGET:-330}
MAX_EPOCHS=${MAX_EPOCHS:-30}
DATA=(--data fashion-mnist ${DATA_ROOT:+--data-root "$DATA_ROOT"})
LIMIT_ARGS=(${LIMIT:+--limit "$LIMIT"})
PROBE_IMAGES=${PROBE_IMAGES:-5120}
RUNS=runs-gpu
MODELS=(drnet dense mobilenetv2)
# The shipped architectures and recipe (docs/MODELS.md; lambda and the difficulty spread act on the
# DRNet only); a GPU affords batch 256 and more epochs.
declare -A CONFIG=([drnet]='{"channels":12,"num_nodes":2,"router_input":"stem","router_grid":2,"router_relu":true}'
                   [dense]='{"channels":12,"num_nodes":2}' [mobilenetv2]='{}')
RECIPE=(--batch-size 256 --lr 3e-3 --cost-weight 0.05 --difficulty-spread 0.8 --tau-start 1.0 --tau-end 0.3 --threshold 0.1 --seed 0)
mkdir -p "$OUT" "$RUNS"
exec > >(tee -a "$OUT/log.txt") 2>&1
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1

echo "== machine"; date -u; nvidia-smi -L 2>/dev/null
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

train() {  # train MODEL EPOCHS OUTDIR [extra args]; a run past 1.25 x BUDGET is stopped (its last epoch stays)
  local m=$1 epochs=$2 dir=$3; shift 3
  timeout $((BUDGET * 5 / 4)) $PY -m drnets train --model "$m" --model-config "${CONFIG[$m]}" --epochs "$epochs" "${RECIPE[@]}" \
      "${DATA[@]}" --out "$dir" --no-progress "$@" > "$dir.out" 2>&1
  echo "   $m ($epochs epochs) exit $?: $(tail -n 1 "$dir.out" | cut -c1-300)"
}

echo "== one diagnosis first: DRNet training steps with and without cuDNN (docs/BENCHMARKS.md \"GPU path\")"
for flag in --cudnn --no-cudnn; do
  timeout 90 $PY -m bench.train_throughput --batch 256 --warmup 1 --repeats 2 $flag --json > "$OUT/train$flag.json"
  echo "   train_throughput $flag exit $?: $($PY -c 'import json, sys; r = json.load(open(sys.argv[1]))["rows"]; print({x["model"]: round(x["ms_per_step"]) for x in r}, "ms/step")' "$OUT/train$flag.json" 2>&1 | tail -n 1)"
done

# Where a DRNet training step spends its time (cuDNN plan building shows up as CPU time in the
# convolution ops); the full table stays in $OUT, its top lines go to the log.
timeout 120 $PY -m bench.breakdown --train --batches 256 --rows 12 > "$OUT/breakdown-train.txt" 2>&1
echo "   breakdown --train exit $?:"; grep -A 16 -- "-- drnet" "$OUT/breakdown-train.txt" | cut -c1-150

# The DRNet trains with whichever setting gave it the shorter step (cuDNN unless --no-cudnn won);
# the baselines keep cuDNN, whose plans they build once for their one batch shape.
DRNET_CUDNN=$($PY - "$OUT" <<'EOF'
import json, sys
def drnet_ms(flag):
    try:
        rows = json.load(open(f"{sys.argv[1]}/train{flag}.json"))["rows"]
        return next(r["ms_per_step"] for r in rows if r["model"] == "drnet")
    except (OSError, ValueError, KeyError, StopIteration):
        return float("inf")
print("--no-cudnn" if drnet_ms("--no-cudnn") < drnet_ms("--cudnn") else "--cudnn")
EOF
)
declare -A EXEC=([drnet]=$DRNET_CUDNN [dense]=--cudnn [mobilenetv2]=--cudnn)
echo "   the DRNet trains with $DRNET_CUDNN"

echo "== probe: 2 epochs of $PROBE_IMAGES images per model, all at once (the 2nd is timed: no warm-up in it)"
pids=()  # waited for by pid: a bare `wait` would also wait for the log's tee
for m in "${MODELS[@]}"; do train "$m" 2 "$RUNS/probe-$m" --limit "$PROBE_IMAGES" "${EXEC[$m]}" & pids+=($!); done
wait "${pids[@]}"
per_epoch=$($PY - "$RUNS" "$PROBE_IMAGES" "${MODELS[@]}" <<'EOF'
import csv, sys
runs, probe, models = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
times = []
for m in models:
    try:
        rows = list(csv.DictReader(open(f"{runs}/probe-{m}/log.csv")))
        times.append(float(rows[-1]["seconds"]) * 60000 / probe)
        print(f"   {m}: {times[-1]:.1f} s per 60k-image epoch", file=sys.stderr)
    except (OSError, KeyError, IndexError) as err:
        print(f"   {m}: probe failed ({err})", file=sys.stderr)
print(max(times) if times else 0)
EOF
)
EPOCHS=$($PY -c "import sys; t=float(sys.argv[1]); print(max(1, min(int(sys.argv[3]), int(float(sys.argv[2]) / (1.1 * t)))) if t > 0 else 1)" "$per_epoch" "$BUDGET" "$MAX_EPOCHS")
echo "   slowest epoch ~${per_epoch} s -> $EPOCHS epochs within ${BUDGET} s"

echo "== train: $EPOCHS epochs each, all at once"
pids=()
for m in "${MODELS[@]}"; do train "$m" "$EPOCHS" "$RUNS/$m" "${LIMIT_ARGS[@]}" "${EXEC[$m]}" & pids+=($!); done
wait "${pids[@]}"
tar -cf "$OUT/models.tar" "$RUNS"/{drnet,dense,mobilenetv2}/{model,log.csv,args.json} "$RUNS"/*.out 2>/dev/null
echo "   wrote $OUT/models.tar"

[ "${SKIP_BENCH:-0}" = 1 ] && exit 0
echo "== the CUDA tests"
timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_model.py -k cuda 2>&1 | tail -n 3
echo "== benchmarks with the new models (copied over assets/models/ of this checkout)"
for m in "${MODELS[@]}"; do [ -f "$RUNS/$m/model/model.safetensors" ] && cp "$RUNS/$m/model/"* "assets/models/$m/"; done
timeout "${BENCH_TIMEOUT:-150}" $PY -m bench --json ${BENCH_ARGS:-} > "$OUT/bench-gpu.json"
echo "   bench exit $?"
date -u
