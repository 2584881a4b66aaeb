"""Tests of the RoI extractor that pools bfloat16 maps in float32."""
import torch

from mmssm.models.layers.roi_extractor import BF16SafeRoIExtractor


def _extractor() -> BF16SafeRoIExtractor:
    return BF16SafeRoIExtractor(
        roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
        out_channels=8,
        featmap_strides=[4, 8])


def test_bfloat16_maps_pool_like_float32():
    torch.manual_seed(0)
    extractor = _extractor()
    feats = (torch.randn(2, 8, 32, 32), torch.randn(2, 8, 16, 16))
    rois = torch.tensor([[0, 4., 4., 60., 50.], [1, 10., 2., 120., 120.]])
    expected = extractor(tuple(f.bfloat16().float() for f in feats), rois)
    pooled = extractor(tuple(f.bfloat16() for f in feats), rois.bfloat16())
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, expected, rtol=1e-2, atol=1e-2)


def test_other_dtypes_pass_through():
    extractor = _extractor()
    feats = (torch.randn(1, 8, 32, 32, dtype=torch.float64),
             torch.randn(1, 8, 16, 16, dtype=torch.float64))
    rois = torch.tensor([[0, 4., 4., 60., 50.]], dtype=torch.float64)
    assert extractor(feats, rois).dtype == torch.float64
