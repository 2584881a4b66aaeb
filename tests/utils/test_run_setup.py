"""mmssm.utils.run_setup: the early checks of tools/train.py and test.py."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmssm.utils import run_setup
from mmssm.utils.run_setup import (check_backbone_registered,
                                   check_checkpoint_file, check_dataset_paths,
                                   check_pretrained_checkpoints,
                                   last_checkpoint, prepare_cpu_distributed)


def coco_like(root: Path) -> Path:
    """Create the folders and annotation file a COCO config names."""
    (root / 'annotations').mkdir(parents=True)
    (root / 'annotations' / 'instances_val2017.json').write_text('{}')
    (root / 'val2017').mkdir()
    return root


def loader(**dataset) -> dict:
    """A dataloader config around one dataset config."""
    return dict(batch_size=1, dataset=dataset)


def test_dataset_paths_pass_when_present(tmp_path: Path) -> None:
    root = coco_like(tmp_path / 'coco')
    dataset = dict(data_root=str(root),
                   ann_file='annotations/instances_val2017.json',
                   data_prefix=dict(img='val2017/'))
    cfg = Config(dict(val_dataloader=loader(**dataset),
                      test_dataloader=None))
    check_dataset_paths(cfg, ['val_dataloader', 'test_dataloader'])


@pytest.mark.parametrize('broken, message', [
    (dict(data_root='nowhere'),
     "dataset folder '{root}/nowhere' (val_dataloader.dataset.data_root)"),
    (dict(ann_file='annotations/missing.json'),
     "annotation file '{root}/coco/annotations/missing.json' "
     '(val_dataloader.dataset.ann_file)'),
    (dict(data_prefix=dict(img='train2017/')),
     "dataset folder '{root}/coco/train2017' "
     '(val_dataloader.dataset.data_prefix.img)'),
])
def test_dataset_paths_name_what_is_missing(tmp_path: Path, broken: dict,
                                            message: str) -> None:
    root = coco_like(tmp_path / 'coco')
    dataset = dict(data_root=str(root),
                   ann_file='annotations/instances_val2017.json',
                   data_prefix=dict(img='val2017/'))
    dataset.update(broken)
    if broken.get('data_root'):
        dataset['data_root'] = str(tmp_path / broken['data_root'])
    cfg = Config(dict(val_dataloader=loader(**dataset)))
    with pytest.raises(FileNotFoundError) as error:
        check_dataset_paths(cfg, ['val_dataloader'])
    assert message.format(root=tmp_path) in str(error.value)


def test_dataset_wrappers_are_searched(tmp_path: Path) -> None:
    good = coco_like(tmp_path / 'good')
    cfg = Config(dict(train_dataloader=loader(
        type='RepeatDataset', times=2, dataset=dict(
            type='ConcatDataset', datasets=[
                dict(data_root=str(good)),
                dict(data_root=str(tmp_path / 'bad')),
            ]))))
    with pytest.raises(FileNotFoundError,
                       match=r'train_dataloader\.dataset\.dataset\.'
                       r'datasets\[1\]\.data_root'):
        check_dataset_paths(cfg, ['train_dataloader'])


def test_pretrained_checkpoint(tmp_path: Path) -> None:
    present = tmp_path / 'present.pth'
    present.write_bytes(b'')
    missing = tmp_path / 'missing.pth'

    def cfg(init_cfg) -> Config:
        return Config(dict(model=dict(backbone=dict(init_cfg=init_cfg))))

    check_pretrained_checkpoints(cfg(None))
    check_pretrained_checkpoints(
        cfg(dict(type='Pretrained', checkpoint=str(present))))
    check_pretrained_checkpoints(
        cfg(dict(type='Pretrained', checkpoint='https://x.org/a.pth')))
    check_pretrained_checkpoints(
        cfg([dict(type='Normal', layer='Linear'),
             dict(type='Pretrained', checkpoint=str(present))]))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        check_pretrained_checkpoints(
            cfg([dict(type='Normal', layer='Linear'),
                 dict(type='Pretrained', checkpoint=str(missing))]))
    with pytest.raises(ValueError, match="needs a 'checkpoint' path"):
        check_pretrained_checkpoints(cfg(dict(type='Pretrained')))


def test_checkpoint_file(tmp_path: Path) -> None:
    check_checkpoint_file(None, 'checkpoint')
    check_checkpoint_file('s3://bucket/model.pth', 'checkpoint')
    with pytest.raises(FileNotFoundError,
                       match="--resume checkpoint '.*nope.pth' does not"):
        check_checkpoint_file(str(tmp_path / 'nope.pth'),
                              '--resume checkpoint')


def test_backbone_registered() -> None:
    check_backbone_registered(
        dict(backbone=dict(type='mmssm.Mamba2D')), 'mmdet')
    check_backbone_registered(dict(backbone=dict(type='ResNet')), 'mmdet')
    with pytest.raises(KeyError, match=r"'mmssm\.Mamba3D' is not a "
                       r'registered backbone; mmssm provides: .*'
                       r'mmssm\.Mamba2D'):
        check_backbone_registered(
            dict(backbone=dict(type='mmssm.Mamba3D')), 'mmseg')


def test_cpu_distributed_needs_gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    prepare_cpu_distributed(cfg, 'none')
    with pytest.raises(ValueError, match='needs the gloo backend'):
        prepare_cpu_distributed(cfg, 'pytorch')

    initialised = []
    monkeypatch.setattr(run_setup.torch_dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(run_setup.torch_dist, 'init_process_group',
                        lambda **kwargs: initialised.append(kwargs))
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '2')
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='gloo'))))
    prepare_cpu_distributed(cfg, 'pytorch')
    assert initialised == [dict(backend='gloo', rank=1, world_size=2)]
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.model_wrapper_cfg.type == 'MMDistributedDataParallel'


def test_last_checkpoint(tmp_path: Path) -> None:
    assert last_checkpoint(str(tmp_path)) is None
    (tmp_path / 'last_checkpoint').write_text(f'{tmp_path}/epoch_3.pth')
    assert last_checkpoint(str(tmp_path)) == f'{tmp_path}/epoch_3.pth'
