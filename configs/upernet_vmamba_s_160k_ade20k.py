# UPerNet on ADE20K, 512x512 crops, 160k iterations, backbone VMamba-S (mmssm.VMamba,
#   arch 'small' = released v2 VMamba-S [s2l15]).
# Reproduces: ../shared/papers/v2m.txt Table 3, row "VMamba-S": mIoU 50.6
#   single-scale, 51.2 multi-scale (82 M).
# Test: single-scale by default; multi-scale (0.5-1.75) + flip with tools/test.py
#   --tta.
# ImageNet checkpoint expected at checkpoints/vssm_small_0229_ckpt_epoch_222.pth: the
#   authors' VMamba-S [s2l15] release (vssm_small_0229), read as released.
# Drop-path rate: 0.3 (Swin's UPerNet rate, whose recipe VMamba follows; the papers
#   state none).
# Recipe: AdamW lr 6e-5, weight decay 0.01 (none on norms/embeddings), batch 16 (8
#   GPUs x 2 images), 1500-iteration linear warm-up, linear decay to 0.
_base_ = [
    './_base_/models/upernet.py',
    './_base_/datasets/ade20k.py',
    './_base_/schedules/upernet_160k.py',
    './_base_/runtimes/mmseg_runtime.py',
]
custom_imports = dict(
    imports=['mmssm.models'],
    allow_failed_imports=False)

pretrained = 'checkpoints/vssm_small_0229_ckpt_epoch_222.pth'
model = dict(
    backbone=dict(
        type='mmssm.VMamba',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
