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
_base_ = '../_base_/recipes/deit_in1k_300e.py'

model = dict(
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
    head=dict(in_channels=192),
)

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'.cls_token': dict(decay_mult=0.0)}))
auto_scale_lr = dict(base_batch_size=1024)
