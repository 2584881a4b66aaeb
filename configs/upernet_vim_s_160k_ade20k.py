# UPerNet on ADE20K, 512x512 crops, 160k iterations, backbone Vim-S (mmssm.Vim, arch
#   'small': plain, 24 blocks, 384 channels; blocks 5/11/17/23 through the multi-scale
#   adapter at strides 4/8/16/32).
# Reproduces: ../shared/papers/vim.txt Table 2, row "UperNet Vim-S": mIoU 44.9
#   single-scale (46 M).
# Test: single-scale by default; multi-scale (0.5-1.75) + flip with tools/test.py
#   --tta.
# ImageNet checkpoint expected at checkpoints/vim_s_midclstok_80p5acc.pth: the
#   authors' Vim-S release (vim_s_midclstok_80p5acc.pth), read as released.
# Drop-path rate: 0.1 (the papers state none for this backbone).
# Recipe: AdamW lr 6e-5, weight decay 0.01 (none on norms/embeddings), batch 16 (8
#   GPUs x 2 images), 1500-iteration linear warm-up, linear decay to 0, layer-wise lr
#   decay 0.92 over the 24 blocks (the Vim authors' segmentation rate).
_base_ = [
    './_base_/models/upernet.py',
    './_base_/datasets/ade20k.py',
    './_base_/schedules/upernet_160k_layer_decay.py',
    './_base_/runtimes/mmseg_runtime.py',
]
custom_imports = dict(
    imports=['mmssm.models', 'mmssm.utils.layer_decay'],
    allow_failed_imports=False)

pretrained = 'checkpoints/vim_s_midclstok_80p5acc.pth'
model = dict(
    backbone=dict(
        type='mmssm.Vim',
        arch='small',
        out_indices=(5, 11, 17, 23),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[384, 384, 384, 384], channels=384),
    auxiliary_head=dict(in_channels=384))
