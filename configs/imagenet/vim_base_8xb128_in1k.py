# ImageNet-1k classification with Vim-B (mmssm.Vim, arch 'base': 24 blocks, 768
#   channels, patch 16, stride 16, middle class token) in mmpretrain.
# Reproduces: ../shared/papers/vim.txt Table 1, row "Vim-B": 81.9 top-1 at
#   224^2, 98 M parameters (the authors' release vim_b_midclstok_81p9acc.pth).
# Recipe: as vim_tiny_8xb128_in1k.py (papers/vim.txt sec. 4.1: batch 1024, lr
#   1e-3, weight decay 0.05, 300 epochs, EMA). The authors publish no Vim-B
#   training script; the drop-path rate 0.1 is their main.py default.
_base_ = ['./vim_tiny_8xb128_in1k.py']

model = dict(backbone=dict(arch='base'), head=dict(in_channels=768))
