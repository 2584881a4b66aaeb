"""The mmpretrain MlpClsHead computes the authors' Mamba2D head."""
import torch

from mmssm.models.backbones.mamba2d import Mamba2DClsHead
from mmssm.models.layers.mlp_cls_head import MlpClsHead


def test_mlp_cls_head_equals_the_official_head():
    torch.manual_seed(0)
    official = Mamba2DClsHead(in_channels=12, num_classes=5).eval()
    head = MlpClsHead(num_classes=5, in_channels=12).eval()
    missing = head.load_state_dict(official.state_dict(), strict=False)
    assert not missing.missing_keys and not missing.unexpected_keys
    feature_map = torch.randn(3, 12, 4, 6)
    pooled = feature_map.mean(dim=(-2, -1))
    torch.testing.assert_close(head((pooled, )), official((feature_map, )))
    assert sum(p.numel() for p in head.parameters()) == sum(
        p.numel() for p in official.parameters())
