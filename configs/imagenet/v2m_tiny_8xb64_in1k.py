# ImageNet-1k classification with plain V2M-T (mmssm.V2M, arch 'tiny': 24
#   blocks, 192 channels, patch 16, four-corner 2D SSM, mean pooling) in
#   mmpretrain.
# Reproduces: ../shared/papers/v2m.txt Table 1, row "V2M-T (ours)": 76.2 top-1
#   at 224^2, 7 M parameters (6,852,712 with the 1000-class head). The authors
#   released no checkpoint.
# Recipe (papers/v2m.txt sec. 4.1, "Implementation Details"; wangck20/V2M
#   v2m/scripts/pt-vim-t.sh on the DeiT/Vim training code): 300 epochs, AdamW
#   lr 5e-4 at batch 512 (8 GPUs x 64), weight decay 0.1 (none on 1-D
#   parameters, biases, pos_embed), 5 warm-up epochs then cosine to 1e-5, EMA,
#   RandAugment m9-mstd0.5, Mixup 0.8 / CutMix 1.0, label smoothing 0.1,
#   random erasing 0.25, drop-path 0.0; the authors train in fp32 (--no_amp).
# Model: the backbone returns the residual stream after the last block with the
#   authors' final RMSNorm (norm_f) applied; GlobalAveragePooling is their token
#   mean and LinearClsHead their `head`. layout='corrected' is mmssm's 2D scan
#   (every corner's result at its own pixel, all four corners); use
#   layout='official' to train exactly the released code's scan. To evaluate an
#   authors' checkpoint, set model.backbone.init_cfg=dict(type='Pretrained',
#   checkpoint=PATH) (their head is not read by mmpretrain's head; use
#   mmssm.models.from_official('v2m', ...) for the exact released classifier).
_base_ = '../_base_/recipes/deit_in1k_300e.py'

model = dict(
    backbone=dict(
        type='mmssm.V2M',
        arch='tiny',
        img_size=224,
        patch_size=16,
        out_indices=(-1, ),
        pyramid_strides=None,
        final_norm=True,
        layout='corrected',
        drop_path_rate=0.0),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(in_channels=192),
)

train_dataloader = dict(batch_size=64)
val_dataloader = dict(batch_size=64)
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=5e-4, weight_decay=0.1))
auto_scale_lr = dict(base_batch_size=512)
