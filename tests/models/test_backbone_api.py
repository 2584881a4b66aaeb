"""One feature API that every mmssm backbone honours (timm-style suite).

Every registered backbone is built with a small custom arch and must: return
a tuple of NCHW maps whose channels and strides its ``out_channels`` and
``out_strides`` attributes state, for any H×W; train (every trainable
parameter receives a gradient); expose its ``arch_zoo``; name a bad arch in
its error; give every parameter a layer depth; and build from an mmdet and an
mmseg config through ``custom_imports``.
"""
import math

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.utils import import_modules_from_strings

import mmssm.models  # noqa: F401
from mmssm.models.backbones.base import SSMBackbone
from mmssm.registry import MODELS

SMALL_ARCHS = {
    'VMamba': dict(arch=dict(embed_dims=8, depths=(1, 1, 1, 1), d_state=1,
                             ssm_ratio=1.0, mlp_ratio=2.0, version='v2')),
    'V2MPyramid': dict(arch=dict(embed_dims=8, depths=(1, 1, 1, 1),
                                 d_state=1, ssm_ratio=1.0, mlp_ratio=2.0)),
    'Mamba2D': dict(arch=dict(embed_dims=(8, 8, 32, 32), depths=(1, 1, 1, 1)),
                    d_state=2),
    'Vim': dict(arch=dict(embed_dims=16, num_layers=4, d_state=2),
                out_indices=(0, 1, 2, 3)),
    'V2M': dict(arch=dict(embed_dims=16, num_layers=4, d_state=2),
                out_indices=(0, 1, 2, 3)),
}


def test_every_registered_backbone_is_covered():
    registered = {
        name for name, cls in MODELS.module_dict.items()
        if isinstance(cls, type) and issubclass(cls, SSMBackbone)
    }
    assert registered == set(SMALL_ARCHS)


def _build(name: str, **overrides) -> SSMBackbone:
    return MODELS.build(dict(type=name, **SMALL_ARCHS[name], **overrides))


@pytest.mark.parametrize('name', sorted(SMALL_ARCHS))
def test_outputs_match_declared_channels_and_strides(name):
    torch.manual_seed(0)
    model = _build(name)
    model.train()
    height, width = 67, 45
    outputs = model(torch.randn(1, 3, height, width))
    assert isinstance(outputs, tuple)
    assert len(outputs) == len(model.out_channels) == len(model.out_strides)
    for out, channels, stride in zip(outputs, model.out_channels,
                                     model.out_strides):
        assert out.ndim == 4 and out.shape[:2] == (1, channels)
        # Plain backbones pad to a multiple of the patch size first.
        for size, length in ((out.shape[2], height), (out.shape[3], width)):
            assert math.floor(length / stride) <= size
            assert size <= math.ceil(math.ceil(length / 16) * 16 / stride)
    loss = sum(out.square().mean() for out in outputs)
    loss.backward()
    without_grad = [
        n for n, p in model.named_parameters()
        if p.requires_grad and p.grad is None
    ]
    assert without_grad == []


@pytest.mark.parametrize('name', sorted(SMALL_ARCHS))
def test_arch_zoo_and_bad_arch_errors(name):
    cls = MODELS.get(name)
    assert isinstance(cls.arch_zoo, dict) and cls.arch_zoo
    with pytest.raises((ValueError, KeyError), match='no-such-arch'):
        MODELS.build(dict(type=name, arch='no-such-arch'))
    with pytest.raises((ValueError, KeyError, TypeError)):
        MODELS.build(dict(type=name, arch=dict(bogus_key=1)))


@pytest.mark.parametrize('name', sorted(SMALL_ARCHS))
def test_layer_depth_covers_every_parameter(name):
    model = _build(name)
    depths = [model.get_layer_depth(n, prefix='') for n, _ in
              model.named_parameters()]
    num_layers = {total for _, total in depths}
    assert len(num_layers) == 1
    total = num_layers.pop()
    assert all(0 <= layer < total for layer, _ in depths)
    prefixed = model.get_layer_depth(
        'backbone.' + next(iter(dict(model.named_parameters()))),
        prefix='backbone.')
    assert prefixed == depths[0]


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('name', sorted(SMALL_ARCHS))
def test_builds_from_downstream_config(scope, name, tmp_path):
    config_file = tmp_path / 'cfg.py'
    config_file.write_text(
        "custom_imports = dict(imports=['mmssm.models'], "
        'allow_failed_imports=False)\n'
        f'backbone = dict(type="mmssm.{name}", '
        f'**{SMALL_ARCHS[name]!r})\n')
    cfg = Config.fromfile(str(config_file))
    import_modules_from_strings(**cfg.custom_imports)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        backbone = registry.build(cfg.backbone)
    assert type(backbone).__name__ == name


def test_unknown_backbone_name_is_a_clear_error():
    from mmdet.registry import MODELS as DET_MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        with pytest.raises(KeyError, match='NoSuchBackbone'):
            DET_MODELS.build(dict(type='mmssm.NoSuchBackbone'))


def test_import_needs_no_mmdet_or_mmseg():
    import subprocess
    import sys
    code = ("import sys; sys.modules['mmdet'] = None; "
            "sys.modules['mmseg'] = None; sys.modules['mmpretrain'] = None; "
            'import mmssm.models, mmssm.ops; print("imported")')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'imported' in result.stdout
