# ImageNet-1k classification with Mamba2D-N (mmssm.Mamba2D, arch 'nano': blocks
#   [3, 3, 9, 3], channels [32, 64, 160, 256]) in mmpretrain.
# Reproduces: the authors' release M2D-N-backbone.ckpt (cocoalex00/Mamba2D
#   v2.0.0; 7.2 M parameters with their head); ../shared/papers/mamba2d.txt
#   reports M2D-T only.
# Recipe: as mamba2d_tiny_8xb128_in1k.py (configs/M2D-N-ImageNet.yaml differs
#   only in the model): drop-path 0.0, head dropout 0.0.
_base_ = ['./mamba2d_tiny_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='nano', drop_path_rate=0.0),
    head=dict(in_channels=256, dropout_rate=0.0))
