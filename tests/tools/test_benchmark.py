"""Tests of tools/benchmark.py on the CPU."""
import time

import pytest
import torch
from torch import nn

from tool_runs import load_tool


class _SleepyNet(nn.Module):
    """A linear layer that sleeps a fixed time per forward pass."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor):
        time.sleep(self.seconds)
        return self.linear(x), {'aux': [x.sum()]}


def test_measure_times_the_step():
    tool = load_tool('benchmark')
    result = tool.measure(_SleepyNet(0.02), (torch.randn(2, 4), ), 'infer',
                          'fp32', warmup=1, repeats=3)
    assert 0.02 <= result['seconds'] < 0.5
    assert result['peak_mib'] > 0


def test_train_mode_steps_the_optimizer():
    tool = load_tool('benchmark')
    model = _SleepyNet(0.0)
    before = model.linear.weight.detach().clone()
    tool.measure(model, (torch.randn(2, 4), ), 'train', 'bf16', warmup=0,
                 repeats=2)
    assert model.training
    assert not torch.equal(model.linear.weight, before)
    frozen = model.linear.weight.detach().clone()
    tool.measure(model, (torch.randn(2, 4), ), 'infer', 'fp32', warmup=1,
                 repeats=1)
    assert not model.training
    assert torch.equal(model.linear.weight, frozen)


@pytest.mark.parametrize('kwargs,match', [
    (dict(mode='eval'), 'mode must be'),
    (dict(precision='fp8'), 'precision must be'),
    (dict(repeats=0), 'repeats >= 1'),
])
def test_measure_rejects_bad_arguments(kwargs, match):
    arguments = dict(mode='infer', precision='fp32', warmup=0, repeats=1)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        load_tool('benchmark').measure(_SleepyNet(0.0), (torch.randn(1, 4), ),
                             **arguments)


TINY_VMAMBA = ('{"arch": {"embed_dims": 8, "depths": [1, 1, 1, 1], '
               '"d_state": 1, "ssm_ratio": 1.0, "mlp_ratio": 2.0, '
               '"version": "v2"}, "out_indices": [3]}')


def test_main_prints_and_appends(tmp_path, capsys):
    report = tmp_path / 'benchmarks.md'
    report.write_text('# Benchmarks\n')
    argv = [
        'VMamba', '--backbone-kwargs', TINY_VMAMBA, '--shape', '32', '48',
        '--batch-size', '2',
        '--precision', 'fp32', 'bf16', '--warmup', '0', '--repeats', '1',
        '--device', 'cpu', '--append-to',
        str(report)
    ]
    table = load_tool('benchmark').main(argv)
    assert table in capsys.readouterr().out
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == 4
    for row, (precision, mode) in zip(rows, [('fp32', 'infer'),
                                             ('fp32', 'train'),
                                             ('bf16', 'infer'),
                                             ('bf16', 'train')]):
        cells = [cell.strip() for cell in row.strip('|').split('|')]
        assert cells[:5] == ['VMamba', mode, precision, '2', '32x48']
        milliseconds, images_per_s = float(cells[5]), float(cells[6])
        assert milliseconds > 0
        assert images_per_s == pytest.approx(2e3 / milliseconds, rel=0.02)
    text = report.read_text()
    assert text.startswith('# Benchmarks\n')
    assert '--append-to' in text and f'torch {torch.__version__}' in text
    assert 'CUDA ' in text and table in text


def test_profile_table_names_the_model_operators():
    table = load_tool('benchmark').profile_table(_SleepyNet(0.0), (torch.randn(2, 4), ),
                                       'train', 'fp32', top=50)
    assert 'aten::linear' in table or 'aten::addmm' in table
    with pytest.raises(ValueError, match='top must be >= 1'):
        load_tool('benchmark').profile_table(_SleepyNet(0.0), (torch.randn(2, 4), ),
                                   'infer', 'fp32', top=0)


def test_compile_flag_times_the_compiled_model(monkeypatch):
    # Inductor takes over a minute on 2 CPU cores; the compiled backbones are
    # tested on the GPU (tests/models/test_compile_cuda.py). Here: the flag
    # reaches torch.compile and the table says so.
    tool = load_tool('benchmark')
    compiled = []

    def record(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(tool.torch, 'compile', record)
    argv = [
        'VMamba', '--backbone-kwargs', TINY_VMAMBA, '--shape', '16',
        '--batch-size', '1', '--modes', 'infer', '--warmup', '0',
        '--repeats', '1', '--device', 'cpu', '--compile'
    ]
    table = tool.main(argv)
    assert len(compiled) == 1 and isinstance(compiled[0], nn.Module)
    row = table.splitlines()[2]
    assert row.startswith('| VMamba (compiled) | infer | fp32 | 1 | 16x16 |')
