"""Evaluate a trained detector, segmentor or classifier.

One entry for mmdet, mmseg and mmpretrain configs: the registry scope comes
from the config's ``default_scope``. Before the Runner is built, the tool
checks that the backbone type is registered and that the checkpoint and the
test dataset exist. The backbone's ImageNet checkpoint
(``model.backbone.init_cfg``) is not read: the weights come from
``CHECKPOINT``.

Examples:
    python tools/test.py configs/mask_rcnn_v2m_s_1x.py work_dirs/x/epoch_12.pth
    python tools/test.py configs/upernet_v2m_s_160k_ade20k.py CKPT --tta
    torchrun --nproc_per_node 8 tools/test.py CONFIG CKPT --launcher pytorch
"""
import argparse
import json

from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmssm.utils import register_mmengine_safe_globals
from mmssm.utils.run_setup import (check_backbone_registered,
                                   check_checkpoint_file, check_dataset_paths,
                                   finish_distributed, init_config_scope,
                                   load_tool_config, parse_tool_args,
                                   prepare_cpu_distributed)


def parse_args() -> argparse.Namespace:
    """Command line of the tool.

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='Evaluate a checkpoint with an mmssm config (mmdet, mmseg '
        'or mmpretrain)')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir',
        help='folder for the evaluation logs (default: '
        'work_dirs/<config name>)')
    parser.add_argument(
        '--tta',
        action='store_true',
        help="test-time augmentation: the config's tta_model and "
        'tta_pipeline (multi-scale + flip)')
    return parse_tool_args(parser)


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line options.

    Args:
        args: Parsed command line.

    Returns:
        The final config.

    Raises:
        ValueError: If ``--tta`` is given for a config without TTA settings.
    """
    cfg = load_tool_config(args)
    cfg.load_from = args.checkpoint
    # The weights come from the checkpoint: the ImageNet file is not needed.
    if 'backbone' in cfg.get('model', {}):
        cfg.model.backbone.init_cfg = None
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError(
                f'--tta needs tta_model and tta_pipeline in {args.config}')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    return cfg


def main() -> None:
    """Check the inputs, evaluate, and say where the logs went."""
    args = parse_args()
    register_mmengine_safe_globals()
    cfg = build_config(args)
    scope = init_config_scope(cfg)
    check_backbone_registered(cfg.model.module if args.tta else cfg.model,
                              scope)
    check_checkpoint_file(args.checkpoint, 'checkpoint')
    check_dataset_paths(cfg, ['test_dataloader'])
    prepare_cpu_distributed(cfg, args.launcher)

    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    metrics = runner.test()

    if is_main_process():
        # numpy scalars print as plain numbers in JSON.
        print(f'Metrics: {json.dumps(metrics, default=float)}')
        print(f'Logs: {runner.log_dir}')
    del runner  # its model holds the process group (finish_distributed)
    finish_distributed()


if __name__ == '__main__':
    main()
