"""Checks and set-up shared by ``tools/train.py`` and ``tools/test.py``.

Everything here runs before mmengine's ``Runner`` is built, so that a run
with a missing dataset, a missing checkpoint or a misspelt backbone stops
at once with one message naming what was expected, instead of after
minutes of model building (or, for a dataset, at the first evaluation).
"""
import argparse
import gc
import importlib
import os
import os.path as osp
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import MODELS, init_default_scope

SUPPORTED_SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def init_config_scope(cfg: Config) -> str:
    """Make the config's ``default_scope`` the current registry scope.

    Args:
        cfg: The run's config.

    Returns:
        The scope name (``'mmdet'``, ``'mmseg'`` or ``'mmpretrain'``).

    Raises:
        ValueError: If the config names no supported ``default_scope``.
    """
    scope = cfg.get('default_scope')
    if scope not in SUPPORTED_SCOPES:
        raise ValueError(
            f'config default_scope must be one of {SUPPORTED_SCOPES} '
            f'(detection, segmentation, classification), got {scope!r}')
    # Importing the package registers its modules' locations for lazy import.
    importlib.import_module(scope)
    init_default_scope(scope)
    return scope


def check_backbone_registered(model_cfg: dict, scope: str) -> None:
    """Fail early if ``model.backbone.type`` names no registered module.

    Args:
        model_cfg: The config's ``model`` entry (the wrapped model for
            test-time augmentation).
        scope: The registry scope of the run (see :func:`init_config_scope`).

    Raises:
        KeyError: Naming the backbone type and the backbones mmssm has.
    """
    backbone = model_cfg.get('backbone')
    if not backbone or not isinstance(backbone.get('type'), str):
        return
    backbone_type = backbone['type']
    with MODELS.switch_scope_and_registry(scope) as registry:
        found = registry.get(backbone_type)
    if found is None:
        from mmssm.registry import MODELS as MMSSM_MODELS
        known = ', '.join(f'mmssm.{name}'
                          for name in sorted(MMSSM_MODELS.module_dict))
        raise KeyError(
            f'model.backbone.type={backbone_type!r} is not a registered '
            f'backbone; mmssm provides: {known or "(none imported)"} '
            "(configs need custom_imports=dict(imports=['mmssm.models']))")


def _pretrained_checkpoints(init_cfg: Any) -> Iterator[str]:
    """Checkpoint paths of the ``Pretrained`` entries of an ``init_cfg``.

    Args:
        init_cfg: ``None``, one init config dict or a list of them.

    Yields:
        Each ``checkpoint`` value.
    """
    entries = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    for entry in entries:
        if isinstance(entry, dict) and entry.get('type') == 'Pretrained':
            yield entry.get('checkpoint')


def _is_remote(path: str) -> bool:
    """Whether a checkpoint path is a URL or another mmengine scheme."""
    return '://' in path


def check_pretrained_checkpoints(cfg: Config) -> None:
    """Fail early if the backbone's pretrained checkpoint file is missing.

    Args:
        cfg: The run's config.

    Raises:
        FileNotFoundError: Naming the expected file and the config key.
    """
    backbone = cfg.get('model', {}).get('backbone') or {}
    for checkpoint in _pretrained_checkpoints(backbone.get('init_cfg')):
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(
                "model.backbone.init_cfg of type 'Pretrained' needs a "
                f"'checkpoint' path, got {checkpoint!r}")
        if not _is_remote(checkpoint) and not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f'pretrained backbone checkpoint {checkpoint!r} '
                '(model.backbone.init_cfg.checkpoint) does not exist: put '
                'the ImageNet checkpoint named in the config header there, or '
                'train from scratch with --cfg-options '
                'model.backbone.init_cfg=None')


def check_checkpoint_file(path: Optional[str], what: str) -> None:
    """Fail early if a local checkpoint file is missing.

    Args:
        path: The checkpoint path (``None`` or a URL is not checked).
        what: What the file is for, used in the message.

    Raises:
        FileNotFoundError: Naming the file.
    """
    if path and not _is_remote(path) and not Path(path).is_file():
        raise FileNotFoundError(f'{what} {path!r} does not exist')


def _dataset_configs(dataset: Any, where: str) -> Iterator[tuple[str, dict]]:
    """The leaf dataset configs inside dataset wrappers.

    Args:
        dataset: A dataset config (possibly RepeatDataset/ConcatDataset...).
        where: Config key path of ``dataset``.

    Yields:
        ``(key path, dataset config)`` of every dataset that reads files.
    """
    if isinstance(dataset, dict) and 'dataset' in dataset:
        yield from _dataset_configs(dataset['dataset'], f'{where}.dataset')
    elif isinstance(dataset, dict) and 'datasets' in dataset:
        for index, child in enumerate(dataset['datasets']):
            yield from _dataset_configs(child, f'{where}.datasets[{index}]')
    elif isinstance(dataset, dict):
        yield where, dataset


