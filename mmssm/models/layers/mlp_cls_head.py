"""An mmpretrain classification head with Mamba2D's released MLP head.

The authors classify with ``fc2(dropout(LayerNorm(GELU(fc1(LayerNorm(x))))))``
on the globally pooled last map; mmpretrain has no head of that form (its
``StackedLinearClsHead`` lacks the post-pool norm and swaps norm and
activation), so the ImageNet configs of Mamba2D use this one, which has the
authors' parameters exactly. Importing this module needs mmpretrain:
classification configs list it in ``custom_imports``.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from mmpretrain.models.heads import ClsHead
from torch import nn

from ...registry import MODELS


@MODELS.register_module()
class MlpClsHead(ClsHead):
    """Pooled features → LayerNorm → fc1 → GELU → LayerNorm → dropout → fc2.

    Args:
        num_classes: Number of classes.
        in_channels: Channels of the pooled features.
        mlp_ratio: Width of ``fc1`` relative to ``in_channels``.
        dropout_rate: Dropout before ``fc2``.
        init_cfg: mmengine initialisation config.
        **kwargs: ``ClsHead`` arguments (``loss``, ``topk``, ``cal_acc``).
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 mlp_ratio: int = 4,
                 dropout_rate: float = 0.0,
                 init_cfg: Optional[dict] = dict(
                     type='TruncNormal', layer='Linear', std=0.02),
                 **kwargs) -> None:
        super().__init__(init_cfg=init_cfg, **kwargs)
        if num_classes <= 0:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        hidden = in_channels * mlp_ratio
        self.pool_norm = nn.LayerNorm(in_channels)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout_rate)
        self.fc2 = nn.Linear(hidden, num_classes)

    def pre_logits(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Everything before ``fc2`` on the last pooled feature ``(B, C)``."""
        x = self.pool_norm(feats[-1])
        return self.dropout(self.norm(F.gelu(self.fc1(x))))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        return self.fc2(self.pre_logits(feats))
