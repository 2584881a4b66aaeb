# Mask R-CNN + FPN on COCO 2017, 1x schedule (12 epochs, lr x0.1 after epochs 8 and
#   11, single-scale training), backbone Mamba2D-N (mmssm.Mamba2D, arch 'nano').
# Reproduces: no published Mask R-CNN result for this backbone in ../shared/papers/
#   (the Mamba2D paper, ../shared/papers/mamba2d.txt, reports ImageNet only).
# ImageNet checkpoint expected at checkpoints/M2D-N-backbone.ckpt: the authors' M2D-N
#   release (M2D-N-backbone.ckpt, GitHub release v2.0.0).
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

pretrained = 'checkpoints/M2D-N-backbone.ckpt'
model = dict(
    backbone=dict(
        type='mmssm.Mamba2D',
        arch='nano',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[32, 64, 160, 256]))
