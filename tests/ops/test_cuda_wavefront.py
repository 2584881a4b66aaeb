"""Tests of the compiled Mamba2D wavefront scan (mmssm/ops/cuda_ops.py,
csrc/common/cuda/wavefront_scan_kernel.cuh).

The output and every input gradient are compared with the float64
pixel-by-pixel reference of mmssm/ops/reference.py on fresh random inputs.
"""
from functools import partial
from typing import Dict, Optional, Union

import pytest
import torch
from torch import Tensor

from mmssm.ops import (backend, compiled_ops_available, cuda_ops,
                       wavefront_scan_2d)
from mmssm.ops.reference import wavefront_scan_2d_reference
import cuda_testing
from cuda_testing import (ALL_DTYPES, assert_close, assert_sanitizer_clean,
                          needs_sanitizer, relative_error, sample)

WEIGHT_NAMES = ('A_t', 'A_l', 'D', 'delta_bias_t', 'delta_bias_l')






def wavefront_inputs(batch: int, height: int, width: int, channels: int,
                     dstate: int, with_options: bool = True,
                     contiguous: bool = True) -> Dict[str, Optional[Tensor]]:
    grid = (batch, height, width)
    return {
        'x': sample((*grid, channels), contiguous=contiguous),
        'delta_t': sample((*grid, channels), 0.5, -1.0),
        'delta_l': sample((*grid, channels), 0.5, -1.0,
                          contiguous=contiguous),
        'A_t': -torch.exp(sample((channels, dstate), 0.5)),
        'A_l': -torch.exp(sample((channels, dstate), 0.5)),
        'B_t': sample((*grid, dstate), contiguous=contiguous),
        'B_l': sample((*grid, dstate)),
        'C': sample((*grid, dstate), contiguous=contiguous),
        'D': sample((channels, )) if with_options else None,
        'delta_bias_t': sample((channels, ), 0.3) if with_options else None,
        'delta_bias_l': sample((channels, ), 0.3) if with_options else None,
    }


def errors_against_reference(inputs: Dict[str, Optional[Tensor]],
                             dtype: torch.dtype,
                             **kwargs) -> Dict[str, Union[float, str]]:
    """:func:`cuda_testing.errors_against_reference` of the wavefront op;
    A, D and the delta biases are the weights."""
    return cuda_testing.errors_against_reference(
        inputs, cuda_ops.wavefront_scan_2d_cuda, wavefront_scan_2d_reference,
        dtype, lambda name, value: name in WEIGHT_NAMES, **kwargs)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('height,width,origin', [(1, 1, 'tl'), (1, 7, 'br'),
                                                 (9, 1, 'tl'), (5, 3, 'br'),
                                                 (13, 17, 'tl'),
                                                 (7, 37, 'br')])
def test_wavefront_matches_reference(dtype, height, width, origin):
    # 5 channels of 16 states: the last warp's second channel is padding;
    # width 37 spans two tiles.
    inputs = wavefront_inputs(2, height, width, 5, 16)
    errors = errors_against_reference(inputs, dtype, delta_softplus=True,
                                      origin=origin)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('origin', ['tl', 'br'])
@pytest.mark.parametrize('dstate', [1, 3])
def test_wavefront_state_sizes_and_options(origin, dstate):
    # Three tiles over 37 columns; state sizes that are not a power of two
    # pad their lanes; no optional inputs, non-contiguous ones.
    assert cuda_ops._wavefront_tiling(37, 3, dstate)[1:] == (16, 3)
    inputs = wavefront_inputs(1, 11, 37, 3, dstate, with_options=False,
                              contiguous=False)
    inputs['delta_t'] = torch.rand_like(inputs['delta_t']) * 0.5 + 0.01
    inputs['delta_l'] = torch.rand_like(inputs['delta_l']) * 0.5 + 0.01
    errors = errors_against_reference(inputs, torch.float32,
                                      delta_softplus=False, origin=origin)
    assert_close(errors, torch.float32)


def kernel_scan(tile_width: int, tiles_in_flight: bool, **kwargs) -> Tensor:
    """The kernel op with a given tiling (wavefront_scan_2d_cuda's
    arguments; weights in float32)."""
    names = ('x', 'delta_t', 'delta_l', 'A_t', 'A_l', 'B_t', 'B_l', 'C', 'D',
             'delta_bias_t', 'delta_bias_l')
    args = [kwargs.get(name) for name in names]
    out, _ = cuda_ops._wavefront_forward(*args, kwargs['delta_softplus'],
                                         kwargs['origin'] == 'br',
                                         tile_width, tiles_in_flight)
    return out


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('tile_width,tiles_in_flight', [(32, True),
                                                        (32, False),
                                                        (16, False)])
