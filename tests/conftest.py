"""Shared pytest fixtures and markers of the mmssm test suite."""
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    """Folder of the official-implementation parity fixtures.

    ``MMSSM_FIXTURES`` overrides the default ``<repo>/../shared/fixtures``.
    """
    return Path(os.environ.get('MMSSM_FIXTURES',
                               REPO_ROOT.parent / 'shared' / 'fixtures'))


@pytest.fixture(scope='session')
def fixtures_dir() -> Path:
    """The fixtures folder; skips where absent unless CI demands it."""
    root = fixtures_root()
    if not root.is_dir():
        if os.environ.get('MMSSM_REQUIRE_FIXTURES') == '1':
            pytest.fail(f'parity fixtures expected at {root} '
                        '(MMSSM_REQUIRE_FIXTURES=1)')
        pytest.skip(f'parity fixtures not found at {root}')
    return root


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _restore_default_scope():
    """Undo registry default scopes a test leaves behind.

    Building an mmdet/mmseg/mmpretrain config sets a process-wide default
    scope; without this, a later test building ``type='Vim'`` would look in
    that scope. Restored the way ``DefaultScope.overwrite_default_scope`` does.
    """
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict = saved