def check_dataset_paths(cfg: Config, dataloader_keys: Sequence[str]) -> None:
    """Fail early if a dataloader's data root, annotation file or folder is
    missing.

    Args:
        cfg: The run's config.
        dataloader_keys: Top-level dataloader keys to check, e.g.
            ``('train_dataloader', 'val_dataloader')``.

    Raises:
        FileNotFoundError: Naming the missing folder/file and its config key.
    """
    for key in dataloader_keys:
        loader = cfg.get(key)
        if not loader:
            continue
        for where, dataset in _dataset_configs(loader.get('dataset'),
                                               f'{key}.dataset'):
            data_root = dataset.get('data_root')
            root = Path(data_root) if data_root else Path('.')
            if data_root and not root.is_dir():
                raise FileNotFoundError(
                    f'dataset folder {data_root!r} ({where}.data_root) does '
                    'not exist: put the dataset there, or set '
                    f'{where}.data_root with --cfg-options')
            ann_file = dataset.get('ann_file')
            if ann_file and not (root / ann_file).is_file():
                raise FileNotFoundError(
                    f'annotation file {str(root / ann_file)!r} '
                    f'({where}.ann_file) does not exist')
            prefixes = dataset.get('data_prefix') or {}
            for name, prefix in prefixes.items():
                if prefix and not (root / prefix).is_dir():
                    raise FileNotFoundError(
                        f'dataset folder {str(root / prefix)!r} '
                        f'({where}.data_prefix.{name}) does not exist')


def prepare_cpu_distributed(cfg: Config, launcher: str) -> None:
    """Set up a ``pytorch``-launched distributed run on a machine without
    CUDA.

    mmengine's launcher binds each process to a CUDA device and wraps the
    model in DDP with ``device_ids``; neither works without CUDA. Here the
    process group is created with the config's backend (which must then be
    ``'gloo'``) before the Runner, which then skips its own set-up, and DDP
    gets ``device_ids=None`` (the form for CPU modules).

    Args:
        cfg: The run's config (``model_wrapper_cfg`` is set in place).
        launcher: The ``--launcher`` value.

    Raises:
        ValueError: If the configured backend cannot run on CPU.
    """
    if launcher != 'pytorch' or torch.cuda.is_available():
        return
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend')
    if backend != 'gloo':
        raise ValueError(
            f'a distributed run on a machine without CUDA needs the gloo '
            f'backend, but env_cfg.dist_cfg.backend is {backend!r}: pass '
            '--cfg-options env_cfg.dist_cfg.backend=gloo')
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend='gloo',
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']))
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(
        type='MMDistributedDataParallel', broadcast_buffers=False)
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def finish_distributed() -> None:
    """Tear down the process group of a distributed run, if there is one.

    Neither mmengine nor torch does it at exit, and a gloo group left to the
    interpreter's shutdown aborts ranks after their work is done ("terminate
    called without an active exception": gloo's threads release tensors
    while the interpreter is being torn down). Call it after dropping the
    runner: a DistributedDataParallel model holds the group, so while it
    lives the group outlives ``destroy_process_group``; the collection here
    frees the runner's reference cycles first, and a model still alive after
    it is reported. (A two-process gloo script that kept its DDP model past
    ``destroy_process_group`` aborted at exit in 4 of 32 runs, 0 of 32
    after dropping it.) The barrier keeps a rank from tearing the group
    down while another still uses it.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        gc.collect()
        alive = sum(
            isinstance(obj, DistributedDataParallel)
            for obj in gc.get_objects())
        if alive:
            warnings.warn(
                f'{alive} DistributedDataParallel model(s) still alive at '
                'the process group\'s teardown: they hold the group, whose '
                'destruction is then left to the interpreter\'s shutdown '
                '(where gloo can abort the process); drop them (e.g. `del '
                'runner`) before finish_distributed()')
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def last_checkpoint(work_dir: str) -> Optional[str]:
    """Path of the newest checkpoint recorded by mmengine's CheckpointHook.

    Args:
        work_dir: The run's work directory.

    Returns:
        The path in ``work_dir/last_checkpoint``, or ``None`` if no
        checkpoint was saved.
    """
    record = Path(work_dir) / 'last_checkpoint'
    return record.read_text().strip() if record.is_file() else None


def parse_tool_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Add the options every tool shares, parse, and export LOCAL_RANK.

    Adds ``--cfg-options``, ``--launcher`` and ``--local_rank`` (also spelled
    ``--local-rank``, as ``torch.distributed.launch`` passes it).

    Args:
        parser: The tool's parser with its own arguments, among them
            ``config`` and ``--work-dir``.

    Returns:
        The parsed arguments.
    """
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, xxx=yyy (e.g. '
        'train_cfg.max_iters=10 model.backbone.init_cfg=None)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_tool_config(args: argparse.Namespace) -> Config:
    """Load ``args.config`` with the launcher, overrides and work dir applied.

    Args:
        args: What :func:`parse_tool_args` returned.

    Returns:
        The config; its work dir defaults to ``work_dirs/<config name>``.
    """
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg
