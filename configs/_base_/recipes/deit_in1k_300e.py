# The DeiT ImageNet-1k recipe that Vim and V2M train with (papers/vim.txt
# sec. 4.1; papers/v2m.txt sec. 4.1, on the Vim/DeiT training code): 300
# epochs of AdamW with no weight decay on 1-D parameters, biases and
# pos_embed, 5 linear warm-up epochs then cosine to 1e-5, EMA, RandAugment
# m9-mstd0.5 and random erasing 0.25 (mmpretrain's Swin pipeline), Mixup 0.8 /
# CutMix 1.0 and label smoothing 0.1 into a linear head. A config that uses
# it sets the backbone (and neck), the head's in_channels, batch size, lr,
# weight decay and auto_scale_lr's base batch size.
_base_ = './mmpretrain_imagenet.py'

model = dict(
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.)),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

optim_wrapper = dict(
    paramwise_cfg=dict(
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={'.pos_embed': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=5,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]
