# VMamba-T [s1l8] on ImageNet-1k from scratch (papers/vmamba.txt; the
# authors' vmambav2v_tiny_224.yaml: 82.6 top-1, 30 M parameters): AdamW
# lr 1e-3 at batch 1024 (8 GPUs x 128), weight decay 0.05, 300 epochs with a
# 20-epoch warm-up and cosine decay, drop path 0.2, gradient clipping 5.
_base_ = '../_base_/recipes/mmpretrain_imagenet.py'

model = dict(
    # out_norms.3 is the authors' classifier norm: LN -> pool -> Linear
    backbone=dict(
        type='mmssm.VMamba',
        arch='tiny',
        out_indices=(3, ),
        drop_path_rate=0.2),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]),
)

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

# A_log has no weight decay in the authors' optimiser (D and biases are flat)
optim_wrapper = dict(
    clip_grad=dict(max_norm=5.0),
    paramwise_cfg=dict(custom_keys={'A_log': dict(decay_mult=0.0)}))
