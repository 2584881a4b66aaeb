# Mask R-CNN + FPN on COCO 2017, 1x schedule (12 epochs, lr x0.1 after epochs 8 and
#   11, single-scale training), backbone V2M-S* (mmssm.V2MPyramid, arch 'small':
#   VMamba-T [s1l8] layout with V2M's 2D scan).
# Reproduces: ../shared/papers/v2m.txt Table 2, row "V2M-S* (ours) MaskRCNN@1x": box
#   AP 47.6, mask AP 42.9 (50 M).
# ImageNet checkpoint expected at checkpoints/v2m_pyramid_small_in1k.pth: V2M-S*
#   ImageNet-1K, 82.9 top-1 (../shared/papers/v2m.txt Table 1); the authors released
#   no pyramid checkpoint: train one with its configs/imagenet/ config.
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

pretrained = 'checkpoints/v2m_pyramid_small_in1k.pth'
model = dict(
    backbone=dict(
        type='mmssm.V2MPyramid',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
