# ImageNet-1k classification with Vim-Ti (mmssm.Vim, arch 'tiny': 24 blocks,
#   192 channels, patch 16, stride 16, middle class token) in mmpretrain.
# Reproduces: ../shared/papers/vim.txt Table 1, row "Vim-Ti": 76.1 top-1 at
#   224^2, 7 M parameters (the authors' release vim_t_midclstok_76p1acc.pth).
# Recipe (papers/vim.txt sec. 4.1, DeiT settings; hustvl/Vim
#   vim/scripts/pt-vim-t.sh): 300 epochs, AdamW lr 1e-3 (5e-4 x 1024 / 512),
#   weight decay 0.05 (none on 1-D parameters, biases, pos_embed, cls_token),
#   batch 1024 (8 GPUs x 128), 5 warm-up epochs then cosine to 1e-5, EMA,
#   RandAugment m9-mstd0.5, Mixup 0.8 / CutMix 1.0, label smoothing 0.1, random
#   erasing 0.25, drop-path 0.1; the authors train in fp32 (--no_amp).
# Model: the backbone returns the final-normed (norm_f) middle class token; the
#   LinearClsHead is the authors' `head`. To evaluate the authors' checkpoint,
#   set model.backbone.init_cfg=dict(type='Pretrained', checkpoint=PATH) (their
#   head is not read by mmpretrain's head; use
#   mmssm.models.from_official('vim', ...) for the exact released classifier).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmssm.models'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmssm.Vim',
        arch='tiny',
        img_size=224,
        patch_size=16,
        stride=16,
        out_indices=(-1, ),
        out_type='cls_token',
        pyramid_strides=None,
        final_norm=True,
        drop_path_rate=0.1),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=192,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.)),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={
            '.pos_embed': dict(decay_mult=0.0),
            '.cls_token': dict(decay_mult=0.0),
        }),
)
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
auto_scale_lr = dict(base_batch_size=1024)
