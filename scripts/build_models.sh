#!/usr/bin/env bash
# Rebuild the shipped models in assets/models/ from scratch: train (same recipe for all three),
# give the DRNet budget-conditioned sigmoid routers in a second stage, show the DRNet and
# MobileNetV2 prepared phone photos in a third, add generated non-garments for all three in a fourth,
# distil MobileNetV2's answers into the DRNet in a fifth, train all three longer on a GPU in a sixth
# (a third pool, photos at 0.4 of the set), evaluate on the full Fashion-MNIST test set,
# calibrate, and export the sample images.
# Usage: scripts/build_models.sh [EPOCHS] [ROUTER_EPOCHS]   (the shipped models: 2 and 3; docs/MODELS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EPOCHS=${1:-2}
ROUTER_EPOCHS=${2:-3}
declare -A CONFIG=([drnet-softmax]='{"channels":12,"num_nodes":2,"router_input":"stem","router_grid":2,"router_relu":true}'
                   [dense]='{"channels":12,"num_nodes":2}' [mobilenetv2]='{}')
# lambda only acts on the DRNet (the other two have no routers); the shipped baselines were
# trained with 0.2 on the command line, which changes nothing for them.
declare -A COST=([drnet-softmax]=0.05 [dense]=0.2 [mobilenetv2]=0.2)
# The DRNet's router is also asked to spend more on hard images than on easy ones (docs/MODELS.md).
declare -A EXTRA=([drnet-softmax]="--difficulty-spread 0.8" [dense]="" [mobilenetv2]="")
done_epochs() { grep -q "\"epochs_done\": $2" "runs/$1/model/config.json" 2>/dev/null; }
for m in drnet-softmax dense mobilenetv2; do
  done_epochs "$m" "$EPOCHS" && continue
  $PY -m drnets train --model "${m%-softmax}" --model-config "${CONFIG[$m]}" --epochs "$EPOCHS" --batch-size 128 \
      --lr 3e-3 --cost-weight "${COST[$m]}" ${EXTRA[$m]} --tau-start 1.0 --tau-end 0.3 --threshold 0.1 --seed 0 --out "runs/$m" --no-progress
done
# Stage 2: routing. Routers read their own cell's inputs, one sigmoid gate per branch (started
# open), shifted by a budget c drawn per step from [0.03, 0.6] and pulled to it after a tenth of
# the run; photo augmentation; stem, branches and classifier start from stage 1.
ROUTED='{"channels":12,"num_nodes":2,"router_input":"cell","router_grid":2,"router_relu":true,"gate":"sigmoid","open_bias":2.0,"budgeted":true,"budget":0.15,"threshold":0.5}'
BUDGETED=(--cost-weight 5 --difficulty-spread 0.5 --cost-warmup 0.1 --budget-min 0.03 --budget-max 0.6 --no-sandwich
          --tau-start 1 --tau-end 1 --threshold 0.5)
done_epochs drnet-budget "$ROUTER_EPOCHS" || \
  $PY -m drnets train --model drnet --model-config "$ROUTED" --init-from runs/drnet-softmax/model --epochs "$ROUTER_EPOCHS" \
      --batch-size 128 --lr 2e-3 --augment photo "${BUDGETED[@]}" --seed 0 --out runs/drnet-budget --no-progress
# Stage 3: photos. 4,000 phone-style photos of training images, prepared as uploads are, make up a
# quarter of one more epoch for the DRNet and MobileNetV2 (the dense supernet keeps stage 1).
for s in 1 2; do
  [ -f "runs/photo-pool-$s/labels.csv" ] || $PY -m drnets photos --split train --out "runs/photo-pool-$s" --n 2000 --seed "100$s"
done
POOL=(--photo-pool runs/photo-pool-1 --photo-pool runs/photo-pool-2 --photo-share 0.25 --augment photo --epochs 1 --lr 1e-3)
done_epochs drnet 1 || $PY -m drnets train --model drnet --model-config "$ROUTED" --init-from runs/drnet-budget/model \
  "${POOL[@]}" "${BUDGETED[@]}" --batch-size 128 --seed 0 --out runs/drnet --no-progress
done_epochs mobilenetv2-photo 1 || $PY -m drnets train --model mobilenetv2 --model-config '{}' \
  --init-from runs/mobilenetv2/model "${POOL[@]}" --batch-size 128 --seed 0 --out runs/mobilenetv2-photo --no-progress
# Stage 4: photos and outliers, all three models. More epochs with the pool (DRNet and MobileNetV2
# two, the dense supernet its first), now also 2,000 generated non-garments of the seven training
# kinds (a tenth of the set, outlier exposure: answered with a flat distribution); pool caches are
# prepared again whenever the upload path's code changed (drnets.photo_pool).
for s in 1 2; do
  [ -f "runs/outliers-$s/kinds.csv" ] || $PY -m drnets nongarments --out "runs/outliers-$s" --n 1000 --seed "200$s" \
    --kinds noise,flat,shapes,text,smiley,texture,desk
