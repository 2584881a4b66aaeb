"""Tests of tools/analysis/train_log_summary.py."""
import json
from pathlib import Path

from tool_runs import load_tool

TOOL = 'analysis/train_log_summary'


def _write_run(work_dir: Path, records: list) -> None:
    log = work_dir / '20260101_000000' / 'vis_data' / 'scalars.json'
    log.parent.mkdir(parents=True)
    log.write_text('\n'.join(json.dumps(r) for r in records) + '\n')


def test_row_leaves_warm_up_out_of_time_and_memory(tmp_path, capsys):
    _write_run(tmp_path, [
        dict(iter=5, loss=4.0, time=9.0, memory=30000),
        dict(iter=10, loss=3.0, time=0.5, memory=4000),
        dict(iter=15, loss=2.0, time=0.3, memory=4100),
        dict(iter=20, loss=1.5, time=0.4, memory=4050),
        dict(mIoU=0.1, step=20),
    ])
    assert load_tool(TOOL).main([str(tmp_path), '--skip', '1', '--name',
                                 'run']) == 0
    row = capsys.readouterr().out.strip()
    assert row == '| run | 20 | 0.400 | 4100 | 4.000 | 1.500 | yes |'


def test_non_finite_loss_fails(tmp_path, capsys):
    _write_run(tmp_path, [
        dict(iter=5, loss=4.0, time=1.0, memory=10),
        dict(iter=10, loss=float('nan'), time=1.0, memory=10),
    ])
    assert load_tool(TOOL).main([str(tmp_path), '--skip', '0']) == 1
    assert capsys.readouterr().out.rstrip().endswith('| NO |')
