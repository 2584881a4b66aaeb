# ImageNet-1k classification with Mamba2D-S (mmssm.Mamba2D, arch 'small': blocks
#   [3, 12, 14, 3], channels [96, 192, 384, 576]) in mmpretrain.
# Reproduces: the authors' release M2D-S-backbone.ckpt (cocoalex00/Mamba2D
#   v2.0.0; 50.3 M parameters with their head); ../shared/papers/mamba2d.txt
#   reports M2D-T only.
# Recipe: as mamba2d_tiny_8xb128_in1k.py (configs/M2D-S-ImageNet.yaml differs
#   only in the model): drop-path 0.4, head dropout 0.4.
_base_ = ['./mamba2d_tiny_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.4),
    head=dict(in_channels=576, dropout_rate=0.4))
