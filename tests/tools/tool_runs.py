"""Helpers of the tool tests: derived configs, subprocess runs, logs.

The tests run the real ``tools/train.py`` / ``tools/test.py`` as
subprocesses on the shapes datasets of ``tools/data/`` with the tiny configs
in ``tests/tools/configs/`` and a tiny backbone of each mmssm family.
"""
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIGS = Path(__file__).resolve().parent / 'configs'

# Tiny backbone of each family: (config dict, plain ViT-like backbone?).
TINY_BACKBONES = {
    'VMamba': (dict(
        type='mmssm.VMamba',
        arch=dict(embed_dims=8, depths=(1, 1, 1, 1), d_state=1,
                  ssm_ratio=1.0, mlp_ratio=2.0, version='v2'),
        out_indices=(0, 1, 2, 3)), False),
    'V2MPyramid': (dict(
        type='mmssm.V2MPyramid',
        arch=dict(embed_dims=8, depths=(1, 1, 1, 1), d_state=1,
                  ssm_ratio=1.0, mlp_ratio=2.0),
        out_indices=(0, 1, 2, 3)), False),
    'Mamba2D': (dict(
        type='mmssm.Mamba2D',
        arch=dict(embed_dims=(8, 16, 32, 32), depths=(1, 1, 1, 1)),
        d_state=4,
        head_dim=8,
        out_indices=(0, 1, 2, 3)), False),
    'Vim': (dict(
        type='mmssm.Vim',
        arch=dict(embed_dims=16, num_layers=4, d_state=4),
        img_size=64,
        out_indices=(0, 1, 2, 3)), True),
    'V2M': (dict(
        type='mmssm.V2M',
        arch=dict(embed_dims=16, num_layers=4, d_state=4),
        img_size=64,
        out_indices=(0, 1, 2, 3)), True),
}


def load_tool(name: str) -> ModuleType:
    """Imports ``tools/<name>.py`` as a module (tools/ is not a package).

    Args:
        name: The tool's path under tools/ without ``.py``, e.g.
            ``'benchmark'`` or ``'analysis/get_flops'``.
    """
    path = REPO_ROOT / 'tools' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def registered_family(name: str) -> bool:
    """Whether mmssm registers backbone ``name``.

    Args:
        name: Registry name, e.g. ``'VMamba'``.

    Returns:
        True if ``mmssm.models`` registers it.
    """
    import mmssm.models  # noqa: F401
    from mmssm.registry import MODELS
    return name in MODELS.module_dict


def require_family(name: str) -> None:
    """Fail the calling test if backbone family ``name`` is not registered.

    Args:
        name: Registry name, e.g. ``'V2MPyramid'``.
    """
    if not registered_family(name):
        pytest.fail(f'mmssm.{name} is not registered by mmssm.models')


def backbone_out_channels(backbone_cfg: dict) -> list[int]:
    """Build a backbone config and read its ``out_channels``.

    Args:
        backbone_cfg: ``type='mmssm.X'`` config dict.

    Returns:
        The channels of its outputs.
    """
    import mmssm.models  # noqa: F401
    from mmengine.registry import DefaultScope

    from mmssm.registry import MODELS
    cfg = dict(backbone_cfg)
    cfg['type'] = cfg['type'].split('.', 1)[1]
    with DefaultScope.overwrite_default_scope('mmssm'):
        return list(MODELS.build(cfg).out_channels)


def write_derived_config(path: Path, base: str, data_root: Path,
                         backbone: dict, task: str,
                         plain: bool = False) -> Path:
    """Write a config deriving from a tiny config with data and backbone set.

    Args:
        path: File to write.
        base: ``'mask_rcnn_tiny.py'`` or ``'upernet_tiny.py'``.
        data_root: Root of the dataset made by ``tools/data``.
        backbone: Backbone config dict.
        task: ``'det'`` or ``'seg'``.
        plain: Use layer-wise lr decay (plain backbones, segmentation).

    Returns:
        ``path``.
    """
    channels = backbone_out_channels(backbone)
    lines = [
        f"_base_ = [{str(TINY_CONFIGS / base)!r}]",
        f'data_root = {str(data_root) + "/"!r}',
        'train_dataloader = dict(dataset=dict(data_root=data_root))',
        'val_dataloader = dict(dataset=dict(data_root=data_root))',
        'test_dataloader = val_dataloader',
        f'backbone = {backbone!r}',
    ]
    if task == 'det':
        lines += [
            "val_evaluator = dict(ann_file=data_root + "
            "'annotations/instances_val2017.json')",
            'test_evaluator = val_evaluator',
            'model = dict(backbone=dict(_delete_=True, **backbone), '
            f'neck=dict(in_channels={channels}))',
        ]
    else:
        lines += [
            'model = dict(backbone=dict(_delete_=True, **backbone), '
            f'decode_head=dict(in_channels={channels}), '
            f'auxiliary_head=dict(in_channels={channels[2]}))',
        ]
        if plain:
            lines += [
                "custom_imports = dict(imports=['mmssm.models', "
                "'mmssm.utils.layer_decay'], allow_failed_imports=False)",
                "optim_wrapper = dict(constructor="
                "'mmssm.LayerDecayOptimWrapperConstructor', "
                'paramwise_cfg=dict(layer_decay_rate=0.9))',
            ]
    path.write_text('\n'.join(lines) + '\n')
    return path


def run_tool(args: list[str], cwd: Path = REPO_ROOT,
             env: Optional[dict] = None,
             expect_ok: Optional[bool] = True) -> subprocess.CompletedProcess:
    """Run a command of the repository and return its result.

    Args:
        args: Command line, e.g. ``[sys.executable, 'tools/train.py', ...]``.
        cwd: Working directory.
        env: Extra environment variables.
        expect_ok: Fail the test (showing the output tail) on a non-zero
            exit if True, on a zero exit if False; None: the caller checks.

    Returns:
        The completed process (stdout and stderr merged into ``stdout``).
    """
    # One thread: the tensors are tiny, and OpenMP's barriers cost more than
    # they save (tenfold when other processes compete for the 2 cores).
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    full_env.update(env or {})
    result = subprocess.run(
        args, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=900)
    if expect_ok is not None and (result.returncode == 0) != expect_ok:
        pytest.fail(f'{" ".join(map(str, args))} exited with '
                    f'{result.returncode}:\n{result.stdout[-6000:]}')
    return result


def train_command(config: Path, work_dir: Path, *extra: str) -> list[str]:
    """The ``tools/train.py`` command line of a test run."""
    return [sys.executable, 'tools/train.py', str(config), '--work-dir',
            str(work_dir), *extra]


def eval_command(config: Path, checkpoint: Path, work_dir: Path,
                 *extra: str) -> list[str]:
    """The ``tools/test.py`` command line of a test run."""
    return [sys.executable, 'tools/test.py', str(config), str(checkpoint),
            '--work-dir', str(work_dir), *extra]


def read_records(work_dir: Path) -> list[dict]:
    """The logged scalars of a run (``vis_data/scalars.json``).

    Args:
        work_dir: The run's work directory (one run in it).

    Returns:
        One dict per record: training iterations (with ``loss`` and ``lr``)
        and evaluations (with the metrics), each with its ``step``.
    """
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert len(files) == 1, f'expected one run in {work_dir}, got {files}'
    return [json.loads(line) for line in files[0].read_text().splitlines()]


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
