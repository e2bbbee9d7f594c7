#!/usr/bin/env bash
# A lent GPU's work, in one device call that ends by DEADLINE seconds: more epochs of
# photos and outliers for the shipped models (docs/MODELS.md, "Trained on a GPU"), then GPU
# inference benchmarks of the shipped models.
#
# Each model trains as a chain of one-epoch runs, each starting from the last one that finished
# (the first from assets/models/), so whatever the machine's speed, every finished run has had its
# whole one-cycle schedule; a run that cannot finish before the deadline is not started. Run N has
# seed N: each run its own sample order and augmentations. The DRNet
# trains two ways at once: `--execution masked` (fixed shapes, so cuDNN) and sparse without cuDNN
# (drnets.device.cudnn_suits_training), which no GPU has timed on the current code; the dense
# supernet with and without MobileNetV2 as teacher. Each run's command is in runs-gpu/CHAIN-N/args.json.
#
# Env:   DEADLINE (s, default 560), BENCH_RESERVE (s kept for the benchmarks, 75), POOLS (folder of the
#        photo pools and outliers, default runs), OUT (where results go), LIMIT (train on the first N
#        images; smoke runs only), PY.
# Lent machines here lack captum, the data and the pools: keep them in git-ignored folders of the
# checkout and carry them (`pip download captum==0.9.0 --no-deps -d .whl`,
# `cp -r /usr/share/datasets/fashion-mnist .devdata/`, and each pool folder's labels.csv or
# kinds.csv with its prepared-*.npz in .devpools/), then run:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
#   mkdir -p /usr/share/datasets && cp -r .devdata/fashion-mnist /usr/share/datasets/ &&
#   POOLS=.devpools REKEY=1 OUT=$OUT scripts/gpu_build.sh
# REKEY=1 stamps the carried caches with this machine's preparation digest: it hashes the upload
# code's syntax tree, whose dump differs between Python versions (3.11 here, 3.12 there) for the same
# code; carry caches prepared by this checkout only.
# Leaves: $OUT/log.txt, $OUT/models-{drnet,dense,mobilenetv2}.tar (every chain's last finished run:
#         model/, log.csv, args.json; every run's output), $OUT/bench-gpu.json
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-runs-gpu/out}
DEADLINE=${DEADLINE:-560}
TRAIN_END=$((DEADLINE - ${BENCH_RESERVE:-75}))
POOLS=${POOLS:-runs}
RUNS=runs-gpu
mkdir -p "$OUT" "$RUNS"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1

# The recipe of stages 4 and 5 in scripts/build_models.sh, with a third photo pool and photos at
# 0.4 of the set; batch 256 on the GPU.
ROUTED='{"channels":12,"num_nodes":2,"router_input":"cell","router_grid":2,"router_relu":true,"gate":"sigmoid","open_bias":2.0,"budgeted":true,"budget":0.15,"threshold":0.5}'
BUDGETED=(--cost-weight 5 --difficulty-spread 0.5 --cost-warmup 0.1 --budget-min 0.03 --budget-max 0.6 --no-sandwich
          --tau-start 1 --tau-end 1 --threshold 0.5)
PHOTOS=(--photo-pool "$POOLS/photo-pool-1" --photo-pool "$POOLS/photo-pool-2" --photo-pool "$POOLS/photo-pool-3"
        --photo-share 0.4 --augment photo --outlier-pool "$POOLS/outliers-1" --outlier-pool "$POOLS/outliers-2"
        --outlier-share 0.1 --outlier-weight 0.5 --epochs 1 --lr 1e-3 --no-progress
        --data fashion-mnist ${LIMIT:+--limit "$LIMIT"})
TEACHER=(--teacher assets/models/mobilenetv2)

echo "== machine"; date -u; nvidia-smi -L 2>/dev/null; nproc
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

chain() {  # chain NAME MODEL [train args]: one-epoch runs from assets/models/MODEL until TRAIN_END
  local name=$1 model=$2 from="assets/models/$2" n=1 took=0; shift 2
  while :; do
    local left=$((TRAIN_END - SECONDS)) dir="$RUNS/$name-$n" started=$SECONDS
    if [ "$left" -lt $((took * 11 / 10)) ] || [ "$left" -lt 20 ]; then
      echo "   $name: stops after $((n - 1)) runs ($left s left, the last took $took s)"; return
    fi
    timeout "$left" $PY -m drnets train --model "$model" --init-from "$from" "$@" --seed "$n" --out "$dir" > "$dir.out" 2>&1
    local rc=$?
    took=$((SECONDS - started))
    echo "   $name-$n exit $rc after $took s: $(tail -n 1 "$dir.out" | cut -c1-200)"
    [ "$rc" = 0 ] || return
    echo "$dir" > "$RUNS/$name.last"  # the chain's last finished run, for the tar below
    from="$dir/model" n=$((n + 1))
  done
}

if [ "${REKEY:-0}" = 1 ]; then
  $PY - "$POOLS"/*/prepared-*.npz <<'EOF'
import sys
import numpy as np
from drnets.photo_pool import preparation_digest
for path in sys.argv[1:]:
    stored = dict(np.load(path))
    np.savez(path, **{**stored, "preparation": np.asarray(preparation_digest())})
    print("   re-keyed", path)
EOF
fi

echo "== the CUDA tests (beside the training)"
(timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_model.py -k cuda 2>&1 | tail -n 3 | sed 's/^/   cuda tests: /') &
echo "== training until $TRAIN_END s (now $SECONDS s)"
pids=()
OMP_NUM_THREADS=2 chain drnet-masked drnet --model-config "$ROUTED" "${TEACHER[@]}" "${PHOTOS[@]}" "${BUDGETED[@]}" \
  --batch-size 256 --execution masked & pids+=($!)
OMP_NUM_THREADS=2 chain drnet drnet --model-config "$ROUTED" "${TEACHER[@]}" "${PHOTOS[@]}" "${BUDGETED[@]}" \
  --batch-size 256 & pids+=($!)
OMP_NUM_THREADS=2 chain dense dense --model-config '{"channels":12,"num_nodes":2}' "${PHOTOS[@]}" --batch-size 256 & pids+=($!)
OMP_NUM_THREADS=2 chain dense-kd dense --model-config '{"channels":12,"num_nodes":2}' "${TEACHER[@]}" "${PHOTOS[@]}" \
  --batch-size 256 & pids+=($!)
OMP_NUM_THREADS=2 chain mobilenetv2 mobilenetv2 --model-config '{}' "${PHOTOS[@]}" --batch-size 256 & pids+=($!)
wait "${pids[@]}"

for model in drnet dense mobilenetv2; do  # each chain's last finished run, and every run's output
  finished=()
  for last in $(cat "$RUNS/$model"*.last 2>/dev/null); do finished+=("$last/model" "$last/log.csv" "$last/args.json"); done
  tar -cf "$OUT/models-$model.tar" "${finished[@]}" "$RUNS/$model"*.out 2>/dev/null
  echo "   models-$model.tar: ${finished[*]:-nothing finished}"
done

echo "== GPU benchmarks of the shipped models (now $SECONDS s)"
timeout $((DEADLINE - SECONDS > 20 ? DEADLINE - SECONDS : 20)) $PY -m bench --json --only latency,app > "$OUT/bench-gpu.json"
echo "   bench exit $?"
date -u
