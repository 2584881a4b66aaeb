"""The authors' checkpoints, loaded through ``init_cfg`` inside an mmdet
Mask R-CNN config, give the authors' feature maps."""
import json

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.utils import import_modules_from_strings

from mmssm.models import from_official

REPO = __import__('pathlib').Path(__file__).resolve().parents[2]


def _vmamba_backbone(meta: dict) -> dict:
    arch = from_official('vmamba', meta['constructor_kwargs_VSSM']).backbone.arch
    return dict(type='mmssm.VMamba', arch=arch), 'features_ckpt_init'


def _mamba2d_backbone(meta: dict) -> dict:
    backbone = from_official('mamba2d', meta['constructor_kwargs_backbone']).backbone
    arch = dict(embed_dims=backbone.embed_dims, depths=backbone.depths,
                mixers=backbone.mixers)
    return dict(type='mmssm.Mamba2D', arch=arch), 'features'


CASES = {
    ('vmamba', 'micro_v2_s1', 'checkpoint.pth', 'mask_rcnn_vmamba_t_1x.py'):
    _vmamba_backbone,
    ('mamba2d', 'micro_T', 'checkpoint.ckpt', 'mask_rcnn_mamba2d_t_1x.py'):
    _mamba2d_backbone,
}


@pytest.mark.parametrize('case', sorted(CASES), ids=lambda c: c[0])
def test_detector_config_loads_the_authors_checkpoint(fixtures_dir, case):
    family, fixture_name, checkpoint, config_name = case
    fixture = fixtures_dir / family / fixture_name
    meta = json.loads((fixture / 'meta.json').read_text())
    backbone, output_name = CASES[case](meta)
    cfg = Config.fromfile(str(REPO / 'configs' / config_name))
    cfg.model.backbone = dict(
        backbone, init_cfg=dict(type='Pretrained',
                                checkpoint=str(fixture / checkpoint)))
    import_modules_from_strings(**cfg.custom_imports)
    from mmdet.registry import MODELS as DET_MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        detector = DET_MODELS.build(cfg.model)
    detector.init_weights()
    backbone_module = detector.backbone.double().eval()
    inputs = torch.load(fixture / 'inputs.pt', weights_only=True)
    outputs = torch.load(fixture / 'outputs.pt', weights_only=True)
    for name, image in inputs.items():
        with torch.no_grad():
            features = backbone_module(image.double())
        for index, feature in enumerate(features):
            reference = outputs[f'{name}/{output_name}.{index}']
            scale = max(1.0, reference.abs().max().item())
            error = (feature - reference).abs().max().item()
            assert error <= 1e-5 * scale, (name, index, error)
