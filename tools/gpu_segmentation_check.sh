#!/usr/bin/env bash
# GPU check of the segmentation pipeline (issue: detection and segmentation end
# to end), one call: UPerNet with V2M-S* (configs/upernet_v2m_s_160k_ade20k.py)
# next to mmseg's own Swin-T UPerNet
# (swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py), and
# VMamba-T for context, at 512x512 crops, batch 2, in fp32 and under fp16 AMP:
# 60 iterations each on an ADE20K-format set of 512x683 images, both with the
# configs' own pipelines (random rescale, crop, flip, photometric distortion).
# Reports the median iteration time, the peak memory mmengine logs, and the
# first and last loss. Needs mmcv/mmseg on the machine (docs/install.md).
# Results: $RESULTS (default work_dirs/gpu_seg_check)/speed.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-work_dirs/gpu_seg_check}
ITERS=${ITERS:-60}
DATA=data/gpu_ade_512/
SWIN=$("$PY" -c 'import mmseg, os; print(os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", "swin", "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py"))')
mkdir -p "$RESULTS"
"$PY" tools/data/make_ade20k.py "$DATA" --num-train 64 --num-val 4 --size 512 683 --seed 3

echo "| run | iters | s/iter (median) | peak MiB | first loss | last loss | finite |" > "$RESULTS/speed.md"
echo "| --- | --- | --- | --- | --- | --- | --- |" >> "$RESULTS/speed.md"
run() {  # $1 name, $2 config, $3 fp32|float16
  local amp=() dtype=()
  if [ "$3" != fp32 ]; then amp=(--amp); dtype=("optim_wrapper.dtype=$3"); fi
  "$PY" tools/train.py "$2" --work-dir "$RESULTS/$1" "${amp[@]}" --cfg-options "${dtype[@]}" \
    train_dataloader.dataset.data_root="$DATA" train_dataloader.num_workers=6 \
    val_dataloader.dataset.data_root="$DATA" test_dataloader.dataset.data_root="$DATA" \
    model.backbone.init_cfg=None train_dataloader.batch_size=2 \
    "train_cfg.max_iters=$ITERS" train_cfg.val_interval=100000 \
    default_hooks.checkpoint.interval=100000 default_hooks.logger.interval=5 \
    log_processor.window_size=1 > "$RESULTS/$1.log" 2>&1 || { tail -30 "$RESULTS/$1.log"; exit 1; }
  "$PY" tools/analysis/train_log_summary.py "$RESULTS/$1" --name "$1" >> "$RESULTS/speed.md"
}
for precision in fp32 float16; do
  run "v2m_s_upernet_$precision" configs/upernet_v2m_s_160k_ade20k.py "$precision"
  run "swin_t_upernet_$precision" "$SWIN" "$precision"
  run "vmamba_t_upernet_$precision" configs/upernet_vmamba_t_160k_ade20k.py "$precision"
done
cat "$RESULTS/speed.md"
