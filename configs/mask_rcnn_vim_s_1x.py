# Mask R-CNN + FPN on COCO 2017, 1x schedule (12 epochs, lr x0.1 after epochs 8 and
#   11, single-scale training), backbone Vim-S (mmssm.Vim, arch 'small': plain, 24
#   blocks, 384 channels; blocks 5/11/17/23 through the multi-scale adapter at strides
#   4/8/16/32).
# Reproduces: no published Mask R-CNN result for this backbone in ../shared/papers/
#   (Vim reports Cascade Mask R-CNN for Vim-Ti only, papers/vim.txt Table 3).
# ImageNet checkpoint expected at checkpoints/vim_s_midclstok_80p5acc.pth: the
#   authors' Vim-S release (vim_s_midclstok_80p5acc.pth), read as released.
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

pretrained = 'checkpoints/vim_s_midclstok_80p5acc.pth'
model = dict(
    backbone=dict(
        type='mmssm.Vim',
        arch='small',
        out_indices=(5, 11, 17, 23),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[384, 384, 384, 384]))
