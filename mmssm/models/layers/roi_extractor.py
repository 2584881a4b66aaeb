"""An mmdet RoI extractor that also runs under bfloat16 autocast.

mmcv 2.1.0's RoIAlign CUDA kernel is instantiated for float32, float64 and
float16 only, so a Mask R-CNN under bfloat16 AMP stops with
``"roi_align_forward_cuda_kernel" not implemented for 'BFloat16'``. This
extractor pools bfloat16 feature maps in float32 (the heads after it run
under autocast again); every other dtype goes through unchanged. Importing
this module needs mmdet: detection configs list it in ``custom_imports``.
"""
from typing import Optional, Tuple

import torch
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

from ...registry import MODELS


@MODELS.register_module()
class BF16SafeRoIExtractor(SingleRoIExtractor):
    """mmdet's ``SingleRoIExtractor`` with RoIAlign in float32 for bfloat16.

    Takes the arguments of ``SingleRoIExtractor``.
    """

    def forward(self,
                feats: Tuple[torch.Tensor, ...],
                rois: torch.Tensor,
                roi_scale_factor: Optional[float] = None) -> torch.Tensor:
        """Pool ``rois`` from ``feats`` (float32 when ``feats`` are bf16).

        Args:
            feats: Multi-level feature maps.
            rois: ``(n, 5)`` RoIs: batch index and box.
            roi_scale_factor: Optional scale of the RoIs.

        Returns:
            The pooled RoI features.
        """
        if feats[0].dtype == torch.bfloat16:
            feats = tuple(feat.float() for feat in feats)
            rois = rois.float()
        return super().forward(feats, rois, roi_scale_factor)
