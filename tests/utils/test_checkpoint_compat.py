"""mmssm.utils.checkpoint_compat: weights_only loads of mmengine
checkpoints."""
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from mmssm.utils.checkpoint_compat import (_history_buffer_getattr,
                                           register_mmengine_safe_globals)

# Trains a toy model for 3 iterations with mmengine's Runner (AdamW, warm-up
# and step schedulers, CheckpointHook), then loads the checkpoint with
# weights_only=True before and after registering the safe globals. A fresh
# process, since the allow-list is global.
SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from torch import nn
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.linear(inputs)
            return dict(loss=(out ** 2).mean()) if mode == 'loss' else out

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, index):
            return dict(inputs=torch.full((2, ), float(index)))

    work_dir = sys.argv[1]
    runner = Runner(
        model=Toy(), work_dir=work_dir,
        train_dataloader=dict(
            dataset=Data(), batch_size=2,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.1)),
        param_scheduler=[
            dict(type='LinearLR', by_epoch=False, begin=0, end=2),
            dict(type='MultiStepLR', by_epoch=False, milestones=[2])],
        train_cfg=dict(by_epoch=False, max_iters=3),
        default_hooks=dict(checkpoint=dict(
            type='CheckpointHook', by_epoch=False, interval=3)))
    runner.train()
    path = f'{work_dir}/iter_3.pth'
    try:
        torch.load(path, weights_only=True)
    except Exception as error:
        print('REFUSED:', 'HistoryBuffer' in str(error))
    from mmssm.utils import register_mmengine_safe_globals
    register_mmengine_safe_globals()
    checkpoint = torch.load(path, weights_only=True)
    history = checkpoint['message_hub']['log_scalars']['train/loss']
    print('LOADED:', checkpoint['meta']['iter'], len(history.data[0]),
          sorted(checkpoint))
''')


def test_mmengine_checkpoint_loads_only_after_registration(
        tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, '-c', SCRIPT, str(tmp_path)], capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'REFUSED: True' in result.stdout
    assert ("LOADED: 3 3 ['message_hub', 'meta', 'optimizer', "
            "'param_schedulers', 'state_dict']") in result.stdout


def test_getattr_stand_in_resolves_only_statistics_methods() -> None:
    for name in ('min', 'max', 'current', 'mean'):
        assert _history_buffer_getattr(HistoryBuffer, name) is getattr(
            HistoryBuffer, name)
    with pytest.raises(pickle.UnpicklingError, match='not allowed'):
        _history_buffer_getattr(HistoryBuffer, '__init__')
    with pytest.raises(pickle.UnpicklingError, match='not allowed'):
        _history_buffer_getattr(torch, 'load')


class _SneakyGetattr:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


def test_other_getattr_pickles_stay_refused(tmp_path: Path) -> None:
    register_mmengine_safe_globals()
    path = tmp_path / 'sneaky.pth'
    torch.save({'x': _SneakyGetattr()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    # The legitimate form loads.
    torch.save({'buffer': HistoryBuffer([1.0, 2.0], [1, 1])}, path)
    loaded = torch.load(path, weights_only=True)['buffer']
    assert loaded.mean() == pytest.approx(1.5)
