# UPerNet on ADE20K, 512x512 crops, 160k iterations, backbone Mamba2D-N
#   (mmssm.Mamba2D, arch 'nano').
# Reproduces: no published UPerNet result in ../shared/papers/ (the Mamba2D paper,
#   ../shared/papers/mamba2d.txt, reports ImageNet only).
# Test: single-scale by default; multi-scale (0.5-1.75) + flip with tools/test.py
#   --tta.
# ImageNet checkpoint expected at checkpoints/M2D-N-backbone.ckpt: the authors' M2D-N
#   release (M2D-N-backbone.ckpt, GitHub release v2.0.0).
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

pretrained = 'checkpoints/M2D-N-backbone.ckpt'
model = dict(
    backbone=dict(
        type='mmssm.Mamba2D',
        arch='nano',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[32, 64, 160, 256]),
    auxiliary_head=dict(in_channels=160))
