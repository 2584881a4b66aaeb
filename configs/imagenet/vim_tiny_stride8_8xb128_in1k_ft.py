# Long-sequence fine-tuning of Vim-Ti on ImageNet-1k: patch stride 8 (patch
#   size 16, 27 x 27 tokens at 224^2) in mmpretrain.
# Reproduces: ../shared/papers/vim.txt Table 1, row "Vim-Ti†": 78.3 top-1 at
#   224^2 (the authors' release vim_t_midclstok_ft_78p3acc.pth).
# Recipe (papers/vim.txt "Long Sequence Fine-tuning"; hustvl/Vim
#   vim/scripts/ft-vim-t.sh): 30 epochs from the stride-16 Vim-Ti checkpoint,
#   constant lr 1e-5, weight decay 1e-8, drop-path 0.0, batch 1024 (8 GPUs x
#   128).
# Checkpoint expected at checkpoints/vim_t_midclstok_76p1acc.pth (the authors'
#   Vim-Ti release): its 14 x 14 pos_embed is resized bicubically to 27 x 27
#   (class token kept) by Vim.convert_checkpoint. The authors also start the
#   linear head from that checkpoint; here it starts fresh.
_base_ = ['./vim_tiny_8xb128_in1k.py']

model = dict(
    backbone=dict(
        stride=8,
        drop_path_rate=0.0,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/vim_t_midclstok_76p1acc.pth')))

optim_wrapper = dict(optimizer=dict(lr=1e-5, weight_decay=1e-8))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True)]
train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=1)
