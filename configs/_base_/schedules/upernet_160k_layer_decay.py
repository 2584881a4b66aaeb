# upernet_160k.py with layer-wise learning-rate decay for plain (ViT-like)
# backbones: a parameter of backbone layer i (of n, by the backbone's
# get_layer_depth) gets lr x layer_decay_rate ** (n - 1 - i); the heads get
# the full lr. Built by mmssm.LayerDecayOptimWrapperConstructor (mmpretrain's
# LearningRateDecayOptimWrapperConstructor applied to a detector/segmentor's
# backbone); configs using it import mmssm.utils.layer_decay.
_base_ = './upernet_160k.py'

optim_wrapper = dict(
    constructor='mmssm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.92))