done
OUTLIERS=(--outlier-pool runs/outliers-1 --outlier-pool runs/outliers-2 --outlier-share 0.1 --outlier-weight 0.5)
done_epochs drnet-open 2 || $PY -m drnets train --model drnet --model-config "$ROUTED" --init-from runs/drnet/model \
  "${POOL[@]}" "${OUTLIERS[@]}" --epochs 2 "${BUDGETED[@]}" --batch-size 128 --seed 0 --out runs/drnet-open --no-progress
done_epochs mobilenetv2-open 2 || $PY -m drnets train --model mobilenetv2 --model-config '{}' \
  --init-from runs/mobilenetv2-photo/model "${POOL[@]}" "${OUTLIERS[@]}" --epochs 2 --batch-size 128 --seed 0 \
  --out runs/mobilenetv2-open --no-progress
done_epochs dense-open 1 || $PY -m drnets train --model dense --model-config "${CONFIG[dense]}" --init-from runs/dense/model \
  "${POOL[@]}" "${OUTLIERS[@]}" --batch-size 128 --seed 0 --out runs/dense-open --no-progress
# Stage 5: the DRNet learns photos from MobileNetV2's answers too (--teacher: knowledge distillation,
# half the labelled images' loss, temperature 2), two more epochs of photos and outliers.
done_epochs drnet-distil 2 || $PY -m drnets train --model drnet --model-config "$ROUTED" --init-from runs/drnet-open/model \
  --teacher runs/mobilenetv2-open/model "${POOL[@]}" "${OUTLIERS[@]}" --epochs 2 "${BUDGETED[@]}" --batch-size 128 --seed 0 \
  --out runs/drnet-distil --no-progress
# Stage 6 (run on a lent GPU by scripts/gpu_build.sh, which times it; here it takes many hours): a third
# pool (seed 1003), photos at 0.4 of the set, batch 256, chains of one-epoch runs, run N with seed N.
# MobileNetV2 eight runs; the dense supernet three, with MobileNetV2 (stage 4) as teacher; the DRNet two
# with `--execution masked` and the same teacher, then a third with photos at half the set and the
# stage-6 MobileNetV2 as teacher.
[ -f runs/photo-pool-3/labels.csv ] || $PY -m drnets photos --split train --out runs/photo-pool-3 --n 2000 --seed 1003
POOL6=(--photo-pool runs/photo-pool-1 --photo-pool runs/photo-pool-2 --photo-pool runs/photo-pool-3 --augment photo
       --epochs 1 --lr 1e-3 --batch-size 256 --no-progress)
chain() {  # chain NAME MODEL FROM RUNS [train args]: runs/NAME-1 .. runs/NAME-RUNS, each from the one before
  local name=$1 model=$2 from=$3 runs=$4; shift 4
  for n in $(seq 1 "$runs"); do
    done_epochs "$name-$n" 1 || $PY -m drnets train --model "$model" --init-from "$from" "$@" --seed "$n" --out "runs/$name-$n"
    from="runs/$name-$n/model"
  done
}
chain mobilenetv2-gpu mobilenetv2 runs/mobilenetv2-open/model 8 --model-config '{}' "${POOL6[@]}" --photo-share 0.4 \
  "${OUTLIERS[@]}"
chain dense-gpu dense runs/dense-open/model 3 --model-config "${CONFIG[dense]}" --teacher runs/mobilenetv2-open/model \
  "${POOL6[@]}" --photo-share 0.4 "${OUTLIERS[@]}"
chain drnet-gpu drnet runs/drnet-distil/model 2 --model-config "$ROUTED" --teacher runs/mobilenetv2-open/model \
  "${POOL6[@]}" --photo-share 0.4 "${OUTLIERS[@]}" "${BUDGETED[@]}" --execution masked
done_epochs drnet-gpu-3 1 || $PY -m drnets train --model drnet --model-config "$ROUTED" --init-from runs/drnet-gpu-2/model \
  --teacher runs/mobilenetv2-gpu-8/model "${POOL6[@]}" --photo-share 0.5 "${OUTLIERS[@]}" "${BUDGETED[@]}" \
  --execution masked --seed 3 --out runs/drnet-gpu-3
declare -A RUN=([drnet]=drnet-gpu-3 [dense]=dense-gpu-3 [mobilenetv2]=mobilenetv2-gpu-8)
for m in drnet dense mobilenetv2; do
  mkdir -p "assets/models/$m"
  cp "runs/${RUN[$m]}/model/model.safetensors" "runs/${RUN[$m]}/model/config.json" "assets/models/$m/"
  $PY -m drnets eval --checkpoint "assets/models/$m" --data fashion-mnist --split test --out "assets/models/$m" --json > /dev/null
  $PY -m drnets calibrate --checkpoint "assets/models/$m" --photo-pool runs/photo-pool-1 --photo-pool runs/photo-pool-2 \
    --photo-pool runs/photo-pool-3 > /dev/null
done
$PY -m drnets export-samples --out assets/samples --per-class 3
