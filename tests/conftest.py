"""Shared pytest fixtures and markers of the mmssm test suite."""
import os
from pathlib import Path
from typing import List

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


def _bf16_autocast_errors(model: torch.nn.Module,
                          image: torch.Tensor) -> List[float]:
    """Relative error of each output of ``model(image)`` under CPU bfloat16
    autocast against float32, with the norm scales and shifts moved away
    from their 1 / 0 initialisation (so that a norm dropping them under
    autocast would show). The model is put in eval mode.
    """
    model.eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'norm' in name:
                param.normal_(1.0 if name.endswith('weight') else 0.0, 0.5)
        reference = model(image)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outputs = model(image)
    return [((out.float() - ref).norm() / ref.norm()).item()
            for out, ref in zip(outputs, reference)]


@pytest.fixture
def bf16_autocast_errors():
    """:func:`_bf16_autocast_errors`, for the backbone tests."""
    return _bf16_autocast_errors
