"""Summarise an mmengine training run: iteration time, peak memory, loss.

    python tools/analysis/train_log_summary.py WORK_DIR [--skip 5]

Reads the newest ``<timestamp>/vis_data/scalars.json`` under WORK_DIR (one
JSON record per logged iteration, as mmengine's LocalVisBackend writes it)
and prints one markdown row: logged iterations, median seconds per
iteration and peak GPU memory in MiB as mmengine logs it (the first
``--skip`` logged records are warm-up and left out of both: cuDNN's
autotuning of the first iterations allocates workspaces far above the
steady state), and the first and last total loss. Exits 1 when a logged loss is not finite.
"""
import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def read_records(work_dir: Path) -> list:
    """The training records of the newest run in ``work_dir``.

    Args:
        work_dir: The run's work dir.

    Returns:
        The records that carry a ``loss`` (training iterations).
    """
    logs = sorted(work_dir.glob('*/vis_data/scalars.json'))
    if not logs:
        raise FileNotFoundError(
            f'no */vis_data/scalars.json under {work_dir}: is it the work '
            'dir of an mmengine run?')
    records = [json.loads(line) for line in logs[-1].read_text().splitlines()
               if line.strip()]
    return [r for r in records if 'loss' in r]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('work_dir', type=Path)
    parser.add_argument('--skip', type=int, default=2,
                        help='logged records treated as warm-up')
    parser.add_argument('--name', default=None, help='row label')
    args = parser.parse_args(argv)
    records = read_records(args.work_dir)
    if not records:
        raise SystemExit(f'no training iterations logged in {args.work_dir}')
    timed = records[args.skip:] or records
    seconds = statistics.median(r['time'] for r in timed if 'time' in r)
    memory = max((r.get('memory', 0) for r in timed), default=0)
    losses = [r['loss'] for r in records]
    finite = all(math.isfinite(v) for v in losses)
    print(f"| {args.name or args.work_dir.name} | {records[-1].get('iter', '?')}"
          f' | {seconds:.3f} | {memory} | {losses[0]:.3f} | {losses[-1]:.3f}'
          f' | {"yes" if finite else "NO"} |')
    return 0 if finite else 1


if __name__ == '__main__':
    sys.exit(main())
