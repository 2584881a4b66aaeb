# UPerNet on ADE20K, 512x512 crops, 160k iterations, backbone V2M-S*
#   (mmssm.V2MPyramid, arch 'small': VMamba-T [s1l8] layout with V2M's 2D scan).
# Reproduces: ../shared/papers/v2m.txt Table 3, row "V2M-S* (ours)": mIoU 48.2
#   single-scale, 49.0 multi-scale (62 M).
# Test: single-scale by default; multi-scale (0.5-1.75) + flip with tools/test.py
#   --tta.
# ImageNet checkpoint expected at checkpoints/v2m_pyramid_small_in1k.pth: V2M-S*
#   ImageNet-1K, 82.9 top-1 (../shared/papers/v2m.txt Table 1); the authors released
#   no pyramid checkpoint: train one with its configs/imagenet/ config.
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

pretrained = 'checkpoints/v2m_pyramid_small_in1k.pth'
model = dict(
    backbone=dict(
        type='mmssm.V2MPyramid',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
