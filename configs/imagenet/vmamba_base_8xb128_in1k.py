# VMamba-B [s2l15] on ImageNet-1k (papers/vmamba.txt; the authors'
# vmambav2_base_224.yaml: 83.9 top-1, 89 M parameters): the VMamba-T recipe
# with drop path 0.6.
_base_ = ['./vmamba_tiny_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.6),
    head=dict(in_channels=1024))
