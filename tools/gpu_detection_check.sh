#!/usr/bin/env bash
# GPU check of the detection pipeline (issue: detection end to end), one call:
#  1. configs/mask_rcnn_v2m_s_1x.py at 1333x800 (keep-ratio resize of 400x640
#     images to 800x1280), batch 2, 50 iterations under fp16 and under bf16 AMP:
#     finite, falling loss; iteration time and peak memory;
#  2. a 300-iteration run of the V2M-S* Mask R-CNN on a small COCO-format set
#     (256x256 shapes), then COCO bbox/segm evaluation on its val split;
#  3. mmdet's own Swin-T Mask R-CNN (mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py) on
#     the data and settings of step 1, for comparison.
# Needs mmcv/mmdet on the machine (see docs/install.md). Results: $RESULTS
# (default work_dirs/gpu_check), one markdown table per step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-work_dirs/gpu_check}
ITERS_LEARN=${ITERS_LEARN:-300}
CONFIG=configs/mask_rcnn_v2m_s_1x.py
SWIN=$("$PY" -c 'import mmdet, os; print(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "swin", "mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py"))')
mkdir -p "$RESULTS"
CLASSES="(circle,square,triangle,diamond)"

data_overrides() {  # $1 data root, $2 test scale
  local data=$1 out=()
  for split in train val test; do
    out+=("${split}_dataloader.dataset.data_root=$data"
          "${split}_dataloader.dataset.metainfo.classes=$CLASSES"
          "${split}_dataloader.num_workers=4")
  done
  for split in val test; do
    out+=("${split}_evaluator.ann_file=${data}annotations/instances_val2017.json")
  done
  out+=(model.roi_head.bbox_head.num_classes=4 model.roi_head.mask_head.num_classes=4
        model.backbone.init_cfg=None)
  printf '%s\n' "${out[@]}"
}

"$PY" tools/data/make_coco.py data/gpu_coco_1333/ --num-train 100 --num-val 8 --size 400 640 --seed 1
"$PY" tools/data/make_coco.py data/gpu_coco_small/ --num-train 400 --num-val 50 --size 256 256 --seed 2
mapfile -t BIG < <(data_overrides data/gpu_coco_1333/)
mapfile -t SMALL < <(data_overrides data/gpu_coco_small/)

echo "| run | iters | s/iter (median) | peak MiB | first loss | last loss | finite |" > "$RESULTS/speed.md"
echo "| --- | --- | --- | --- | --- | --- | --- |" >> "$RESULTS/speed.md"
run_50() {  # $1 name, $2 config, $3 dtype
  "$PY" tools/train.py "$2" --amp --work-dir "$RESULTS/$1" --cfg-options "${BIG[@]}" \
    optim_wrapper.dtype="$3" train_dataloader.batch_size=2 train_cfg.max_epochs=1 \
    train_cfg.val_interval=10 param_scheduler.0.end=10 default_hooks.logger.interval=5 \
    default_hooks.checkpoint.interval=10 log_processor.window_size=1
  "$PY" tools/analysis/train_log_summary.py "$RESULTS/$1" --name "$1" >> "$RESULTS/speed.md"
}
run_50 v2m_s_fp16 "$CONFIG" float16
run_50 v2m_s_bf16 "$CONFIG" bfloat16
cat "$RESULTS/speed.md"

epochs=$(( ITERS_LEARN * 4 / 400 ))
"$PY" tools/train.py "$CONFIG" --work-dir "$RESULTS/learn" --cfg-options "${SMALL[@]}" \
  "train_dataloader.dataset.pipeline.2.scale=(256,256)" \
  "val_dataloader.dataset.pipeline.1.scale=(256,256)" \
  "test_dataloader.dataset.pipeline.1.scale=(256,256)" \
  train_dataloader.batch_size=4 "train_cfg.max_epochs=$epochs" "train_cfg.val_interval=$epochs" \
  optim_wrapper.optimizer.lr=0.0002 param_scheduler.0.end=50 \
  "param_scheduler.1.milestones=[$epochs]" default_hooks.logger.interval=25 2>&1 | tee "$RESULTS/learn.log"
grep -E "coco/(bbox|segm)_mAP" "$RESULTS/learn.log" | tail -2 > "$RESULTS/learn_metrics.txt"
cat "$RESULTS/learn_metrics.txt"

run_50 swin_t_fp16 "$SWIN" float16
cat "$RESULTS/speed.md"
