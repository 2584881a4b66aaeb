"""Layer-wise learning-rate decay for detectors and segmentors.

mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` asks the *whole
model* for ``get_layer_depth``; mmpretrain's classifiers have it, but mmdet
detectors and mmseg segmentors do not. The constructor here gives such a
model the depth function of its backbone (every mmssm backbone implements
``get_layer_depth(param_name, prefix)``, which places parameters outside the
backbone, the heads, in the last layer), so the same decay applies:
``lr = base_lr * layer_decay_rate ** (num_layers - 1 - layer_id)``.

Config::

    custom_imports = dict(
        imports=['mmssm.models', 'mmssm.utils.layer_decay'],
        allow_failed_imports=False)
    optim_wrapper = dict(
        optimizer=dict(type='AdamW', lr=6e-5, weight_decay=0.01),
        constructor='mmssm.LayerDecayOptimWrapperConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.92))
"""
from collections.abc import Callable
from typing import Optional

from mmpretrain.engine.optimizers import \
    LearningRateDecayOptimWrapperConstructor
from torch import nn

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(
        LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-wise lr decay, with depths from ``model.backbone``.

    A model with its own ``get_layer_depth`` (an mmpretrain classifier) is
    used as is; otherwise the model must have a ``backbone`` with
    ``get_layer_depth(param_name, prefix)``, called with the prefix
    ``'backbone.'``. ``paramwise_cfg`` is mmpretrain's
    (``layer_decay_rate``, ``custom_keys`` with ``decay_mult``,
    ``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``).
    """

    def add_params(self,
                   params: list[dict],
                   module: nn.Module,
                   prefix: str = '',
                   get_layer_depth: Optional[Callable] = None,
                   **kwargs) -> None:
        """Add the parameters of ``module`` with their decayed lrs.

        Args:
            params: Parameter groups, extended in place.
            module: The model (top level) or one of its children.
            prefix: Name prefix of ``module`` in the model.
            get_layer_depth: Depth function; derived from the backbone at
                the top level when not given.

        Raises:
            TypeError: If neither the model nor its backbone has
                ``get_layer_depth``.
        """
        if (prefix == '' and get_layer_depth is None
                and not hasattr(module, 'get_layer_depth')):
            backbone = getattr(module, 'backbone', None)
            if not hasattr(backbone, 'get_layer_depth'):
                raise TypeError(
                    'layer-wise lr decay needs model.get_layer_depth or '
                    f'model.backbone.get_layer_depth; {type(module).__name__}'
                    f' with backbone {type(backbone).__name__} has neither')

            def get_layer_depth(param_name: str) -> tuple[int, int]:
                return backbone.get_layer_depth(param_name, 'backbone.')

        super().add_params(
            params, module, prefix=prefix, get_layer_depth=get_layer_depth,
            **kwargs)
