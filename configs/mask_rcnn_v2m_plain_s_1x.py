# Mask R-CNN + FPN on COCO 2017, 1x schedule (12 epochs, lr x0.1 after epochs 8 and
#   11, single-scale training), backbone V2M-S (mmssm.V2M, arch 'small': plain, 24
#   blocks, 384 channels; blocks 5/11/17/23 through the multi-scale adapter at strides
#   4/8/16/32).
# Reproduces: no published Mask R-CNN result for this backbone in ../shared/papers/
#   (../shared/papers/v2m.txt Table 2 has pyramid V2M only).
# ImageNet checkpoint expected at checkpoints/v2m_small_in1k.pth: V2M-S ImageNet-1K,
#   80.5 top-1 (../shared/papers/v2m.txt Table 1); the authors released no checkpoint:
#   train one with its configs/imagenet/ config.
# Drop-path rate: 0.1 (the papers state none for this backbone).
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

pretrained = 'checkpoints/v2m_small_in1k.pth'
model = dict(
    backbone=dict(
        type='mmssm.V2M',
        arch='small',
        out_indices=(5, 11, 17, 23),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[384, 384, 384, 384]))
