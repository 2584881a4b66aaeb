"""CPU benchmark of mmssm's PyTorch scan ops against the naive references.

Times the forward pass and the forward + backward pass (median of repeats,
fresh float32 inputs every repeat) of each op at real stage-1 layer shapes
(224 x 224 input, batch 2), for the production PyTorch path and for the
step-by-step reference of mmssm/ops/reference.py. Prints a markdown table.

Usage:
    python tools/benchmark_ops_cpu.py [--repeats 3] [--reference-repeats 1]
        [--threads 1] [--cases vmamba_t_s1_cross ...]

On a machine shared by many processes, pass ``--threads 1``: with more
threads every op above PyTorch's parallel grain size waits for all its
threads to be scheduled, which times the machine's load, not the ops.
"""
import argparse
import math
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from mmssm.ops import (cross_selective_scan, selective_scan, v2m_corner_scan,
                       wavefront_scan_2d)
from mmssm.ops.reference import (cross_selective_scan_reference,
                                 selective_scan_reference,
                                 wavefront_scan_2d_reference)
from mmssm.ops.v2m_scan import v2m_corner_scan_reference


@dataclass
class Case:
    """One benchmarked call of an op and of its reference."""
    name: str
    op: str
    shape: str
    make_inputs: Callable[[], Dict[str, Optional[Tensor]]]
    production: Callable[..., Tensor]
    reference: Callable[..., Tensor]
    kwargs: dict


def _leaf(tensor: Tensor) -> Tensor:
    return tensor.requires_grad_()


def vmamba_cross_inputs(batch: int, dim: int, state: int, height: int,
                        width: int) -> Dict[str, Optional[Tensor]]:
    """SS2D inputs of a VMamba block (dt ~ softplus(-2 +- noise))."""
    return dict(
        u=_leaf(torch.randn(batch, dim, height, width)),
        delta=_leaf(torch.randn(batch, 4, dim, height, width) * 0.5 - 2),
        A=_leaf(-torch.rand(4 * dim, state) - 0.5),
        B=_leaf(torch.randn(batch, 4, state, height, width)),
        C=_leaf(torch.randn(batch, 4, state, height, width)),
        D=_leaf(torch.ones(4 * dim)),
        delta_bias=_leaf(torch.randn(4 * dim) * 0.1))


def vmamba_flat_inputs(batch: int, dim: int, state: int, height: int,
                       width: int) -> Dict[str, Optional[Tensor]]:
    """The same layer as one grouped selective scan over 4*dim channels."""
    length = height * width
    return dict(
        u=_leaf(torch.randn(batch, 4 * dim, length)),
        delta=_leaf(torch.randn(batch, 4 * dim, length) * 0.5 - 2),
        A=_leaf(-torch.rand(4 * dim, state) - 0.5),
        B=_leaf(torch.randn(batch, 4, state, length)),
        C=_leaf(torch.randn(batch, 4, state, length)),
        D=_leaf(torch.ones(4 * dim)),
        delta_bias=_leaf(torch.randn(4 * dim) * 0.1))


def mamba2d_inputs(batch: int, channels: int, state: int, height: int,
                   width: int) -> Dict[str, Optional[Tensor]]:
    """Wavefront-scan inputs of a Mamba2D block (A = -exp(A_log))."""
    grid = (batch, height, width)
    return dict(
        x=_leaf(torch.randn(*grid, channels)),
        delta_t=_leaf(torch.randn(*grid, channels) * 0.5 - 2),
        delta_l=_leaf(torch.randn(*grid, channels) * 0.5 - 2),
        A_t=_leaf(-torch.arange(1, state + 1.0).repeat(channels, 1)),
        A_l=_leaf(-torch.arange(1, state + 1.0).repeat(channels, 1)),
        B_t=_leaf(torch.randn(*grid, state)),
        B_l=_leaf(torch.randn(*grid, state)),
        C=_leaf(torch.randn(*grid, state)),
        D=_leaf(torch.ones(channels)),
        delta_bias_t=_leaf(torch.randn(channels) * 0.1),
        delta_bias_l=_leaf(torch.randn(channels) * 0.1))


def v2m_pass_inputs(batch: int, dim: int, state: int, height: int, width: int,
                    axis: str) -> Dict[str, Optional[Tensor]]:
    """One pass of V2M-S*'s mixer as it calls ``v2m_corner_scan``.

    The row pass shares its input between the four corners and has per-pixel
    B and an all-ones C; the column pass has per-corner input, an all-ones
    B, per-pixel C and the D skip.
    """
    corners = 4
    per_pixel = _leaf(torch.randn(batch, corners, state, height, width))
    ones = torch.ones(corners * dim, state)
    row = axis == 'row'
    return dict(
        u=_leaf(torch.randn(batch, dim, height, width) if row else torch.
                randn(batch, corners, dim, height, width)),
        delta=_leaf(torch.randn(batch, corners, dim, height, width) * 0.5 -
                    2),
        A=_leaf(-torch.rand(corners * dim, state) - 0.5),
        B=per_pixel if row else ones,
        C=ones if row else per_pixel,
        D=None if row else _leaf(torch.ones(corners * dim)),
        delta_bias=_leaf(torch.randn(corners * dim) * 0.1))


