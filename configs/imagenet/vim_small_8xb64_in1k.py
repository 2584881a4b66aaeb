# ImageNet-1k classification with Vim-S (mmssm.Vim, arch 'small': 24 blocks,
#   384 channels, patch 16, stride 16, middle class token) in mmpretrain.
# Reproduces: ../shared/papers/vim.txt Table 1, row "Vim-S": 80.3 top-1 at
#   224^2, 26 M parameters (the authors' release vim_s_midclstok_80p5acc.pth:
#   80.5).
# Recipe: as vim_tiny_8xb128_in1k.py but batch 512 (8 GPUs x 64), lr 1e-3 and
#   drop-path 0.05 (hustvl/Vim vim/scripts/pt-vim-s.sh).
_base_ = ['./vim_tiny_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.05),
    head=dict(in_channels=384))

train_dataloader = dict(batch_size=64)
val_dataloader = dict(batch_size=64)
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3))
auto_scale_lr = dict(base_batch_size=512)
