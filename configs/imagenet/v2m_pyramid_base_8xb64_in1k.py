# V2M-B* (pyramid V2M, VMamba-S [s2l15] layout) on ImageNet-1k:
# papers/v2m.txt Table 1 (83.8 top-1, 50 M parameters); the V2M-S* recipe
# with drop path 0.3 as VMamba-S.
_base_ = ['./v2m_pyramid_small_8xb64_in1k.py']

model = dict(backbone=dict(arch='base', drop_path_rate=0.3))
