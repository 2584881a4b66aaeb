# Mask R-CNN + FPN on COCO 2017, 1x schedule (12 epochs, lr x0.1 after epochs 8 and
#   11, single-scale training), backbone VMamba-T (mmssm.VMamba, arch 'tiny' =
#   released v2 VMamba-T [s1l8]).
# Reproduces: ../shared/papers/v2m.txt Table 2, row "VMamba-T MaskRCNN@1x": box AP
#   47.3, mask AP 42.7 (50 M).
# ImageNet checkpoint expected at checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth: the
#   authors' VMamba-T [s1l8] release (vssm1_tiny_0230s), read as released.
# Drop-path rate: 0.2 (the VMamba paper's Mask R-CNN rate, ../shared/papers/vmamba.txt
#   "Object Detection on COCO").
# Recipe: AdamW lr 1e-4, weight decay 0.05 (none on norms/embeddings), batch 16 (8
#   GPUs x 2 images), 1000-iteration linear warm-up.
_base_ = [
    './_base_/models/mask_rcnn_fpn.py',
    './_base_/datasets/coco_instance.py',
    './_base_/schedules/mask_rcnn_1x.py',
    './_base_/runtimes/mmdet_runtime.py',
]
custom_imports = dict(
    imports=['mmssm.models', 'mmssm.models.layers.roi_extractor'],
    allow_failed_imports=False)

pretrained = 'checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth'
model = dict(
    backbone=dict(
        type='mmssm.VMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
