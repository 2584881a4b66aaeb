"""Throughput and peak memory of an mmssm model: inference and training.

For every precision asked for, measures

* ``infer``: one forward pass in eval mode under ``torch.inference_mode``;
* ``train``: one training step in train mode (forward, backward of the mean
  of every output as a stand-in loss, AdamW step; fp16 with a GradScaler);

after ``--warmup`` untimed iterations, as the median of ``--repeats`` timed
ones: CUDA events on a GPU, ``time.perf_counter`` on the CPU. fp16/bf16 run
the model under ``torch.autocast`` (weights stay fp32). Peak memory is the
CUDA allocator's peak of the timed iterations on a GPU, the process's peak
resident set size on the CPU (it never decreases, so it bounds everything
measured before it). Prints a markdown table; ``--append-to FILE`` appends it
with the command, device, torch and CUDA versions and the scan-op backends.

MODEL is a config file (the whole model, or ``--backbone-only``) or
``Type[:arch]`` of a registered mmssm backbone (by default the bare
backbone; ``--num-classes N`` adds a pooled linear classifier).

Examples:
    python tools/benchmark.py VMamba:tiny --batch-size 64 --precision fp16
    python tools/benchmark.py configs/imagenet/vmamba_tiny.py --modes infer \
        --append-to docs/benchmarks.md
"""
import argparse
import datetime
import json
import platform
import resource
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import Tensor, nn

from mmssm.models.utils.flops import analysis_inputs, build_analysis_model
from mmssm.ops import backend

PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
MODES = ('infer', 'train')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments (``argv`` for tests; None reads sys.argv)."""
    parser = argparse.ArgumentParser(
        description='Throughput and peak memory of an mmssm model.')
    parser.add_argument(
        'model', help='config file (*.py) or Type[:arch], e.g. VMamba:tiny')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=[224, 224],
        help='input size: H W, or one value for a square image')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument(
        '--precision',
        nargs='+',
        default=['fp32'],
        choices=sorted(PRECISIONS),
        help='one or more of fp32 (no autocast), fp16, bf16 (autocast)')
    parser.add_argument(
        '--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument(
        '--device',
        default='cuda' if torch.cuda.is_available() else 'cpu',
        help='cuda, cuda:N or cpu (default: cuda where available)')
    parser.add_argument(
        '--backbone-only',
        action='store_true',
        help='for a config: benchmark model.backbone only')
    parser.add_argument(
        '--num-classes',
        type=int,
        default=0,
        help='for Type[:arch]: add a pooled linear classifier (0: none)')
    parser.add_argument(
        '--backbone-kwargs',
        type=json.loads,
        default={},
        help='JSON dict of extra backbone arguments, e.g. '
        '\'{"arch": {"embed_dims": 32, "depths": [1, 1, 1, 1], ...}}\'')
    parser.add_argument(
        '--compile',
        action='store_true',
        help='run the model through torch.compile (default mode) first')
    parser.add_argument(
        '--profile',
        type=int,
        default=0,
        metavar='TOP',
        help='also print the TOP operators by device time of each mode and '
        'precision (torch.profiler, three steps)')
    parser.add_argument(
        '--append-to',
        metavar='FILE',
        help='append the table with the environment to this markdown file')
    return parser.parse_args(argv)


def _tensors(outputs: Any) -> Iterator[Tensor]:
    """Every tensor of a (nested) model output."""
    if isinstance(outputs, Tensor):
        yield outputs
    elif isinstance(outputs, dict):
        for value in outputs.values():
            yield from _tensors(value)
    elif isinstance(outputs, (list, tuple)):
        for value in outputs:
            yield from _tensors(value)


def _stand_in_loss(outputs: Any) -> Tensor:
    """Sum of the means of every floating output (a loss to backpropagate)."""
    terms = [
        t.float().mean() for t in _tensors(outputs) if t.is_floating_point()
    ]
    if not terms:
        raise ValueError('the model returned no floating-point tensor to '
                         'backpropagate')
    return torch.stack(terms).sum()


class _Timer:
    """Times one call: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'

    def __call__(self, step: Callable[[], None]) -> float:
        """Seconds taken by ``step()``."""
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        begin = time.perf_counter()
        step()
        return time.perf_counter() - begin


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def make_step(model: nn.Module, inputs: tuple, mode: str,
              precision: str) -> Callable[[], None]:
    """One benchmark iteration of ``model`` as a closure.

    Args:
        model: The module to run (``model(*inputs)``); put in eval mode for
            ``'infer'`` and train mode for ``'train'``.
        inputs: Its inputs, on the model's device.
        mode: ``'infer'`` or ``'train'``.
        precision: A key of :data:`PRECISIONS`.

    Returns:
        ``step()``: an inference forward pass, or a training step (forward,
        backward of the stand-in loss, AdamW step; fp16 with a GradScaler).
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {sorted(PRECISIONS)}, '
                         f'got {precision!r}')
    device = inputs[0].device
    dtype = PRECISIONS[precision]

    def autocast():
        return torch.autocast(
            device_type=device.type, dtype=dtype, enabled=dtype is not None)

    if mode == 'infer':
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast():
                model(*inputs)

        return step
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == 'fp16')

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = _stand_in_loss(model(*inputs))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def measure(model: nn.Module, inputs: tuple, mode: str, precision: str,
            warmup: int, repeats: int) -> Dict[str, float]:
    """Median time per iteration and peak memory of one mode/precision.

    Args:
        model: The module to run (``model(*inputs)``).
        inputs: Its inputs, on the model's device.
        mode: ``'infer'`` or ``'train'``.
        precision: A key of :data:`PRECISIONS`.
        warmup: Untimed iterations first.
        repeats: Timed iterations.

    Returns:
        ``seconds`` (median per iteration) and ``peak_mib``.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f'warmup must be >= 0 and repeats >= 1, got '
                         f'{warmup} and {repeats}')
    step = make_step(model, inputs, mode, precision)
    device = inputs[0].device
    timer = _Timer(device)
    for _ in range(warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = [timer(step) for _ in range(repeats)]
    return dict(seconds=statistics.median(times),
                peak_mib=_peak_memory_mib(device))


def profile_table(model: nn.Module, inputs: tuple, mode: str,
                  precision: str, top: int) -> str:
    """Where one warmed-up iteration spends its time, by operator.

    Runs two warm-up steps, then profiles three with ``torch.profiler``.

    Args:
        model: The module to run (``model(*inputs)``).
        inputs: Its inputs, on the model's device.
        mode: ``'infer'`` or ``'train'``.
        precision: A key of :data:`PRECISIONS`.
        top: Rows to keep.

    Returns:
        The profiler's table of the ``top`` operators by self device time
        (self CPU time on the CPU), totals over the three steps.
    """
    if top < 1:
        raise ValueError(f'top must be >= 1, got {top}')
    step = make_step(model, inputs, mode, precision)
    device = inputs[0].device
    for _ in range(2):
        step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort_by = 'self_cpu_time_total'
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort_by = 'self_cuda_time_total'
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(3):
            step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
    return profiler.key_averages().table(sort_by=sort_by, row_limit=top)


def run_benchmark(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Builds the model and measures every mode and precision.

    Args:
        args: Parsed arguments (see :func:`parse_args`).

    Returns:
        One row per (precision, mode): ``precision``, ``mode``, ``seconds``,
        ``images_per_s``, ``peak_mib``.
    """
    height, width = _image_size(args.shape)
    device = torch.device(args.device)
    model = build_analysis_model(
        args.model,
        num_classes=args.num_classes or None,
        backbone_only=args.backbone_only,
        backbone_kwargs=args.backbone_kwargs).to(device)
    module, inputs = analysis_inputs(model, height, width, args.batch_size)
    if args.compile:
        module = torch.compile(module)
    rows = []
    for precision in args.precision:
        for mode in args.modes:
            result = measure(module, inputs, mode, precision, args.warmup,
                             args.repeats)
            if args.profile:
                print(f'## profile: {precision} {mode}')
                print(profile_table(module, inputs, mode, precision,
                                    args.profile))
            rows.append(
                dict(
                    precision=precision,
                    mode=mode,
                    seconds=result['seconds'],
                    images_per_s=args.batch_size / result['seconds'],
                    peak_mib=result['peak_mib']))
    return rows


def _image_size(shape: List[int]) -> tuple:
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    raise ValueError(f'--shape takes 1 or 2 values (H W), got {shape}')


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with its thread count."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return (f'CPU {platform.processor() or platform.machine()} '
            f'({torch.get_num_threads()} threads)')


def format_table(args: argparse.Namespace,
                 rows: List[Dict[str, Any]]) -> str:
    """The results as a markdown table."""
    height, width = _image_size(args.shape)
    memory = ('peak CUDA memory (MiB)' if args.device.startswith('cuda') else
              'peak process RSS (MiB)')
    lines = [
        f'| model | mode | precision | batch | input | ms / iter | '
        f'images / s | {memory} |',
        '|---|---|---|---:|---|---:|---:|---:|',
    ]
    for row in rows:
        lines.append(
            f'| {args.model}{" (compiled)" if args.compile else ""} | '
            f'{row["mode"]} | {row["precision"]} | '
            f'{args.batch_size} | {height}x{width} | '
            f'{row["seconds"] * 1e3:.4g} | {row["images_per_s"]:.4g} | '
            f'{row["peak_mib"]:.0f} |')
    return '\n'.join(lines)


def environment_header(args: argparse.Namespace,
                       argv: Optional[List[str]]) -> str:
    """Command, date, device and versions of a run, as markdown."""
    command = ' '.join(
        shlex.quote(a)
        for a in ['python', 'tools/benchmark.py'] +
        (sys.argv[1:] if argv is None else list(argv)))
    backends = backend()
    now = datetime.datetime.now(datetime.timezone.utc)
    return '\n'.join([
        f'### {args.model} ({now:%Y-%m-%d %H:%M} UTC)',
        '',
        f'- command: `{command}`',
        f'- device: {device_name(torch.device(args.device))}',
        f'- torch {torch.__version__}, CUDA {torch.version.cuda or "none"}',
        '- scan ops: ' + ', '.join(f'{op} {kind}'
                                   for op, kind in backends.items()) +
        (' (CUDA inputs; CPU inputs always use PyTorch)'
         if not args.device.startswith('cuda') else ''),
        f'- warm-up {args.warmup}, median of {args.repeats} repeats',
    ])


def main(argv: Optional[List[str]] = None) -> str:
    """Runs the benchmark, prints the table, appends it where asked.

    Args:
        argv: Command-line arguments; None reads ``sys.argv``.

    Returns:
        The markdown table.
    """
    args = parse_args(argv)
    rows = run_benchmark(args)
    table = format_table(args, rows)
    print(table)
    if args.append_to:
        with open(args.append_to, 'a', encoding='utf-8') as file:
            file.write(f'\n{environment_header(args, argv)}\n\n{table}\n')
    return table


if __name__ == '__main__':
    main()