# VMamba-T [s1l8] stage 1: dims 96, ssm_ratio 1 (d_inner 96), d_state 1,
# 56 x 56 tokens. Mamba2D-T stage 1: E = 64, N = 16, 56 x 56 tokens.
CASES: List[Case] = [
    Case('vmamba_t_s1_cross', 'cross_selective_scan',
         'B=2 D=96 N=1 56x56 (4 paths)',
         lambda: vmamba_cross_inputs(2, 96, 1, 56, 56), cross_selective_scan,
         cross_selective_scan_reference, dict(delta_softplus=True)),
    Case('vmamba_t_s1_flat', 'selective_scan',
         'B=2 D=4x96 N=1 G=4 L=3136',
         lambda: vmamba_flat_inputs(2, 96, 1, 56, 56), selective_scan,
         selective_scan_reference, dict(delta_softplus=True)),
    Case('mamba2d_t_s1_tl', 'wavefront_scan_2d', 'B=2 E=64 N=16 56x56 tl',
         lambda: mamba2d_inputs(2, 64, 16, 56, 56), wavefront_scan_2d,
         wavefront_scan_2d_reference, dict(delta_softplus=True, origin='tl')),
    Case('mamba2d_t_s1_br', 'wavefront_scan_2d', 'B=2 E=64 N=16 56x56 br',
         lambda: mamba2d_inputs(2, 64, 16, 56, 56), wavefront_scan_2d,
         wavefront_scan_2d_reference, dict(delta_softplus=True, origin='br')),
    # V2M-S* stage 1 (VMamba-T layout: d_inner 96, N = 1, 56 x 56), each pass.
    Case('v2m_s_star_s1_row', 'v2m_corner_scan', 'B=2 D=96 N=1 56x56 rows x4',
         lambda: v2m_pass_inputs(2, 96, 1, 56, 56, 'row'), v2m_corner_scan,
         v2m_corner_scan_reference, dict(delta_softplus=True, axis='row')),
    Case('v2m_s_star_s1_col', 'v2m_corner_scan', 'B=2 D=96 N=1 56x56 cols x4',
         lambda: v2m_pass_inputs(2, 96, 1, 56, 56, 'col'), v2m_corner_scan,
         v2m_corner_scan_reference, dict(delta_softplus=True, axis='col')),
]


def time_call(function: Callable[..., Tensor], case: Case, backward: bool,
              repeats: int) -> float:
    """Median wall time in ms of ``function`` on fresh inputs.

    Args:
        function: The op implementation to time.
        case: Supplies the inputs and keyword arguments.
        backward: Also run the backward pass of the output's weighted sum.
        repeats: Number of timed calls.

    Returns:
        Median milliseconds.
    """
    times = []
    for _ in range(repeats):
        inputs = case.make_inputs()
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            out = function(**inputs, **case.kwargs)
            if backward:
                out.backward(torch.ones_like(out))
        times.append((time.perf_counter() - start) * 1e3)
        if not math.isfinite(float(out.detach().sum())):
            raise RuntimeError(f'{case.name}: non-finite output')
    return statistics.median(times)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed calls of the production ops')
    parser.add_argument('--reference-repeats', type=int, default=1,
                        help='timed calls of the (slow) references')
    parser.add_argument('--threads', type=int, default=None,
                        help='intra-op threads of this process '
                        '(default: PyTorch\'s choice)')
    parser.add_argument('--cases', nargs='+', choices=[c.name for c in CASES],
                        default=[c.name for c in CASES])
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.repeats < 1 or args.reference_repeats < 1:
        raise ValueError('--repeats and --reference-repeats must be >= 1')
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f'--threads must be >= 1, got {args.threads}')
        torch.set_num_threads(args.threads)
    print(f'command: python {shlex.join(sys.argv)}')
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
          'float32, CPU\n')
    print('| op | shape | impl | forward ms | forward+backward ms |')
    print('| --- | --- | --- | ---: | ---: |')
    for case in CASES:
        if case.name not in args.cases:
            continue
        rows = []
        for impl, function, repeats in (
            ('mmssm', case.production, args.repeats),
            ('naive reference', case.reference, args.reference_repeats)):
            forward = time_call(function, case, False, repeats)
            both = time_call(function, case, True, repeats)
            rows.append((impl, forward, both))
        for impl, forward, both in rows:
            print(f'| {case.op} | {case.shape} | {impl} | {forward:.1f} | '
                  f'{both:.1f} |', flush=True)
        (_, fwd_fast, both_fast), (_, fwd_ref, both_ref) = rows
        print(f'| {case.op} | {case.shape} | speed-up | '
              f'{fwd_ref / fwd_fast:.1f}x | {both_ref / both_fast:.1f}x |',
              flush=True)


if __name__ == '__main__':
    main()
