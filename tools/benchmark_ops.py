"""GPU benchmark of mmssm's compiled scan ops against their PyTorch paths.

For each op at realistic layer shapes it times the forward pass and the
forward + backward pass with CUDA events (warm-up, then the median of
repeats; the backward pass returns fresh input gradients, as it does for a
layer's activations, rather than adding them into ``.grad``), reads the peak
memory of forward + backward, and relates the forward's essential traffic
(each input read once, each output written once) to the bandwidth of a
measured device-to-device copy. Prints a markdown table with, for the cases
of the bar in the operator issue, the authors' kernels' times on the GPU
machine's H100 and mmssm's speed-up over them, and for every compiled op its
speed-up over its PyTorch path.

Usage:
    python tools/benchmark_ops.py [--repeats 20] [--ops selective_scan ...]
        [--skip-pytorch]
"""
import argparse
import contextlib
import math
import os
import statistics
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

import torch

from mmssm.ops import (backend, causal_conv1d, cross_selective_scan,
                       layer_norm, rms_norm, selective_scan, v2m_corner_scan,
                       wavefront_scan_2d)
from mmssm.ops.dispatch import FORCE_PYTORCH_ENV


@dataclass
class Case:
    """One benchmarked call: a name, an input factory, its byte count, the
    CUDA autocast dtype it runs under (None: no autocast) and, where the
    operator issue gives one, the authors' forward and forward + backward
    milliseconds at this shape (None: no bar)."""
    op: str
    name: str
    make_inputs: Callable[[], Dict[str, torch.Tensor]]
    kwargs: dict
    essential_bytes: int
    autocast: Optional[torch.dtype] = None
    authors_ms: Optional[Tuple[float, float]] = None


def with_bar(case: Case, forward_ms: float,
             forward_backward_ms: float) -> Case:
    """The case with the authors' times at its shape.

    Args:
        case: A benchmarked call.
        forward_ms: The authors' forward at that shape (the operator issue's
            bar, measured with their kernels on the GPU machine's H100).
        forward_backward_ms: Their forward + backward there.

    Returns:
        A copy of ``case`` that carries the bar.
    """
    return replace(case, authors_ms=(forward_ms, forward_backward_ms))


