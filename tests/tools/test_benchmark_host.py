"""Tests of tools/benchmark_host.py on the CPU (the ops' PyTorch paths)."""
import time

import pytest

from tool_runs import load_tool


def test_host_us_is_the_wall_time_of_a_call():
    tool = load_tool('benchmark_host')
    assert 2000 <= tool.host_us(lambda: time.sleep(0.002), 5, 'cpu') < 50000


def test_every_op_is_timed_in_every_mode_and_tabulated(capsys):
    tool = load_tool('benchmark_host')
    tool.main(['--device', 'cpu', '--calls', '2'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ('| op | infer (µs) | forward (µs) | '
                        'forward+backward (µs) |')
    rows = {line.split(' | ')[0][2:]: line for line in lines[2:]}
    assert set(rows) == set(tool.op_calls('cpu'))
    for line in rows.values():
        times = [float(cell) for cell in line.strip('| ').split(' | ')[1:]]
        assert len(times) == 3 and all(t > 0 for t in times)


def test_bad_call_count_is_refused():
    tool = load_tool('benchmark_host')
    with pytest.raises(ValueError, match='calls must be >= 1'):
        tool.measure('cpu', 0)
