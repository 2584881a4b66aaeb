"""Every experiment config parses, follows the papers' recipe, and wires the
backbone's real output channels into the neck/heads."""
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import mmssm.models  # noqa: F401
from mmssm.registry import MODELS

CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs'

DET_MODELS = ('v2m_s', 'v2m_b', 'vmamba_t', 'vmamba_s', 'vmamba_b',
              'mamba2d_n', 'mamba2d_t', 'mamba2d_s', 'vim_s', 'v2m_plain_s')
SEG_MODELS = ('v2m_plain_t', 'v2m_plain_s', 'v2m_s', 'v2m_b', 'vim_t',
              'vim_s', 'vmamba_t', 'vmamba_s', 'vmamba_b', 'mamba2d_n',
              'mamba2d_t', 'mamba2d_s')
PLAIN_TYPES = ('mmssm.Vim', 'mmssm.V2M')
DET_CONFIGS = [f'mask_rcnn_{m}_{s}.py' for m in DET_MODELS
               for s in ('1x', '3x')]
SEG_CONFIGS = [f'upernet_{m}_160k_ade20k.py' for m in SEG_MODELS]


def test_config_set_is_complete() -> None:
    found = {p.name for p in CONFIG_DIR.glob('*.py')}
    assert found == set(DET_CONFIGS) | set(SEG_CONFIGS)


def header(path: Path) -> str:
    """The leading comment block of a config, as one line of text."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith('#'):
            break
        lines.append(line.lstrip('#').strip())
    return ' '.join(lines)


def check_common(path: Path, cfg: Config) -> None:
    """Checks shared by detection and segmentation configs."""
    assert 'mmssm.models' in cfg.custom_imports['imports']
    assert cfg.custom_imports['allow_failed_imports'] is False
    backbone = cfg.model.backbone
    assert backbone.type.startswith('mmssm.')
    checkpoint = backbone.init_cfg['checkpoint']
    assert backbone.init_cfg['type'] == 'Pretrained'
    assert checkpoint.startswith('checkpoints/')
    text = header(path)
    assert 'Reproduces: ' in text
    assert f'ImageNet checkpoint expected at {checkpoint}:' in text
    rate = re.search(r'Drop-path rate: ([0-9.]+)', text)
    assert rate and float(rate.group(1)) == backbone.drop_path_rate
    custom_keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    for key in ('norm', 'pos_embed', 'cls_token'):
        assert custom_keys[key]['decay_mult'] == 0.0


def backbone_channels(backbone_cfg: dict) -> tuple[int, ...]:
    """Build the full-size backbone on the meta device: its out_channels."""
    cfg = dict(backbone_cfg)
    cfg.pop('init_cfg')
    cfg['type'] = cfg['type'].split('.', 1)[1]
    if cfg['type'] not in MODELS.module_dict:
        pytest.fail(f"mmssm.{cfg['type']} is not registered by mmssm.models")
    with torch.device('meta'):
        backbone = MODELS.build(cfg)
    assert len(backbone.out_strides) == 4
    assert tuple(backbone.out_strides) == (4, 8, 16, 32)
    return tuple(backbone.out_channels)


@pytest.mark.parametrize('name', DET_CONFIGS)
def test_mask_rcnn_config(name: str) -> None:
    path = CONFIG_DIR / name
    cfg = Config.fromfile(path)
    check_common(path, cfg)
    assert cfg.default_scope == 'mmdet'
    assert cfg.model.type == 'MaskRCNN'
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == (
        'AdamW', 1e-4, 0.05)
    # batch 16 = 8 GPUs x 2 images
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and not warmup.by_epoch
    if name.endswith('_1x.py'):
        assert cfg.train_cfg.max_epochs == 12
        assert steps.milestones == [8, 11]
        assert 'RandomChoice' not in str(cfg.train_dataloader.dataset.pipeline)
    else:
        assert cfg.train_cfg.max_epochs == 36
        assert steps.milestones == [27, 33]
        assert 'RandomChoice' in str(cfg.train_dataloader.dataset.pipeline)
    assert cfg.model.roi_head.bbox_head.num_classes == 80
    assert tuple(cfg.model.neck.in_channels) == backbone_channels(
        cfg.model.backbone)


@pytest.mark.parametrize('name', SEG_CONFIGS)
def test_upernet_config(name: str) -> None:
    path = CONFIG_DIR / name
    cfg = Config.fromfile(path)
    check_common(path, cfg)
    assert cfg.default_scope == 'mmseg'
    assert cfg.model.decode_head.type == 'UPerHead'
    assert cfg.model.decode_head.num_classes == 150
    assert cfg.train_cfg.max_iters == 160000
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == (
        'AdamW', 6e-5, 0.01)
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = 16
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end) == ('LinearLR', 1500)
    assert (poly.type, poly.begin, poly.end) == ('PolyLR', 1500, 160000)
    assert cfg.model.data_preprocessor.size == (512, 512)
    assert 'TestTimeAug' in str(cfg.tta_pipeline)
    assert cfg.tta_model.type == 'SegTTAModel'
    plain = cfg.model.backbone.type in PLAIN_TYPES
    assert (cfg.optim_wrapper.get('constructor') ==
            'mmssm.LayerDecayOptimWrapperConstructor') == plain
    if plain:
        assert 'mmssm.utils.layer_decay' in cfg.custom_imports['imports']
        assert 0 < cfg.optim_wrapper.paramwise_cfg.layer_decay_rate < 1
    channels = backbone_channels(cfg.model.backbone)
    assert tuple(cfg.model.decode_head.in_channels) == channels
    assert cfg.model.auxiliary_head.in_channels == channels[
        cfg.model.auxiliary_head.in_index]
