# VMamba-S [s2l15] on ImageNet-1k (papers/vmamba.txt; the authors'
# vmambav2_small_224.yaml: 83.6 top-1, 50 M parameters): the VMamba-T recipe
# with drop path 0.3.
_base_ = ['./vmamba_tiny_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3),
    head=dict(in_channels=768))
