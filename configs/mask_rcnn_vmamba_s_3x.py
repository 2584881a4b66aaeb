# Mask R-CNN + FPN on COCO 2017, 3x schedule (36 epochs, lr x0.1 after epochs 27 and
#   33, multi-scale crop training), backbone VMamba-S (mmssm.VMamba, arch 'small' =
#   released v2 VMamba-S [s2l15]).
# Reproduces: ../shared/papers/v2m.txt Table 2, row "VMamba-S MaskRCNN@3x": box AP
#   49.9, mask AP 44.2 (70 M).
# ImageNet checkpoint expected at checkpoints/vssm_small_0229_ckpt_epoch_222.pth: the
#   authors' VMamba-S [s2l15] release (vssm_small_0229), read as released.
# Drop-path rate: 0.2 (the VMamba paper's Mask R-CNN rate, ../shared/papers/vmamba.txt
#   "Object Detection on COCO").
# Recipe: AdamW lr 1e-4, weight decay 0.05 (none on norms/embeddings), batch 16 (8
#   GPUs x 2 images), 1000-iteration linear warm-up.
_base_ = [
    './_base_/models/mask_rcnn_fpn.py',
    './_base_/datasets/coco_instance_ms_crop.py',
    './_base_/schedules/mask_rcnn_3x.py',
    './_base_/runtimes/mmdet_runtime.py',
]
custom_imports = dict(
    imports=['mmssm.models', 'mmssm.models.layers.roi_extractor'],
    allow_failed_imports=False)

pretrained = 'checkpoints/vssm_small_0229_ckpt_epoch_222.pth'
model = dict(
    backbone=dict(
        type='mmssm.VMamba',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
