"""Tests of the base backbone: Pretrained loading, key selection, reports."""
import pytest
import torch
from torch import nn

from mmssm.models.backbones.base import SSMBackbone
from mmssm.models.utils.checkpoint import CheckpointError


class _Toy(SSMBackbone):
    """A two-layer backbone whose 'official' checkpoints call layers 'blk'."""

    pretrained_fresh_patterns = ('out_norm.*', )

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.layers = nn.ModuleList([nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)])
        self.out_norm = nn.GroupNorm(1, 4)
        self.out_channels = (4, )
        self.out_strides = (1, )

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return (self.out_norm(x), )

    def _freeze_stages(self):
        """The toy has nothing to freeze."""

    def get_layer_depth(self, param_name, prefix=''):
        return 0, 1

    def convert_checkpoint(self, state_dict):
        return {k.replace('blk.', 'layers.'): v for k, v in state_dict.items()}


def _official_state(model):
    return {
        k.replace('layers.', 'blk.'): torch.randn_like(v)
        for k, v in model.state_dict().items() if k.startswith('layers.')
    }


def test_pretrained_official_file_with_fresh_output_norm(tmp_path):
    source = _Toy()
    official = _official_state(source)
    path = tmp_path / 'official.pth'
    torch.save({'model': official, 'epoch': 3}, path)
    model = _Toy(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert torch.equal(model.layers[1].weight, official['blk.1.weight'])
    assert sorted(model.last_load_report.fresh) == [
        'out_norm.bias', 'out_norm.weight'
    ]
    assert model.init_cfg['type'] == 'Pretrained'


def test_pretrained_whole_detector_checkpoint_takes_backbone_keys(tmp_path):
    source = _Toy()
    state = {f'backbone.{k}': torch.randn_like(v)
             for k, v in source.state_dict().items()}
    state['neck.conv.weight'] = torch.randn(2)
    path = tmp_path / 'detector.pth'
    torch.save({'state_dict': state, 'meta': {}}, path)
    model = _Toy(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert torch.equal(model.out_norm.weight, state['backbone.out_norm.weight'])
    assert model.last_load_report.unexpected == []


def test_pretrained_explicit_prefix(tmp_path):
    source = _Toy()
    state = {f'encoder.{k}': torch.randn_like(v)
             for k, v in source.state_dict().items()}
    path = tmp_path / 'prefixed.pth'
    torch.save(state, path)
    model = _Toy(init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='encoder.'))
    model.init_weights()
    assert torch.equal(model.layers[0].bias, state['encoder.layers.0.bias'])
    bad = _Toy(init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='nothing.'))
    with pytest.raises(KeyError, match='nothing.'):
        bad.init_weights()


def test_pretrained_missing_parameter_is_an_error_unless_partial(tmp_path):
    source = _Toy()
    official = _official_state(source)
    del official['blk.1.bias']
    path = tmp_path / 'partial.pth'
    torch.save({'model': official}, path)
    model = _Toy(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match="layers.1.bias"):
        model.init_weights()
    partial = _Toy(init_cfg=dict(
        type='Pretrained', checkpoint=str(path), allow_partial=True))
    partial.init_weights()
    assert partial.last_load_report.missing == ['layers.1.bias']


def test_pretrained_missing_file_names_the_path(tmp_path):
    model = _Toy(init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'absent.pth')))
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        model.init_weights()


def test_check_out_indices():
    assert SSMBackbone._check_out_indices((3, -4, 1), 4) == (0, 1, 3)
    with pytest.raises(ValueError, match='out of range'):
        SSMBackbone._check_out_indices((4, ), 4)
    with pytest.raises(ValueError, match='duplicates'):
        SSMBackbone._check_out_indices((1, -3), 4)
