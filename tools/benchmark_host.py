"""Host time per call of mmssm's ops, next to two ATen ops for scale.

Training steps of the mmssm backbones are bound by the host on the GPU
machines: the same step takes as long at batch 2 as at batch 64
(``tools/benchmark.py --batch-size 2``). This tool measures what each op
costs the host. Every op is called on tiny inputs, so the GPU is idle and the
wall time of a call (``time.perf_counter`` over many calls, synchronised at
the end) is host time. Three modes: an inference call, a forward call with
gradients, and forward + backward (through a ``sum``, whose own cost the
``F.layer_norm`` and ``mul`` rows show).

Usage:
    python tools/benchmark_host.py [--device cuda] [--calls 300]
"""
import argparse
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from mmssm.ops import (causal_conv1d, cross_selective_scan, layer_norm,
                       rms_norm, selective_scan, v2m_corner_scan)

MODES = ('infer', 'forward', 'forward+backward')


def op_calls(device: str) -> Dict[str, Callable[[], torch.Tensor]]:
    """One tiny call of every op, and of two ATen ops for scale.

    Args:
        device: Where the inputs live.

    Returns:
        Op name -> a call returning the op's output.
    """
    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, requires_grad=True)

    u, delta, z = tensor(2, 8, 16), tensor(2, 8, 16), tensor(2, 8, 16)
    a = (-torch.rand(8, 4, device=device)).requires_grad_()
    b, c = tensor(2, 4, 16), tensor(2, 4, 16)
    skip, delta_bias = tensor(8), tensor(8)
    image = tensor(2, 8, 4, 4)
    corner_delta = tensor(2, 4, 8, 4, 4)
    corner_a = (-torch.rand(32, 1, device=device)).requires_grad_()
    corner_b, corner_c = tensor(2, 4, 1, 4, 4), tensor(2, 4, 1, 4, 4)
    corner_skip, corner_bias = tensor(32), tensor(32)
    ones = torch.ones(32, 1, device=device)
    taps, conv_bias = tensor(8, 1, 4), tensor(8)
    rows, norm_weight, norm_bias = tensor(64, 96), tensor(96), tensor(96)
    return {
        'selective_scan':
        lambda: selective_scan(u, delta, a, b, c, skip, z, delta_bias, True),
        'cross_selective_scan':
        lambda: cross_selective_scan(image, corner_delta, corner_a, corner_b,
                                     corner_c, corner_skip, corner_bias,
                                     True),
        'v2m_corner_scan':
        lambda: v2m_corner_scan(image, corner_delta, corner_a, corner_b, ones,
                                D=corner_skip, delta_bias=corner_bias,
                                delta_softplus=True),
        'causal_conv1d':
        lambda: causal_conv1d(u, taps, conv_bias, activation='silu'),
        'layer_norm':
        lambda: layer_norm(rows, norm_weight, norm_bias, 1e-5, torch.float16),
        'rms_norm':
        lambda: rms_norm(rows, norm_weight, 1e-5, torch.bfloat16),
        'F.layer_norm (ATen)':
        lambda: F.layer_norm(rows, (96, ), norm_weight, norm_bias),
        'mul (ATen)':
        lambda: rows * norm_weight,
    }


def host_us(call: Callable[[], object], calls: int, device: str) -> float:
    """Mean wall time of ``call`` in microseconds, after a warm-up."""
    def synchronize() -> None:
        if device.startswith('cuda'):
            torch.cuda.synchronize(device)

    for _ in range(min(20, calls)):
        call()
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    elapsed = time.perf_counter() - start
    synchronize()
    return elapsed / calls * 1e6


def measure(device: str, calls: int) -> Dict[str, Dict[str, float]]:
    """Host time per call of every op in every mode.

    Args:
        device: Device of the inputs.
        calls: Timed calls per op and mode.

    Returns:
        Op name -> mode -> microseconds per call.
    """
    if calls < 1:
        raise ValueError(f'calls must be >= 1, got {calls}')
    results = {}
    for name, call in op_calls(device).items():
        with torch.inference_mode():
            infer = host_us(call, calls, device)
        results[name] = {
            'infer': infer,
            'forward': host_us(call, calls, device),
            'forward+backward': host_us(
                lambda: call().float().sum().backward(), calls, device),
        }
    return results


def table(results: Dict[str, Dict[str, float]]) -> str:
    """The results as a markdown table."""
    lines = ['| op | ' + ' | '.join(f'{mode} (µs)' for mode in MODES) + ' |',
             '| --- |' + ' ---: |' * len(MODES)]
    for name, times in results.items():
        lines.append(f'| {name} | ' +
                     ' | '.join(f'{times[mode]:.1f}' for mode in MODES) +
                     ' |')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda',
                        help='device of the inputs (default cuda)')
    parser.add_argument('--calls', type=int, default=300,
                        help='timed calls per op and mode')
    args = parser.parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit('CUDA is not available; pass --device cpu to time '
                         "the ops' PyTorch paths")
    print(table(measure(args.device, args.calls)))


if __name__ == '__main__':
    main()
