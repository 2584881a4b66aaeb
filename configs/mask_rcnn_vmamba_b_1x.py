# Mask R-CNN + FPN on COCO 2017, 1x schedule (12 epochs, lr x0.1 after epochs 8 and
#   11, single-scale training), backbone VMamba-B (mmssm.VMamba, arch 'base' =
#   released v2 VMamba-B [s2l15]).
# Reproduces: no published result for the v2 VMamba-B in ../shared/papers/; the early
#   paper (../shared/papers/vmamba.txt, "Object Detection on COCO") gives the vanilla
#   VMamba-B (arch 'vanilla-base') box AP 48.5, mask AP 43.1.
# ImageNet checkpoint expected at checkpoints/vssm_base_0229_ckpt_epoch_237.pth: the
#   authors' VMamba-B [s2l15] release (vssm_base_0229), read as released.
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

pretrained = 'checkpoints/vssm_base_0229_ckpt_epoch_237.pth'
model = dict(
    backbone=dict(
        type='mmssm.VMamba',
        arch='base',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
