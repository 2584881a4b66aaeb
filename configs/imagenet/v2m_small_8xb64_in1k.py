# ImageNet-1k classification with plain V2M-S (mmssm.V2M, arch 'small': 24
#   blocks, 384 channels, patch 16) in mmpretrain.
# Reproduces: ../shared/papers/v2m.txt Table 1, row "V2M-S (ours)": 80.5 top-1
#   at 224^2, 26 M parameters (25,205,992 with the 1000-class head). The
#   authors released no checkpoint.
# Recipe: as v2m_tiny_8xb64_in1k.py but lr 1e-3, weight decay 0.05 and
#   drop-path 0.05 (wangck20/V2M v2m/scripts/pt-vim-s.sh; batch 512).
_base_ = ['./v2m_tiny_8xb64_in1k.py']

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.05),
    head=dict(in_channels=384))

optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.05))
