"""Registries of the ``mmssm`` scope.

Each registry is a child of mmengine's root registry of the same kind, so a
config of any OpenMMLab 2.0 project (mmdet, mmseg, mmpretrain) can build an
mmssm module with ``type='mmssm.<Name>'`` after
``custom_imports=dict(imports=['mmssm.models'])``.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope='mmssm', locations=['mmssm.models'])
# Layer-wise lr decay for detectors and segmentors (needs mmpretrain, so its
# module is imported only by the configs that use it).
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='mmssm',
    locations=['mmssm.utils.layer_decay'])

__all__ = ['MODELS', 'OPTIM_WRAPPER_CONSTRUCTORS']
