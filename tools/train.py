"""Train a detector, segmentor or classifier from an mmssm config.

One entry for mmdet, mmseg and mmpretrain configs: the registry scope comes
from the config's ``default_scope``. Before the Runner is built, the tool
checks that the backbone type is registered, that the pretrained backbone
checkpoint and the train/val datasets exist, and fails with one message
naming what is missing.

Examples:
    python tools/train.py configs/mask_rcnn_v2m_s_1x.py
    python tools/train.py CONFIG --amp --work-dir work_dirs/run1
    python tools/train.py CONFIG --resume            # newest in work_dir
    python tools/train.py CONFIG --resume PATH.pth   # a given checkpoint
    torchrun --nproc_per_node 8 tools/train.py CONFIG --launcher pytorch
"""
import argparse

import torch
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmssm.utils import register_mmengine_safe_globals
from mmssm.utils.run_setup import (check_backbone_registered,
                                   check_checkpoint_file, check_dataset_paths,
                                   check_pretrained_checkpoints,
                                   finish_distributed, init_config_scope,
                                   last_checkpoint, load_tool_config,
                                   parse_tool_args, prepare_cpu_distributed)


def parse_args() -> argparse.Namespace:
    """Command line of the tool.

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='Train a model from an mmssm config (mmdet, mmseg or '
        'mmpretrain)')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--work-dir',
        help='folder for logs and checkpoints (default: '
        'work_dirs/<config name>)')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='automatic mixed precision (AmpOptimWrapper, dynamic loss '
        'scale)')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or without a value from the '
        'newest checkpoint in the work dir')
    return parse_tool_args(parser)


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line options.

    Args:
        args: Parsed command line.

    Returns:
        The final config.
    """
    cfg = load_tool_config(args)
    if args.amp:
        if not torch.cuda.is_available():
            raise ValueError(
                "--amp needs a CUDA device: mmengine's AmpOptimWrapper does "
                'not train on the CPU')
        wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper_type == 'AmpOptimWrapper':
            print_log('AMP is already enabled in the config', logger='current')
        elif wrapper_type != 'OptimWrapper':
            raise ValueError(
                '--amp works with optim_wrapper.type OptimWrapper or '
                f'AmpOptimWrapper, got {wrapper_type!r}')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        check_checkpoint_file(args.resume, '--resume checkpoint')
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main() -> None:
    """Check the inputs, train, and say where the results went."""
    args = parse_args()
    register_mmengine_safe_globals()
    cfg = build_config(args)
    scope = init_config_scope(cfg)
    check_backbone_registered(cfg.model, scope)
    check_pretrained_checkpoints(cfg)
    if not cfg.get('resume'):
        check_checkpoint_file(cfg.get('load_from'), 'load_from checkpoint')
    check_dataset_paths(cfg, ['train_dataloader', 'val_dataloader'])
    prepare_cpu_distributed(cfg, args.launcher)

    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    runner.train()

    if is_main_process():
        print(f'Logs: {runner.log_dir}')
        print(f'Last checkpoint: {last_checkpoint(runner.work_dir)}')
    del runner  # its model holds the process group (finish_distributed)
    finish_distributed()


if __name__ == '__main__':
    main()
