# ImageNet-1k classification with Mamba2D-T (mmssm.Mamba2D, arch 'tiny': blocks
#   [3, 3, 9, 3], channels [64, 128, 320, 512], 2D-SSM mixers in stages 1-2, RoPE
#   attention in stages 3-4) in mmpretrain.
# Reproduces: ../shared/papers/mamba2d.txt, row "M2D-T": 82.4 top-1 at 224^2,
#   27 M parameters (the authors' release M2D-T-backbone.ckpt, v2.0.0; 26.5 M
#   with their head).
# Recipe (cocoalex00/Mamba2D configs/M2D-T-ImageNet.yaml + datasets/datamodules.py):
#   300 epochs, AdamW lr 4e-3 at batch 4096 (here 1e-3 at 1024 = 8 GPUs x 128,
#   linear scaling), weight decay 0.05 (none on 1-D parameters and A_log), warm-up
#   over the first 5% of the steps (15 epochs) then cosine to 1e-6, EMA 0.999 per
#   step (evaluated), bf16 mixed precision, no gradient clipping, RandAugment
#   m9-mstd0.5-inc1, random erasing 0.25, Mixup 0.8 / CutMix 1.0, label smoothing
#   0.1, drop-path 0.175, head dropout 0.15; evaluation at crop ratio 1.0 (resize
#   to 224, centre crop 224, bicubic).
# Model: the authors' head (pool -> LayerNorm -> fc1 (4C) -> GELU -> LayerNorm ->
#   dropout -> fc2) as mmssm.MlpClsHead, so the classifier has the authors'
#   parameter count; their checkpoint loads into the backbone through
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint=PATH), and
#   mmssm.models.official.from_official('mamba2d', ...) is the exact classifier.
_base_ = '../_base_/recipes/mmpretrain_imagenet.py'
custom_imports = dict(
    imports=['mmssm.models', 'mmssm.models.layers.mlp_cls_head'],
    allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='mmssm.Mamba2D',
        arch='tiny',
        out_indices=(3, ),
        drop_path_rate=0.175),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='mmssm.MlpClsHead',
        num_classes=1000,
        in_channels=512,
        mlp_ratio=4,
        dropout_rate=0.15,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

# The authors evaluate at crop ratio 1.0 (timm create_transform crop_pct=1.0).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='ResizeEdge',
        scale=224,
        edge='short',
        backend='pillow',
        interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='AmpOptimWrapper',
    dtype='bfloat16',
    optimizer=dict(lr=1e-3, weight_decay=0.05),
    # A_log_top / A_log_left (2-D) carry the authors' _no_weight_decay flag;
    # every other 1-D parameter (norms, biases, D, res-scales, StarReLU) is flat.
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={'.A_log': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-4,
        by_epoch=True,
        end=15,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-6,
        by_epoch=True,
        begin=15,
        convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
# mmengine's momentum m: ema = (1 - m) * ema + m * param, i.e. decay 0.999.
custom_hooks = [dict(type='EMAHook', momentum=1e-3, priority='ABOVE_NORMAL')]
auto_scale_lr = dict(base_batch_size=1024)
