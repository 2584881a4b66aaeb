"""mmssm.LayerDecayOptimWrapperConstructor: layer-wise lr decay from the
backbone of a detector/segmentor."""
import pytest
import torch
from torch import nn

import mmssm.models  # noqa: F401
from mmssm.registry import MODELS
from mmssm.utils.layer_decay import LayerDecayOptimWrapperConstructor

BASE_LR = 0.5
DECAY = 0.8


class Segmentor(nn.Module):
    """A backbone plus a head, like an mmseg EncoderDecoder."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = nn.Linear(3, 2)


def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    constructor = LayerDecayOptimWrapperConstructor(
        optim_wrapper_cfg=dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay_rate=DECAY))
    return constructor(model).optimizer


@pytest.mark.parametrize('family', ['Vim', 'V2M'])
def test_lrs_follow_backbone_depths(family: str) -> None:
    if family not in MODELS.module_dict:
        pytest.fail(f'mmssm.{family} is not registered by mmssm.models')
    backbone = MODELS.build(
        dict(type=family, arch=dict(embed_dims=16, num_layers=4, d_state=4),
             img_size=32, out_indices=(0, 1, 2, 3)))
    model = Segmentor(backbone)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = build_optimizer(model).param_groups
    assert sum(len(g['params']) for g in groups) == len(names)
    layer_ids = set()
    for group in groups:
        (param, ) = group['params']
        name = names[id(param)]
        layer_id, num_layers = backbone.get_layer_depth(name, 'backbone.')
        layer_ids.add(layer_id)
        expected = BASE_LR * DECAY**(num_layers - layer_id - 1)
        assert group['lr'] == pytest.approx(expected), name
        if name.startswith('decode_head.'):
            assert group['lr'] == pytest.approx(BASE_LR)
    # Several depths, so the decay is exercised, not constant.
    assert len(layer_ids) >= 4


def test_model_without_depths_is_rejected() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match='get_layer_depth'):
        build_optimizer(model)


def test_model_with_own_depths_is_used_as_is() -> None:

    class Classifier(nn.Module):

        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(2, 2)
            self.last = nn.Linear(2, 2)

        def get_layer_depth(self, name: str) -> tuple[int, int]:
            return (0 if name.startswith('first.') else 1), 2

    groups = build_optimizer(Classifier()).param_groups
    assert sorted(g['lr'] for g in groups) == pytest.approx(
        [BASE_LR * DECAY] * 2 + [BASE_LR] * 2)