def element_bytes(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def selective_scan_case(name: str, batch: int, dim: int, length: int,
                        dstate: int, dtype: torch.dtype) -> Case:
    """A Vim/V2M layer's scan: shared B/C, z gate, D, delta bias, softplus."""

    def make_inputs() -> Dict[str, torch.Tensor]:
        def act(*shape, scale=1.0, shift=0.0):
            return (torch.randn(*shape, device='cuda') * scale +
                    shift).to(dtype).requires_grad_()

        def weight(*shape, scale=1.0):
            return (torch.randn(*shape, device='cuda') *
                    scale).requires_grad_()

        return dict(
            u=act(batch, dim, length),
            delta=act(batch, dim, length, scale=0.5, shift=-1.0),
            A=(-torch.rand(dim, dstate, device='cuda') - 0.1).requires_grad_(),
            B=act(batch, dstate, length),
            C=act(batch, dstate, length),
            D=weight(dim),
            z=act(batch, dim, length),
            delta_bias=weight(dim, scale=0.3))

    size = element_bytes(dtype)
    traffic = (4 * batch * dim * length + 2 * batch * dstate * length) * size
    return Case('selective_scan', name, make_inputs,
                dict(delta_softplus=True), traffic)


def cross_scan_case(name: str, batch: int, dim: int, height: int, width: int,
                    dstate: int, dtype: torch.dtype) -> Case:
    """A VMamba SS2D core: four directions, D, delta bias, softplus."""

    def make_inputs() -> Dict[str, torch.Tensor]:
        def act(*shape, scale=1.0, shift=0.0):
            return (torch.randn(*shape, device='cuda') * scale +
                    shift).to(dtype).requires_grad_()

        return dict(
            u=act(batch, dim, height, width),
            delta=act(batch, 4, dim, height, width, scale=0.5, shift=-1.0),
            A=(-torch.rand(4 * dim, dstate, device='cuda') -
               0.1).requires_grad_(),
            B=act(batch, 4, dstate, height, width),
            C=act(batch, 4, dstate, height, width),
            D=torch.randn(4 * dim, device='cuda').requires_grad_(),
            delta_bias=(torch.randn(4 * dim, device='cuda') *
                        0.3).requires_grad_())

    pixels = batch * height * width
    traffic = (pixels * dim * 6 + pixels * 8 * dstate) * element_bytes(dtype)
    return Case('cross_selective_scan', name, make_inputs,
                dict(delta_softplus=True), traffic)


def wavefront_case(name: str, batch: int, channels: int, height: int,
                   width: int, dstate: int, dtype: torch.dtype) -> Case:
    """A Mamba2D SSM mixer's 2D scan: D, both delta biases, softplus."""

    def make_inputs() -> Dict[str, torch.Tensor]:
        def act(*shape, scale=1.0, shift=0.0):
            return (torch.randn(*shape, device='cuda') * scale +
                    shift).to(dtype).requires_grad_()

        def weight(*shape, scale=1.0, shift=0.0):
            return (torch.randn(*shape, device='cuda') * scale +
                    shift).requires_grad_()

        grid = (batch, height, width)
        return dict(
            x=act(*grid, channels),
            delta_t=act(*grid, channels, scale=0.5, shift=-1.0),
            delta_l=act(*grid, channels, scale=0.5, shift=-1.0),
            A_t=(-torch.rand(channels, dstate, device='cuda') -
                 0.1).requires_grad_(),
            A_l=(-torch.rand(channels, dstate, device='cuda') -
                 0.1).requires_grad_(),
            B_t=act(*grid, dstate),
            B_l=act(*grid, dstate),
            C=act(*grid, dstate),
            D=weight(channels),
            delta_bias_t=weight(channels, scale=0.3),
            delta_bias_l=weight(channels, scale=0.3))

    pixels = batch * height * width
    traffic = (4 * pixels * channels + 3 * pixels * dstate) * element_bytes(
        dtype)
    return Case('wavefront_scan_2d', name, make_inputs,
                dict(delta_softplus=True), traffic)


def v2m_pass_case(name: str, batch: int, dim: int, height: int, width: int,
                  dstate: int, axis: str, dtype: torch.dtype) -> Case:
    """One pass of a V2M mixer from the four corners, as the mixer calls it:
    the row pass reads a shared u with per-pixel B and constant C, the
    column pass per-corner u with constant B, per-pixel C and D, and merges
    the corners into one float32 map."""
    corners = 4
    row = axis == 'row'

    def make_inputs() -> Dict[str, torch.Tensor]:
        def act(*shape, scale=1.0, shift=0.0):
            return (torch.randn(*shape, device='cuda') * scale +
                    shift).to(dtype).requires_grad_()

        spatial = (height, width)
        u_shape = ((batch, dim, *spatial) if row else
                   (batch, corners, dim, *spatial))
        per_pixel = act(batch, corners, dstate, *spatial)
        ones = torch.ones(corners * dim, dstate, device='cuda',
                          requires_grad=True)
        inputs = dict(
            u=act(*u_shape),
            delta=act(batch, corners, dim, *spatial, scale=0.5, shift=-1.0),
            A=(-torch.rand(corners * dim, dstate, device='cuda') -
               0.1).requires_grad_(),
            B=per_pixel if row else ones,
            C=ones if row else per_pixel,
            delta_bias=(torch.randn(corners * dim, device='cuda') *
                        0.3).requires_grad_())
        if not row:
            inputs['D'] = torch.ones(corners * dim, device='cuda',
                                     requires_grad=True)
        return inputs

    pixels = batch * height * width
    u_elements = pixels * dim * (1 if row else corners)
    # Inputs u, delta and the per-pixel matrix; the row pass writes every
    # corner's output, the column pass their float32 sum.
    traffic = (u_elements + pixels * corners * dim +
               pixels * corners * dstate) * element_bytes(dtype)
    traffic += (pixels * corners * dim * element_bytes(dtype) if row else
                pixels * dim * element_bytes(torch.float32))
    return Case('v2m_corner_scan', name, make_inputs,
                dict(delta_softplus=True, axis=axis, merge_corners=not row),
                traffic)


def causal_conv1d_case(name: str, batch: int, channels: int, length: int,
                       kernel: int, dtype: torch.dtype) -> Case:
    """A Vim mixer's short convolution + SiLU of one direction, under
    autocast as in mixed-precision inference: x in the autocast dtype,
    float32 weight and bias (the PyTorch path is cuDNN's F.conv1d, a slice
    and a SiLU)."""

    def make_inputs() -> Dict[str, torch.Tensor]:
        return dict(
            x=torch.randn(batch, channels, length, device='cuda',
                          dtype=dtype).requires_grad_(),
            weight=(torch.randn(channels, 1, kernel, device='cuda') *
                    0.5).requires_grad_(),
            bias=torch.randn(channels, device='cuda').requires_grad_())

    traffic = 2 * batch * channels * length * element_bytes(dtype)
    return Case('causal_conv1d', name, make_inputs,
                dict(activation='silu'), traffic, autocast=dtype)


def norm_case(op: str, name: str, shape: Tuple[int, ...],
              out_dtype: torch.dtype, channels_first: bool = False) -> Case:
    """A norm of a float32 residual stream (or scan output) whose output
    feeds a half-precision matrix product: out_dtype is the autocast dtype.
    The PyTorch path is F.layer_norm / F.rms_norm in float32 and a cast, what
    nn.LayerNorm under autocast and the product's cast amount to."""
    channels = shape[1] if channels_first else shape[-1]

    def make_inputs() -> Dict[str, torch.Tensor]:
        inputs = dict(
            x=torch.randn(*shape, device='cuda').requires_grad_(),
            weight=torch.randn(channels, device='cuda').requires_grad_())
        if op == 'layer_norm':
            inputs['bias'] = torch.randn(channels,
                                         device='cuda').requires_grad_()
        return inputs

    traffic = math.prod(shape) * (4 + element_bytes(out_dtype))
    return Case(op, name, make_inputs,
                dict(out_dtype=out_dtype, channels_first=channels_first),
                traffic)


def benchmark_cases() -> List[Case]:
    bf16, fp16 = torch.bfloat16, torch.float16
    return [
        with_bar(selective_scan_case(
            'Vim-S layer 224² b64 (E=768, L=197, N=16)',
            64, 768, 197, 16, bf16), 0.506, 1.97),
        with_bar(selective_scan_case(
            'Vim-S layer 1024² b8 (E=768, L=4097, N=16)',
            8, 768, 4097, 16, bf16), 1.13, 5.28),
        selective_scan_case('Vim-T layer 224² b64 (E=384, L=197, N=16)', 64,
                            384, 197, 16, bf16),
        with_bar(cross_scan_case(
            'VMamba-T stage 1 224² b64 (D=96, 56×56, N=1)',
            64, 96, 56, 56, 1, fp16), 1.16, 3.24),
        cross_scan_case('VMamba-T stage 2 224² b64 (D=192, 28×28, N=1)', 64,
                        192, 28, 28, 1, fp16),
        cross_scan_case('VMamba-T stage 3 224² b64 (D=384, 14×14, N=1)', 64,
                        384, 14, 14, 1, fp16),
        with_bar(cross_scan_case(
            'VMamba-T stage 1 1280×800 b2 (D=96, 200×320, N=1)',
            2, 96, 200, 320, 1, fp16), 0.74, 2.06),
        cross_scan_case('VMamba-T stage 2 1280×800 b2 (D=192, 100×160, N=1)',
                        2, 192, 100, 160, 1, fp16),
        cross_scan_case('VMamba-S stage 1 1333×800 b2 (D=96, 200×334, N=1)',
                        2, 96, 200, 334, 1, fp16),
        # The map of a 1333×800 image as MMDetection feeds it, padded to a
        # multiple of 32.
        cross_scan_case('VMamba-S stage 1 1344×800 b2 (D=96, 200×336, N=1)',
                        2, 96, 200, 336, 1, fp16),
        with_bar(wavefront_case(
            'Mamba2D-T stage 1 224² b64 (E=64, 56×56, N=16)',
            64, 64, 56, 56, 16, bf16), 6.04, 20.9),
        with_bar(wavefront_case(
            'Mamba2D-T stage 1 1280×800 b2 (E=64, 200×320, N=16)',
            2, 64, 200, 320, 16, bf16), 6.14, 19.8),
        wavefront_case('Mamba2D-T stage 2 224² b64 (E=128, 28×28, N=16)', 64,
                       128, 28, 28, 16, bf16),
        v2m_pass_case('V2M-S* stage 1 224² b64 row pass (D=96, 56×56, N=1)',
                      64, 96, 56, 56, 1, 'row', bf16),
        v2m_pass_case('V2M-S* stage 1 224² b64 col pass (D=96, 56×56, N=1)',
                      64, 96, 56, 56, 1, 'col', bf16),
        v2m_pass_case('V2M-S* stage 1 1333×800 b2 row pass (D=96, 200×334, '
                      'N=1)', 2, 96, 200, 334, 1, 'row', bf16),
        v2m_pass_case('V2M-S* stage 1 1333×800 b2 col pass (D=96, 200×334, '
                      'N=1)', 2, 96, 200, 334, 1, 'col', bf16),
        v2m_pass_case('V2M-S* stage 1 1280×800 b2 row pass (D=96, 200×320, '
                      'N=1)', 2, 96, 200, 320, 1, 'row', bf16),
        v2m_pass_case('V2M-S* stage 1 1280×800 b2 col pass (D=96, 200×320, '
                      'N=1)', 2, 96, 200, 320, 1, 'col', bf16),
        v2m_pass_case('V2M-B* stage 1 224² b64 row pass (D=192, 56×56, N=1)',
                      64, 192, 56, 56, 1, 'row', bf16),
        v2m_pass_case('V2M-S plain 224² b64 row pass (D=768, 14×14, N=16)',
                      64, 768, 14, 14, 16, 'row', bf16),
        v2m_pass_case('V2M-S plain 224² b64 col pass (D=768, 14×14, N=16)',
                      64, 768, 14, 14, 16, 'col', bf16),
        causal_conv1d_case('Vim-T conv 224² b128 (E=384, L=197, K=4)', 128,
                           384, 197, 4, bf16),
        causal_conv1d_case('Vim-S conv 224² b64 (E=768, L=197, K=4)', 64,
                           768, 197, 4, bf16),
        causal_conv1d_case('Vim-S conv 1024² b8 (E=768, L=4097, K=4)', 8, 768,
                           4097, 4, bf16),
        norm_case('layer_norm', 'VMamba-T stage 1 block norm 224² b128 '
                  '(56×56, C=96, fp32 -> fp16)', (128, 56, 56, 96), fp16),
        norm_case('layer_norm', 'VMamba-T stage 1 SS2D out_norm 224² b128 '
                  '(C=96 channels-first, 56×56, fp32 -> fp16)',
                  (128, 96, 56, 56), fp16, channels_first=True),
        norm_case('layer_norm', 'VMamba-T stage 3 block norm 224² b128 '
                  '(14×14, C=384, fp32 -> fp16)', (128, 14, 14, 384), fp16),
        norm_case('rms_norm', 'Vim-S block norm 224² b64 (L=197, C=384, '
                  'fp32 -> bf16)', (64, 197, 384), bf16),
    ]


OPS = {'selective_scan': selective_scan,
       'cross_selective_scan': cross_selective_scan,
       'wavefront_scan_2d': wavefront_scan_2d,
       'v2m_corner_scan': v2m_corner_scan,
       'causal_conv1d': causal_conv1d,
       'layer_norm': layer_norm,
       'rms_norm': rms_norm}


def time_ms(fn: Callable[[], None], warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` CUDA-event timings."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second)."""
    source = torch.randn(256 * 1024 * 1024, device='cuda')
    target = torch.empty_like(source)
    ms = time_ms(lambda: target.copy_(source), 3, 10)
    bandwidth = 2 * source.numel() * source.element_size() / ms / 1e6
    del source, target
    torch.cuda.empty_cache()
    return bandwidth


def run_case(case: Case, pytorch_path: bool, repeats: int) -> Dict[str, float]:
    """Forward and forward+backward times and peak memory of one path."""
    previous = os.environ.get(FORCE_PYTORCH_ENV)
    os.environ[FORCE_PYTORCH_ENV] = '1' if pytorch_path else '0'
    try:
        inputs = case.make_inputs()
        op = OPS[case.op]
        grad_out = None

        def autocast():
            if case.autocast is None:
                return contextlib.nullcontext()
            return torch.autocast('cuda', dtype=case.autocast)

        def forward():
            with torch.no_grad(), autocast():
                op(**inputs, **case.kwargs)

        def forward_backward():
            nonlocal grad_out
            with autocast():
                out = op(**inputs, **case.kwargs)
            if grad_out is None:
                grad_out = torch.randn_like(out)
            # Fresh gradients: accumulating into the inputs' .grad would add
            # a pass over every input per repeat that a model's activations
            # never take.
            torch.autograd.grad(out, list(inputs.values()), grad_out,
                                allow_unused=True)

        fwd = time_ms(forward, 3, repeats)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        fwd_bwd = time_ms(forward_backward, 3, repeats)
        peak = torch.cuda.max_memory_allocated() - baseline
        return dict(fwd=fwd, fwd_bwd=fwd_bwd, peak_mib=peak / 2**20)
    except torch.cuda.OutOfMemoryError:
        return dict(fwd=float('nan'), fwd_bwd=float('nan'),
                    peak_mib=float('nan'))
    finally:
        if previous is None:
            os.environ.pop(FORCE_PYTORCH_ENV)
        else:
            os.environ[FORCE_PYTORCH_ENV] = previous
        torch.cuda.empty_cache()


def speedup(baseline_ms: float, measured_ms: float) -> str:
    """How many times faster the measured time is than the baseline.

    Args:
        baseline_ms: The slower path's (authors', PyTorch's) time.
        measured_ms: The compiled op's time.

    Returns:
        ``baseline_ms / measured_ms`` as e.g. ``'2.31×'``, or ``'—'`` where
        either time is missing (NaN: out of memory).
    """
    ratio = baseline_ms / measured_ms
    return '—' if math.isnan(ratio) else f'{ratio:.2f}×'


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--ops', nargs='*', default=list(OPS))
    parser.add_argument('--skip-pytorch', action='store_true',
                        help='time only the compiled ops')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit('benchmark_ops.py needs a CUDA device')
    missing = [op for op in args.ops if backend(op) != 'cuda']
    if missing:
        raise SystemExit(f'no compiled CUDA op for {missing}: build mmssm._ext '
                         'first (python setup.py build_ext --inplace)')
    copy_gbs = copy_bandwidth_gbs()
    print(f'GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, '
          f'device-to-device copy {copy_gbs:.0f} GB/s')
    header = ('| op | case | path | fwd ms | fwd+bwd ms | peak MiB | '
              'fwd GB/s | fwd % of copy | authors fwd / fwd+bwd ms | '
              'fwd+bwd × authors | fwd+bwd × pytorch |')
    rows = [header, '|' + ' --- |' * 11]
    for case in benchmark_cases():
        if case.op not in args.ops:
            continue
        paths = ['cuda'] if args.skip_pytorch else ['cuda', 'pytorch']
        results = {
            path: run_case(case, path == 'pytorch', args.repeats)
            for path in paths
        }
        for path in paths:
            result = results[path]
            gbs = case.essential_bytes / result['fwd'] / 1e6
            authors = over_authors = over_pytorch = '—'
            if path == 'cuda' and case.authors_ms is not None:
                authors = f'{case.authors_ms[0]} / {case.authors_ms[1]}'
                over_authors = speedup(case.authors_ms[1], result['fwd_bwd'])
            if path == 'cuda' and 'pytorch' in results:
                over_pytorch = speedup(results['pytorch']['fwd_bwd'],
                                       result['fwd_bwd'])
            rows.append(
                f'| {case.op} | {case.name} | {path} | {result["fwd"]:.3f} | '
                f'{result["fwd_bwd"]:.3f} | {result["peak_mib"]:.0f} | '
                f'{gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {authors} | '
                f'{over_authors} | {over_pytorch} |')
            print(rows[-1], flush=True)
    print('\n'.join(rows))


if __name__ == '__main__':
    main()
