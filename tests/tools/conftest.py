"""Fixtures of the tool tests: the tiny shapes datasets of ``tools/data``.

pytest runs with ``--import-mode=importlib``, which puts no test folder on
``sys.path``: this file adds ``tools/data`` (the dataset writers) and its own
folder (``tool_runs``, the helpers the tests import).
"""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in (HERE.parents[1] / 'tools' / 'data', HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from make_ade20k import make_ade20k  # noqa: E402
from make_coco import make_coco  # noqa: E402


@pytest.fixture(scope='session')
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes dataset in COCO format: 8 train / 4 val images of 64x64."""
    root = tmp_path_factory.mktemp('coco')
    make_coco(root, num_train=8, num_val=4, size=(64, 64), seed=0)
    return root


@pytest.fixture(scope='session')
def ade_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes dataset in ADE20K layout: 4 train / 2 val images of 64x96."""
    root = tmp_path_factory.mktemp('ade')
    make_ade20k(root, num_train=4, num_val=2, size=(64, 96), seed=0)
    return root