def test_wavefront_other_tilings_match_reference(dtype, tile_width,
                                                 tiles_in_flight):
    # Wide tiles (the forward loads a step ahead), in flight and in turn,
    # and narrow tiles in turn, over three tiles.
    inputs = wavefront_inputs(2, 9, 2 * tile_width + 5, 5, 16)
    errors = cuda_testing.errors_against_reference(
        inputs, partial(kernel_scan, tile_width, tiles_in_flight),
        wavefront_scan_2d_reference, dtype,
        lambda name, value: name in WEIGHT_NAMES, delta_softplus=True,
        origin='br')
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('tile_width', [16, 32])
def test_wavefront_tiles_in_flight_match_tiles_in_turn(dtype, tile_width):
    # Mamba2D-T stage 1 at 1280x800, batch 2: 64 sequences of 20 (or 10)
    # tiles, 25 progress hand-overs per column, scratch slots reused (one
    # per block the GPU runs at once). A missing wait or a slot taken too
    # early shows as a difference from the same kernels walking each
    # sequence's tiles in turn; the per-pixel results are computed in the
    # same order both ways and must be equal, the atomic sums close.
    inputs = wavefront_inputs(2, 200, 320, 64, 16)
    args = [
        value.to(dtype if name not in WEIGHT_NAMES else torch.float32)
        for name, value in inputs.items()
    ]
    dout = torch.randn_like(args[0])
    results = []
    for tiles_in_flight in (False, True):
        out, boundary = cuda_ops._wavefront_forward(*args, True, False,
                                                    tile_width,
                                                    tiles_in_flight)
        grads = cuda_ops._wavefront_backward(*args, dout, boundary, True,
                                             False, tile_width,
                                             tiles_in_flight)
        results.append([out, boundary] + list(grads))
    names = ['out', 'boundary', 'dx', 'ddelta_t', 'ddelta_l', 'dA_t', 'dA_l',
             'dB_t', 'dB_l', 'dC', 'dD', 'ddelta_bias_t', 'ddelta_bias_l']
    for name, in_turn, in_flight in zip(names, *results):
        if name in ('out', 'boundary', 'dx', 'ddelta_t', 'ddelta_l'):
            assert torch.equal(in_turn, in_flight), name
        else:
            assert relative_error(in_flight, in_turn) < 1e-5, name


@pytest.mark.cuda
def test_wavefront_public_op_dispatches_to_kernel():
    assert compiled_ops_available()
    assert backend('wavefront_scan_2d') == 'cuda'
    inputs = wavefront_inputs(1, 4, 6, 2, 4)
    torch.testing.assert_close(
        wavefront_scan_2d(**inputs, delta_softplus=True),
        cuda_ops.wavefront_scan_2d_cuda(**inputs, delta_softplus=True),
        rtol=0, atol=0)


@pytest.mark.cuda
def test_wavefront_passes_opcheck():
    # Schema, fake (meta) implementation and autograd registration agree
    # with the kernel.
    inputs = wavefront_inputs(2, 5, 7, 3, 4)
    args = tuple(inputs.values()) + (True, True, 4, True)
    torch.library.opcheck(torch.ops.mmssm.wavefront_scan_fwd.default, args)


@pytest.mark.cuda
def test_wavefront_torch_compile_full_graph():
    inputs = wavefront_inputs(2, 6, 5, 3, 4)
    for value in inputs.values():
        value.requires_grad_()

    def loss_fn(scan_inputs):
        return (cuda_ops.wavefront_scan_2d_cuda(
            **scan_inputs, delta_softplus=True, origin='br')**2).sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend='aot_eager')
    loss = compiled(inputs)
    loss.backward()
    grads = {k: v.grad.clone() for k, v in inputs.items()}
    for value in inputs.values():
        value.grad = None
    eager = loss_fn(inputs)
    eager.backward()
    assert relative_error(loss, eager) < 1e-6
    for name, value in inputs.items():
        assert relative_error(grads[name], value.grad) < 1e-6, name


@pytest.mark.cuda
@needs_sanitizer
@pytest.mark.parametrize('tool', ['memcheck', 'racecheck', 'synccheck'])
def test_wavefront_sanitizer_clean(tool):
    # Three tiles in flight (16 columns each), both origins.
    script = (
        'import torch\n'
        'from mmssm.ops import cuda_ops\n'
        'for dt, origin in ((torch.float32, "tl"), (torch.bfloat16, "br")):\n'
        '    x = torch.randn(1, 5, 37, 3, device="cuda", dtype=dt)\n'
        '    x.requires_grad_()\n'
        '    bc = torch.randn(1, 5, 37, 3, device="cuda", dtype=dt)\n'
        '    A = -torch.rand(3, 3, device="cuda", requires_grad=True)\n'
        '    D = torch.randn(3, device="cuda", requires_grad=True)\n'
        '    cuda_ops.wavefront_scan_2d_cuda(x, x, x, A, A, bc, bc, bc, D,\n'
        '        D, D, True, origin).sum().backward()\n'
        'torch.cuda.synchronize()\n')
    assert_sanitizer_clean(tool, script)


def test_wavefront_refuses_cpu_input_and_bad_origin():
    features, matrix = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 2)
    inputs = dict(x=features, delta_t=features, delta_l=features,
                  A_t=-torch.ones(4, 2), A_l=-torch.ones(4, 2), B_t=matrix,
                  B_l=matrix, C=matrix)
    with pytest.raises(ValueError, match='x must be a CUDA tensor'):
        cuda_ops.wavefront_scan_2d_cuda(**inputs)
    with pytest.raises(ValueError, match='origin must be one of'):
        cuda_ops.wavefront_scan_2d_cuda(**inputs, origin='tr')


def test_wavefront_tiling_rule(monkeypatch):
    # Tiles of 16 columns, never wider than the map; tiles in flight with
    # fewer sequences than twice the SMs (an H100's 132 here) and more than
    # one tile.
    assert cuda_ops._wavefront_tiling(320, 64, 16) == (32, 16, 20)
    assert cuda_ops._wavefront_tiling(56, 64, 16) == (32, 16, 4)
    assert cuda_ops._wavefront_tiling(7, 64, 3) == (8, 7, 1)
    monkeypatch.setattr(cuda_ops, '_multiprocessors', lambda device: 132)
    device = torch.device('cuda')
    assert cuda_ops._wavefront_tiles_in_flight(2 * 32, 20, device)
    assert cuda_ops._wavefront_tiles_in_flight(263, 2, device)
    assert not cuda_ops._wavefront_tiles_in_flight(264, 2, device)
    assert not cuda_ops._wavefront_tiles_in_flight(64 * 32, 4, device)
    assert not cuda_ops._wavefront_tiles_in_flight(1, 1, device)
