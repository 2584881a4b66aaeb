"""Registries of the ``mmssm`` scope.

Each registry is a child of mmengine's root registry of the same kind, so a
config of any OpenMMLab 2.0 project (mmdet, mmseg, mmpretrain) can build an
mmssm module with ``type='mmssm.<Name>'`` after
``custom_imports=dict(imports=['mmssm.models'])``.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope='mmssm', locations=['mmssm.models'])

__all__ = ['MODELS']
