"""Tests of the compiled CUDA scan ops (mmssm/ops/cuda_ops.py, csrc/).

Every kernel output and every input gradient is compared with the float64
references of mmssm/ops/reference.py on fresh random inputs.
"""
from typing import Dict, Optional, Union

import pytest
import torch
from torch import Tensor

from mmssm.ops import cuda_ops
from mmssm.ops.reference import (cross_selective_scan_reference,
                                 selective_scan_reference)
import cuda_testing
from cuda_testing import (ALL_DTYPES, TOLERANCES, assert_close,
                          assert_sanitizer_clean, needs_sanitizer,
                          over_tolerance, relative_error, sample)

WEIGHT_NAMES = ('A', 'D', 'delta_bias')


def errors_against_reference(inputs: Dict[str, Optional[Tensor]], compiled,
                             reference, dtype: torch.dtype,
                             **kwargs) -> Dict[str, Union[float, str]]:
    """:func:`cuda_testing.errors_against_reference`; A, D and delta_bias
    are the weights."""
    return cuda_testing.errors_against_reference(
        inputs, compiled, reference, dtype,
        lambda name, value: name in WEIGHT_NAMES, **kwargs)


def selective_scan_inputs(batch: int, dim: int, length: int, dstate: int,
                          bc_layout: str, groups: int = 1,
                          with_D: bool = True, with_z: bool = True,
                          with_bias: bool = True, contiguous: bool = True
                          ) -> Dict[str, Optional[Tensor]]:
    """Inputs of selective_scan; bc_layout: 'shared', 'grouped', 'constant'
    or 'mixed' (variable B, constant C)."""

    def projection(variable: bool) -> Tensor:
        if not variable:
            return sample((dim, dstate))
        if bc_layout == 'grouped':
            return sample((batch, groups, dstate, length),
                          contiguous=contiguous)
        return sample((batch, dstate, length), contiguous=contiguous)

    return {
        'u': sample((batch, dim, length), contiguous=contiguous),
        'delta': sample((batch, dim, length), 0.5, -1.0, contiguous),
        'A': -torch.exp(sample((dim, dstate), 0.5)),
        'B': projection(bc_layout != 'constant'),
        'C': projection(bc_layout not in ('constant', 'mixed')),
        'D': sample((dim, )) if with_D else None,
        'z': sample((batch, dim, length)) if with_z else None,
        'delta_bias': sample((dim, ), 0.3) if with_bias else None,
    }


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('length', [1, 7, 131, 257, 1031])
def test_selective_scan_matches_reference(dtype, length):
    inputs = selective_scan_inputs(2, 5, length, 16, 'shared')
    errors = errors_against_reference(
        inputs, cuda_ops.selective_scan_cuda, selective_scan_reference, dtype,
        delta_softplus=True)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('bc_layout,groups', [('grouped', 2),
                                              ('grouped', 3),
                                              ('constant', 1),
                                              ('mixed', 1)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_selective_scan_projection_layouts(bc_layout, groups, dtype):
    inputs = selective_scan_inputs(3, 6, 97, 8, bc_layout, groups)
    errors = errors_against_reference(
        inputs, cuda_ops.selective_scan_cuda, selective_scan_reference, dtype,
        delta_softplus=True)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('dstate', [1, 3, 64])
def test_selective_scan_state_sizes_without_options(dstate):
    # No D, z or bias, and delta used as given (kept positive).
    inputs = selective_scan_inputs(1, 4, 613, dstate, 'shared', with_D=False,
                                   with_z=False, with_bias=False,
                                   contiguous=False)
    inputs['delta'] = torch.rand_like(inputs['delta']) * 0.5 + 0.01
    errors = errors_against_reference(
        inputs, cuda_ops.selective_scan_cuda, selective_scan_reference,
        torch.float32, delta_softplus=False)
    assert_close(errors, torch.float32)


@pytest.mark.cuda
def test_selective_scan_large_steps_stay_finite():
    inputs = selective_scan_inputs(1, 4, 4099, 16, 'shared')
    inputs['delta'] = torch.full_like(inputs['delta'], 20.0)
    inputs['A'] = torch.full_like(inputs['A'], -16.0)
    errors = errors_against_reference(
        inputs, cuda_ops.selective_scan_cuda, selective_scan_reference,
        torch.float32, delta_softplus=True)
    assert_close(errors, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize('length', [5, 600, 2051])
def test_selective_scan_last_state(length):
    inputs = selective_scan_inputs(2, 3, length, 4, 'shared')
    out, last = cuda_ops.selective_scan_cuda(**inputs, delta_softplus=True,
                                             return_last_state=True)
    ref_inputs = {k: None if v is None else v.double()
                  for k, v in inputs.items()}
    ref_out, ref_last = selective_scan_reference(
        **ref_inputs, delta_softplus=True, return_last_state=True)
    assert last.dtype == torch.float32 and last.shape == (2, 3, 4)
    assert relative_error(out, ref_out) < 1e-5
    assert relative_error(last, ref_last) < 1e-5


def cross_inputs(batch: int, dim: int, height: int, width: int, dstate: int,
                 with_options: bool = True,
                 contiguous: bool = True) -> Dict[str, Optional[Tensor]]:
    return {
        'u': sample((batch, dim, height, width), contiguous=contiguous),
        'delta': sample((batch, 4, dim, height, width), 0.5, -1.0),
        'A': -torch.exp(sample((4 * dim, dstate), 0.5)),
        'B': sample((batch, 4, dstate, height, width), contiguous=contiguous),
        'C': sample((batch, 4, dstate, height, width)),
        'D': sample((4 * dim, )) if with_options else None,
        'delta_bias': sample((4 * dim, ), 0.3) if with_options else None,
    }


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('height,width', [(1, 7), (9, 1), (6, 9),
                                          (13, 23), (37, 31)])
def test_cross_selective_scan_matches_reference(dtype, height, width):
    inputs = cross_inputs(2, 3, height, width, 2, contiguous=height > 1)
    errors = errors_against_reference(
        inputs, cuda_ops.cross_selective_scan_cuda,
        cross_selective_scan_reference, dtype, delta_softplus=True)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('dstate', [1, 3, 4, 5])
@pytest.mark.parametrize('batch,dim,height,width', [
    (1, 5, 37, 40),  # rows and columns in two line groups
    (2, 4, 1, 300),  # one long row: many chunks, columns of one pixel
    # Three channels, a partial group of four. With one channel, D's
    # gradient is four copies of one sum of 600 products, which random
    # inputs now and then cancel to about 0.1: float32's summation error
    # then exceeds 1e-5 of it (3.4e-5 on the H100, fourteenth session).
    (1, 3, 300, 2),
    (2, 6, 31, 33),  # chunks of 16 with a partial last chunk
])
def test_cross_scan_tiles_and_states_match_reference(dstate, batch, dim,
                                                     height, width,
                                                     monkeypatch):
    # Up to 4 states run on the tiled kernels (one state here too, which
    # would otherwise take the plane kernels), 5 on the cross layout.
    assert cuda_ops._cross_uses_tiles(batch, dim, dstate) == (dstate <= 4)
    monkeypatch.setattr(cuda_ops, '_cross_uses_planes', lambda *_: False)
    inputs = cross_inputs(batch, dim, height, width, dstate)
    errors = errors_against_reference(
        inputs, cuda_ops.cross_selective_scan_cuda,
        cross_selective_scan_reference, torch.float32, delta_softplus=True)
    assert_close(errors, torch.float32)


def test_cross_scan_takes_tiles_for_few_sequences():
    assert cuda_ops._cross_uses_tiles(2, 96, 1)  # VMamba-T 1280x800 batch 2
    assert cuda_ops._cross_uses_tiles(2, 768, 4)  # stage 4, 4 states
    assert not cuda_ops._cross_uses_tiles(64, 96, 1)  # 224² batch 64
    assert not cuda_ops._cross_uses_tiles(2, 96, 5)  # too many states


def test_cross_scan_takes_planes_for_one_state():
    assert cuda_ops._cross_uses_planes(56, 56, 1)  # VMamba stage 1 at 224²
    assert cuda_ops._cross_uses_planes(50, 80, 1)  # stage 3 at 1280x800
    assert cuda_ops._cross_uses_planes(64, 64, 1)  # the largest whole map
    assert cuda_ops._cross_uses_planes(1, 4096, 1)
    # Larger maps in bands of whole rows and columns.
    assert cuda_ops._cross_uses_planes(65, 64, 1)
    assert cuda_ops._cross_uses_planes(200, 320, 1)  # stage 1, 1280x800
    assert cuda_ops._cross_uses_planes(4096, 4096, 1)
    assert not cuda_ops._cross_uses_planes(1, 4097, 1)  # a side too long
    assert not cuda_ops._cross_uses_planes(4097, 2, 1)
    assert not cuda_ops._cross_uses_planes(56, 56, 2)  # two states


def test_v2m_takes_planes_for_one_state_without_gate():
    half = torch.float16

    def planes(height, width, axis_col=False, states=1, gated=False):
        return cuda_ops._v2m_uses_planes(height, width, axis_col, states,
                                         gated, half, None)

    assert planes(56, 56) and planes(64, 64) and planes(1, 4096)
    # The row pass on larger maps in bands of whole rows (a row must fit in
    # a band); the column pass only on whole maps.
    assert planes(200, 334) and planes(4097, 1) and planes(2, 4096)
    assert not planes(1, 4097)
    assert planes(64, 64, axis_col=True)
    assert not planes(200, 320, axis_col=True)
    assert not planes(65, 64, axis_col=True)
    assert not planes(56, 56, states=2)
    assert not planes(56, 56, gated=True)


def test_cross_scan_bands_save_their_entering_states():
    u, A = torch.empty(2, 3, 200, 320), torch.empty(12, 1)
    # One state entering each band (at most one band per line), no sums.
    assert cuda_ops._cross_buffer_shapes(u, A, True) == ((2, 4, 3, 1, 1, 320),
                                                         (2, 4, 3, 0))
    small = torch.empty(2, 3, 56, 56)
    assert cuda_ops._cross_buffer_shapes(small, A, True) == (
        (2, 4, 3, 1, 0, 0), (2, 4, 3, 0))
    assert cuda_ops._cross_buffer_shapes(u, A, False) == (
        (2, 4, 3, 1, 20, 320), (2, 4, 3, 320))


def test_cross_scan_planes_in_float64_follow_the_shared_memory(monkeypatch):
    # Backward, 6 float64 maps of 64 x 64 (+ padding) take 202 800 bytes.
    a100, h100 = 166912, 232448
    monkeypatch.setattr(cuda_ops, '_shared_memory_per_block', lambda _: a100)
    assert not cuda_ops._cross_uses_planes(64, 64, 1, torch.float64, 'cuda')
    assert cuda_ops._cross_uses_planes(52, 52, 1, torch.float64, 'cuda')
    # Maps cover whole warps of 8 steps a thread: 57 x 58 = 3306 pixels take
    # 3328 steps (164 784 bytes), 58 x 58 = 3364 take 3584 (177 456 bytes).
    assert cuda_ops._cross_uses_planes(57, 58, 1, torch.float64, 'cuda')
    assert not cuda_ops._cross_uses_planes(58, 58, 1, torch.float64, 'cuda')
    assert cuda_ops._cross_uses_planes(64, 64, 1, torch.float32, 'cuda')
    monkeypatch.setattr(cuda_ops, '_shared_memory_per_block', lambda _: h100)
    assert cuda_ops._cross_uses_planes(64, 64, 1, torch.float64, 'cuda')


@pytest.mark.cuda
def test_cross_scan_planes_in_float64_need_the_shared_memory():
    # 6 float64 maps of 64 x 64 (+ padding) take 202 800 bytes: an H100
    # allows them, an A100 (163 KB) does not.
    device = torch.device('cuda')
    limit = torch.cuda.get_device_properties(
        device).shared_memory_per_block_optin
    assert cuda_ops._cross_uses_planes(64, 64, 1, torch.float64,
                                       device) == (202800 <= limit)
    assert cuda_ops._cross_uses_planes(64, 64, 1, torch.float32, device)
    assert cuda_ops._cross_uses_planes(28, 28, 1, torch.float64, device)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('height,width', [(1, 1), (1, 7), (9, 1), (6, 9),
                                          (13, 23), (37, 31), (4, 6),
                                          (8, 13)])
def test_cross_scan_planes_match_reference(dtype, height, width):
    # Partial warps and threads, one-pixel lines, non-square maps; maps of a
    # multiple of 8 pixels (4 x 6, 8 x 13) take the vector accesses.
    assert cuda_ops._cross_uses_planes(height, width, 1)
    inputs = cross_inputs(2, 3, height, width, 1, contiguous=height > 1)
    errors = errors_against_reference(
        inputs, cuda_ops.cross_selective_scan_cuda,
        cross_selective_scan_reference, dtype, delta_softplus=True)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('batch,dim,height,width', [
    (1, 2, 64, 64),  # the largest map: 512 threads of 8 steps
    (2, 1, 1, 4096),  # one row
    (1, 2, 4093, 1),  # one (prime) column
    (3, 5, 56, 56),  # VMamba stage 1 at 224², 13 warps
])
def test_cross_scan_large_planes_match_pytorch_path(batch, dim, height,
                                                     width):
    # Maps too long for the step-by-step reference: the float64 kernels
    # against mmssm's float64 PyTorch path, outputs and every gradient.
    assert cuda_ops._cross_uses_planes(height, width, 1)
    inputs = {
        name: None if value is None else value.double()
        for name, value in cross_inputs(batch, dim, height, width, 1).items()
    }
    assert_cross_kernels_match_pytorch_path(inputs)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32])
@pytest.mark.parametrize('shape', [(6, 8), (70, 64)])
def test_cross_scan_planes_take_unaligned_tensors(dtype, shape):
    # A map of 48 pixels (and one of 70 x 64, in bands) takes vector
    # accesses only where every tensor is 16-byte aligned; the same values 2
    # or 4 bytes past an aligned address take single accesses and give the
    # same outputs and gradients, up to the order of the float32 sums over
    # pixels: the weight gradients sum terms of either sign over the 4480
    # pixels (D's, of dy * u, differed by 5e-6 and once by 1.01e-5
    # relative), so they get 1e-4.
    def unaligned(tensor: Tensor) -> Tensor:
        storage = torch.empty(tensor.numel() + 1, dtype=dtype,
                              device=tensor.device)
        view = storage[1:].view(tensor.shape)
        view.copy_(tensor)
        return view.detach().requires_grad_(tensor.requires_grad)

    inputs = cross_inputs(2, 3, *shape, 1)
    maps = ('u', 'delta', 'B', 'C')
    aligned = {
        name: (value.to(dtype) if name in maps else value).detach()
        .requires_grad_()
        for name, value in inputs.items()
    }
    offset = {
        name: unaligned(value) if name in maps else
        value.detach().clone().requires_grad_()
        for name, value in aligned.items()
    }
    assert offset['u'].data_ptr() % 16 != 0
    results = []
    for scan_inputs in (aligned, offset):
        out = cuda_ops.cross_selective_scan_cuda(**scan_inputs,
                                                 delta_softplus=True)
        grads = torch.autograd.grad(out, list(scan_inputs.values()),
                                    torch.ones_like(out))
        results.append([out, *grads])
    names = ['out', *aligned]
    for name, expected, actual in zip(names, *results):
        tolerance = 1e-4 if name in ('A', 'D', 'delta_bias') else 1e-5
        assert relative_error(actual, expected) < tolerance, name


@pytest.mark.cuda
def test_cross_scan_planes_refuse_what_they_cannot_take():
    cuda_testing.skip_unless_errors_can_format_numbers()
    cross = cross_inputs(1, 2, 5, 7, 2)
    args = (cross['u'], cross['delta'], cross['A'], cross['B'], cross['C'],
            cross['D'], cross['delta_bias'], True, True)
    with pytest.raises(RuntimeError, match='plane kernels take one state'):
        cuda_ops._cross_forward(*args)
    long_row = cross_inputs(1, 1, 2, 4097, 1)
    args = (long_row['u'], long_row['delta'], long_row['A'], long_row['B'],
            long_row['C'], None, None, True, True)
    with pytest.raises(RuntimeError,
                       match='height and width must be at most 4096'):
        cuda_ops._cross_forward(*args)


def assert_cross_kernels_match_pytorch_path(
        inputs: Dict[str, Optional[Tensor]]) -> None:
    """Compares the float64 kernels of the cross scan with mmssm's float64
    PyTorch path, the output and every gradient (for walks too long for the
    step-by-step reference)."""
    from mmssm.ops.cross_scan import _cross_selective_scan_pytorch
    results = []
    for implementation in (cuda_ops.cross_selective_scan_cuda,
                           _cross_selective_scan_pytorch):
        leaves = {
            name: None if value is None else
            value.detach().clone().requires_grad_()
            for name, value in inputs.items()
        }
        out = implementation(**leaves, delta_softplus=True)
        out.backward(torch.cos(torch.arange(out.numel(), device='cuda',
                                            dtype=out.dtype)).view_as(out))
        results.append([out] + [value.grad for value in leaves.values()
                                if value is not None])
    for name, kernel, pytorch in zip(
            ['out', 'u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias'],
            *results):
        assert relative_error(kernel, pytorch) < 1e-8, name


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('height,width', [(67, 71), (70, 64), (70, 60)])
def test_cross_scan_bands_match_reference(dtype, height, width):
    # Maps over 4096 pixels walk in bands: 67 x 71 in row bands of 57 rows
    # and column bands of 56 columns, single accesses; 70 x 64 in row bands
    # of 64 rows and column bands of 56, vector accesses; 70 x 60 in row
    # bands of 68 rows with vector runs that span two rows, and column bands
    # of 56 columns with single accesses.
    inputs = cross_inputs(2, 3, height, width, 1)
    errors = errors_against_reference(
        inputs, cuda_ops.cross_selective_scan_cuda,
        cross_selective_scan_reference, dtype, delta_softplus=True)
    assert_close(errors, dtype)


@pytest.mark.cuda
def test_cross_scan_bands_without_softplus_match_reference():
    # Steps past a band's pixels must not give the bias a gradient.
    inputs = cross_inputs(1, 2, 67, 71, 1)
    inputs['delta'] = inputs['delta'].abs() * 0.1
    inputs['delta_bias'] = inputs['delta_bias'].abs() * 0.1
    errors = errors_against_reference(
        inputs, cuda_ops.cross_selective_scan_cuda,
        cross_selective_scan_reference, torch.float32, delta_softplus=False)
    assert_close(errors, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize('batch,dim,height,width,step', [
    (1, 2, 200, 320, None),  # VMamba stage 1 at 1280x800: 17 + 20 bands
    (1, 2, 200, 320, 20.0),  # every band's decay underflows
    (1, 2, 200, 320, -6.0),  # steps of 0.0025: states run across bands
    (1, 2, 200, 334, None),  # 1333x800: vector rows, single-access columns
    (2, 3, 130, 72, None),  # bands of 56 rows and of 24 columns
    (1, 1, 4096, 3, None),  # bands of one column
    (1, 1, 3, 4096, None),  # bands of one row
])
def test_cross_scan_many_bands_match_pytorch_path(batch, dim, height, width,
                                                  step):
    inputs = {
        name: None if value is None else value.double()
        for name, value in cross_inputs(batch, dim, height, width,
                                        1).items()
    }
    if step is not None:
        inputs['delta'] = torch.full_like(inputs['delta'], step)
    assert_cross_kernels_match_pytorch_path(inputs)


@pytest.mark.cuda
@pytest.mark.parametrize('step', [None, 20.0])
def test_cross_scan_long_walks_match_pytorch_path(step):
    # Detection-sized walks (hundreds of lines joined by the carry pass)
    # are too long for the step-by-step reference: compare the float64
    # kernels with mmssm's float64 PyTorch path, outputs and gradients.
    # Steps of 20 make every line's decay underflow.
    inputs = {
        name: None if value is None else value.double()
        for name, value in cross_inputs(1, 3, 120, 200, 2).items()
    }
    if step is not None:
        inputs['delta'] = torch.full_like(inputs['delta'], step)
    assert_cross_kernels_match_pytorch_path(inputs)


@pytest.mark.cuda
@pytest.mark.parametrize('dstate', [1, 16])
def test_cross_selective_scan_without_options(dstate):
    inputs = cross_inputs(1, 4, 11, 8, dstate, with_options=False)
    inputs['delta'] = torch.rand_like(inputs['delta']) * 0.5 + 0.01
    errors = errors_against_reference(
        inputs, cuda_ops.cross_selective_scan_cuda,
        cross_selective_scan_reference, torch.float32, delta_softplus=False)
    assert_close(errors, torch.float32)


@pytest.mark.cuda
def test_ops_pass_opcheck():
    # Schema, fake (meta) implementation and autograd registration agree
    # with the kernels.
    inputs = selective_scan_inputs(2, 4, 37, 3, 'shared')
    args = (inputs['u'], inputs['delta'], inputs['A'],
            inputs['B'].unsqueeze(1), inputs['C'].unsqueeze(1), inputs['D'],
            inputs['z'], inputs['delta_bias'], True, 1, 1, 1)
    torch.library.opcheck(torch.ops.mmssm.selective_scan_fwd.default,
                          args + (False, ))
    torch.library.opcheck(torch.ops.mmssm.selective_scan_fwd.default,
                          args + (True, ))
    cross = cross_inputs(1, 2, 5, 7, 2)
    cross_args = (cross['u'].flatten(2), cross['delta'].reshape(1, 8, 35),
                  cross['A'], cross['B'].reshape(1, 4, 2, 35),
                  cross['C'].reshape(1, 4, 2, 35), cross['D'], None,
                  cross['delta_bias'], True, 4, 5, 7, False)
    torch.library.opcheck(torch.ops.mmssm.selective_scan_fwd.default,
                          cross_args)
    torch.library.opcheck(
        torch.ops.mmssm.cross_scan_fwd.default,
        (cross['u'], cross['delta'], cross['A'], cross['B'], cross['C'],
         cross['D'], cross['delta_bias'], True, False))
    plane = cross_inputs(1, 2, 5, 7, 1)
    torch.library.opcheck(
        torch.ops.mmssm.cross_scan_fwd.default,
        (plane['u'], plane['delta'], plane['A'], plane['B'], plane['C'],
         plane['D'], plane['delta_bias'], True, True))


@pytest.mark.cuda
def test_torch_compile_full_graph():
    inputs = selective_scan_inputs(2, 4, 50, 4, 'shared')
    # One state: the plane kernels; two: the tiled ones.
    planes = cross_inputs(2, 3, 6, 5, 1)
    tiles = cross_inputs(2, 3, 6, 5, 2)

    def all_ops(scan_inputs, planes, tiles):
        y = cuda_ops.selective_scan_cuda(**scan_inputs, delta_softplus=True)
        y2 = cuda_ops.cross_selective_scan_cuda(**planes,
                                                delta_softplus=True)
        y3 = cuda_ops.cross_selective_scan_cuda(**tiles, delta_softplus=True)
        return y.sum() + y2.sum() + y3.sum()

    for value in (list(inputs.values()) + list(planes.values()) +
                  list(tiles.values())):
        if value is not None:
            value.requires_grad_()
    compiled = torch.compile(all_ops, fullgraph=True, backend='aot_eager')
    loss = compiled(inputs, planes, tiles)
    loss.backward()
    eager = all_ops(inputs, planes, tiles)
    assert relative_error(loss, eager) < 1e-6
    assert all(v.grad is not None for v in inputs.values() if v is not None)


@pytest.mark.cuda
@needs_sanitizer
def test_kernels_memcheck_clean():
    script = (
        'import torch\n'
        'from mmssm.ops import cuda_ops\n'
        'for dt in (torch.float32, torch.bfloat16):\n'
        '    u = torch.randn(2, 3, 300, device="cuda", dtype=dt)\n'
        '    u.requires_grad_()\n'
        '    A = -torch.rand(3, 5, device="cuda", requires_grad=True)\n'
        '    B = torch.randn(2, 5, 300, device="cuda", dtype=dt)\n'
        '    z = torch.randn(2, 3, 300, device="cuda", dtype=dt)\n'
        '    for reverse in (False, True):\n'
        '        cuda_ops.selective_scan_cuda(u, u, A, B, B, None, z, None,\n'
        '            True, reverse=reverse).sum().backward()\n'
        '    x = torch.randn(1, 3, 7, 5, device="cuda", dtype=dt)\n'
        '    x.requires_grad_()\n'
        '    d = torch.randn(1, 4, 3, 7, 5, device="cuda", dtype=dt)\n'
        '    for n in (2, 5):  # tiled kernels, then the cross layout\n'
        '        bc = torch.randn(1, 4, n, 7, 5, device="cuda", dtype=dt)\n'
        '        A4 = -torch.rand(12, n, device="cuda", requires_grad=True)\n'
        '        cuda_ops.cross_selective_scan_cuda(x, d, A4, bc, bc,\n'
        '            delta_softplus=True).sum().backward()\n'
        'torch.cuda.synchronize()\n')
    assert_sanitizer_clean('memcheck', script)


@pytest.mark.cuda
@needs_sanitizer
def test_forward_kernels_racecheck_clean():
    # Shared-memory hazards of the forward kernels (tiles staged, walked and
    # read back between barriers); chunk length 40 runs both passes.
    script = (
        'import torch\n'
        'from mmssm.ops import cuda_ops\n'
        'cuda_ops._forward_chunk_length = lambda sequences, length: 40\n'
        'for dstate in (5, 16, 70):  # one lane, two lanes, block kernel\n'
        '    u = torch.randn(2, 66, 100, device="cuda")\n'
        '    A = -torch.rand(66, dstate, device="cuda")\n'
        '    B = torch.randn(2, dstate, 100, device="cuda")\n'
        '    C = torch.randn(66, dstate, device="cuda")\n'
        '    cuda_ops.selective_scan_cuda(u, u, A, B, C, None, u, None,\n'
        '                                 True, reverse=True)\n'
        'x = torch.randn(1, 3, 7, 5, device="cuda")\n'
        'd = torch.randn(1, 4, 3, 7, 5, device="cuda")\n'
        'bc = torch.randn(1, 4, 5, 7, 5, device="cuda")\n'
        'A4 = -torch.rand(12, 5, device="cuda")\n'
        'cuda_ops.cross_selective_scan_cuda(x, d, A4, bc, bc)\n'
        'torch.cuda.synchronize()\n')
    assert_sanitizer_clean('racecheck', script)


@pytest.mark.cuda
@needs_sanitizer
@pytest.mark.parametrize('tool', ['memcheck', 'racecheck', 'synccheck'])
def test_tiled_cross_scan_sanitizer_clean(tool):
    # Two line groups of the rows, partial chunks and a partial channel
    # group: every staging, write-back and carry path runs.
    script = (
        'import torch\n'
        'from mmssm.ops import cuda_ops\n'
        'cuda_ops._cross_uses_planes = lambda *_: False\n'
        'for n in (1, 3):\n'
        '    x = torch.randn(1, 5, 37, 21, device="cuda")\n'
        '    x.requires_grad_()\n'
        '    d = torch.randn(1, 4, 5, 37, 21, device="cuda")\n'
        '    bc = torch.randn(1, 4, n, 37, 21, device="cuda")\n'
        '    A4 = -torch.rand(20, n, device="cuda", requires_grad=True)\n'
        '    D = torch.randn(20, device="cuda", requires_grad=True)\n'
        '    cuda_ops.cross_selective_scan_cuda(x, d, A4, bc, bc, D, D,\n'
        '        delta_softplus=True).sum().backward()\n'
        'torch.cuda.synchronize()\n')
    assert_sanitizer_clean(tool, script)


@pytest.mark.cuda
@needs_sanitizer
@pytest.mark.parametrize('tool', ['memcheck', 'racecheck', 'synccheck'])
def test_plane_cross_scan_sanitizer_clean(tool):
    # A partial last warp (37 x 21: 98 owners in 4 warps), a one-warp map,
    # a partial warp of vector runs (10 x 20), the largest map in bfloat16,
    # and maps in bands with single (67 x 71) and vector accesses (70 x 64):
    # every staging, scan and store path.
    script = (
        'import torch\n'
        'from mmssm.ops import cuda_ops\n'
        'for h, w, dt in ((37, 21, torch.float32), (3, 5, torch.float32),\n'
        '                 (10, 20, torch.float32),\n'
        '                 (64, 64, torch.bfloat16),\n'
        '                 (67, 71, torch.float32), (70, 64, torch.float16)):\n'
        '    x = torch.randn(2, 3, h, w, device="cuda", dtype=dt)\n'
        '    x.requires_grad_()\n'
        '    d = torch.randn(2, 4, 3, h, w, device="cuda", dtype=dt)\n'
        '    bc = torch.randn(2, 4, 1, h, w, device="cuda", dtype=dt)\n'
        '    A4 = -torch.rand(12, 1, device="cuda", requires_grad=True)\n'
        '    D = torch.randn(12, device="cuda", requires_grad=True)\n'
        '    cuda_ops.cross_selective_scan_cuda(x, d, A4, bc, bc, D, D,\n'
        '        delta_softplus=True).sum().backward()\n'
        'torch.cuda.synchronize()\n')
    assert_sanitizer_clean(tool, script)


def test_cpu_input_is_refused_with_a_clear_error():
    u = torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match='u must be a CUDA tensor'):
        cuda_ops.selective_scan_cuda(u, u, -torch.ones(2, 1),
                                     torch.ones(1, 1, 3), torch.ones(1, 1, 3))
    with pytest.raises(ValueError, match='u must be a CUDA tensor'):
        cuda_ops.cross_selective_scan_cuda(
            torch.randn(1, 2, 3, 3), torch.randn(1, 4, 2, 3, 3),
            -torch.ones(8, 1), torch.ones(1, 4, 1, 3, 3),
            torch.ones(1, 4, 1, 3, 3))


def force_backward_kernel(kernel: str, monkeypatch) -> None:
    """Sends every backward pass that ``kernel`` serves to it: few
    sequences normally take the block kernel; thresholds of 1 force the warp
    or the thread kernel (the cross layout then takes the warp kernel)."""
    if kernel == 'thread':
        monkeypatch.setattr(cuda_ops, '_MIN_THREADS_FOR_THREAD_BACKWARD', 1)
    if kernel in ('thread', 'warp'):
        monkeypatch.setattr(cuda_ops, '_MIN_SEQUENCES_PER_WARP_BACKWARD', 1)


@pytest.mark.cuda
@pytest.mark.parametrize('kernel', ['block', 'warp', 'thread'])
@pytest.mark.parametrize('length', [255, 769, 1300])
def test_every_backward_kernel_matches_reference(kernel, length,
                                                 monkeypatch):
    force_backward_kernel(kernel, monkeypatch)
    assert cuda_ops._backward_config(6, length, 5, 1)[2] == kernel
    inputs = selective_scan_inputs(2, 3, length, 5, 'grouped', groups=3)
    errors = errors_against_reference(
        inputs, cuda_ops.selective_scan_cuda, selective_scan_reference,
        torch.float32, delta_softplus=True)
    assert_close(errors, torch.float32)
    # Five states take the selective-scan kernels' cross layout.
    cross = cross_inputs(1, 3, 7, length // 7, 5)
    errors = errors_against_reference(
        cross, cuda_ops.cross_selective_scan_cuda,
        cross_selective_scan_reference, torch.float32, delta_softplus=True)
    assert_close(errors, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize('num_threads,num_items', [(32, 4), (64, 4),
                                                   (128, 4), (128, 8)])
def test_every_block_config_matches_reference(num_threads, num_items,
                                              monkeypatch):
    monkeypatch.setattr(cuda_ops, '_forward_config',
                        lambda length: (num_threads, num_items))
    # The block forward kernel serves only states the thread kernel cannot
    # hold; a limit of 0 sends every forward pass to it.
    monkeypatch.setattr(cuda_ops, '_THREAD_SCAN_MAX_STATES', 0)
    if num_threads * num_items % cuda_ops._STATE_STRIDE == 0:
        monkeypatch.setattr(cuda_ops, '_backward_config',
                            lambda sequences, length, dstate, num_dirs:
                            (num_threads, num_items, 'block'))
    for height, width in [(12, 25), (1, 1100)]:
        inputs = selective_scan_inputs(2, 3, height * width, 3, 'shared')
        errors = errors_against_reference(
            inputs, cuda_ops.selective_scan_cuda, selective_scan_reference,
            torch.float32, delta_softplus=True)
        assert_close(errors, torch.float32)
    cross = cross_inputs(1, 2, 12, 25, 5)
    errors = errors_against_reference(
        cross, cuda_ops.cross_selective_scan_cuda,
        cross_selective_scan_reference, torch.float32, delta_softplus=True)
    assert_close(errors, torch.float32)


def test_forward_configs_cover_lengths_in_order():
    bounds = [bound for bound, _, _ in cuda_ops._FORWARD_CONFIGS]
    assert bounds == sorted(bounds)
    assert cuda_ops._forward_config(1) == cuda_ops._FORWARD_CONFIGS[0][1:]
    assert (cuda_ops._forward_config(bounds[-1] + 1) ==
            cuda_ops._LONG_SEQUENCE_CONFIG)


@pytest.mark.cuda
@pytest.mark.parametrize('kernel', ['block', 'warp', 'thread'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16,
                                   torch.float64])
@pytest.mark.parametrize('length,with_z', [(1, True), (7, False),
                                           (257, True), (1031, False)])
def test_selective_scan_reverse_matches_reference(kernel, dtype, length,
                                                  with_z, monkeypatch):
    force_backward_kernel(kernel, monkeypatch)
    inputs = selective_scan_inputs(2, 6, length, 5, 'grouped', groups=3,
                                   with_z=with_z)
    errors = errors_against_reference(
        inputs, cuda_ops.selective_scan_cuda, selective_scan_reference, dtype,
        delta_softplus=True, reverse=True)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('length', [5, 600])
def test_selective_scan_reverse_is_scan_of_flipped_inputs(length):
    inputs = selective_scan_inputs(2, 3, length, 4, 'shared')
    out, last = cuda_ops.selective_scan_cuda(
        **inputs, delta_softplus=True, return_last_state=True, reverse=True)
    flipped = {
        name: value.flip(-1) if value is not None and value.dim() == 3 else
        value
        for name, value in inputs.items()
    }
    flipped_out, flipped_last = cuda_ops.selective_scan_cuda(
        **flipped, delta_softplus=True, return_last_state=True)
    ref_inputs = {k: None if v is None else v.double()
                  for k, v in inputs.items()}
    _, ref_last = selective_scan_reference(
        **ref_inputs, delta_softplus=True, return_last_state=True,
        reverse=True)
    assert relative_error(out, flipped_out.flip(-1)) < 1e-6
    assert relative_error(last, flipped_last) < 1e-6
    assert relative_error(last, ref_last) < 1e-5


@pytest.mark.cuda
def test_cross_layout_refuses_reverse():
    cross = cross_inputs(1, 2, 5, 7, 2)
    args = (cross['u'].flatten(2), cross['delta'].reshape(1, 8, 35),
            cross['A'], cross['B'].reshape(1, 4, 2, 35),
            cross['C'].reshape(1, 4, 2, 35), cross['D'], None,
            cross['delta_bias'], True, 4, 5, 7, True)
    with pytest.raises(ValueError, match='reverse is only supported'):
        torch.ops.mmssm.selective_scan_fwd(*args)


@pytest.mark.cuda
@pytest.mark.parametrize('chunk_length', [1, 37, 256])
@pytest.mark.parametrize('reverse', [False, True])
def test_thread_forward_chunks_match_reference(chunk_length, reverse,
                                               monkeypatch):
    # Forced chunk lengths: chunks that end inside a tile of staged
    # positions, between saved states and on them; the local pass and the
    # composition of the chunks before each one run for every length > 1.
    monkeypatch.setattr(cuda_ops, '_forward_chunk_length',
                        lambda sequences, length: chunk_length)
    for bc_layout, groups, dim in [('grouped', 3, 6), ('mixed', 1, 70),
                                   ('constant', 1, 4)]:
        inputs = selective_scan_inputs(2, dim, 611, 5, bc_layout, groups)
        errors = errors_against_reference(
            inputs, cuda_ops.selective_scan_cuda, selective_scan_reference,
            torch.float32, delta_softplus=True, reverse=reverse)
        assert_close(errors, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize('dstate', [2, 5, 17, 33, 80])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_selective_scan_state_buckets(dstate, dtype):
    # Every compiled register-state count (2, 8, 32, 64 here; 1, 4, 16, 64
    # above) and, for 80 states, the block forward kernel.
    inputs = selective_scan_inputs(2, 3, 290, dstate, 'shared')
    errors = errors_against_reference(
        inputs, cuda_ops.selective_scan_cuda, selective_scan_reference, dtype,
        delta_softplus=True)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('chunk_length', [100, 600])
@pytest.mark.parametrize('dstate', [3, 80])
def test_forward_saves_the_states_the_backward_pass_restarts_from(
        chunk_length, dstate, monkeypatch):
    # chunk_states[..., k, :] is the state after position 256 (k + 1) - 1
    # (after the last position for the last k); a wrong one shows here
    # rather than only as wrong gradients.
    monkeypatch.setattr(cuda_ops, '_forward_chunk_length',
                        lambda sequences, length: chunk_length)
    length = 600
    inputs = selective_scan_inputs(2, 3, length, dstate, 'shared')
    args = (inputs['u'], inputs['delta'], inputs['A'],
            inputs['B'].unsqueeze(1), inputs['C'].unsqueeze(1), inputs['D'],
            inputs['z'], inputs['delta_bias'], True, 1, 1, 1)
    ref_inputs = {k: None if v is None else v.double()
                  for k, v in inputs.items()}
    for reverse in (False, True):
        _, _, chunk_states = torch.ops.mmssm.selective_scan_fwd(
            *args, reverse)
        assert chunk_states.shape == (2, 3, 3, dstate)
        for index, steps in enumerate((256, 512, 600)):
            # The state after `steps` positions in scan order.
            taken = (slice(length - steps, None) if reverse else
                     slice(0, steps))
            prefix = {
                k: v[..., taken] if v is not None and v.dim() == 3 else v
                for k, v in ref_inputs.items()
            }
            _, expected = selective_scan_reference(
                **prefix, delta_softplus=True, return_last_state=True,
                reverse=reverse)
            error = relative_error(chunk_states[:, :, index], expected)
            assert error < 1e-5, (f'reverse={reverse}: saved state {index} '
                                  f'(after {steps} positions) is off by '
                                  f'{error}')


def assert_half_the_target_threads(chunk: int, sequences: int, length: int,
                                   target: int) -> None:
    """Chunks of ``chunk`` positions make at least half of ``target``
    threads, unless every chunk is already one stretch of saved states."""
    threads = sequences * -(-length // chunk)
    strides = -(-length // cuda_ops._STATE_STRIDE)
    assert 2 * threads >= min(target, sequences * strides)


def test_forward_chunk_lengths_cover_the_sequence():
    many = cuda_ops._MIN_SEQUENCES_FOR_ONE_CHUNK
    assert cuda_ops._forward_chunk_length(many, 5000) == 5000
    for sequences, length in [(1, 1), (6, 1031), (6144, 4097), (1536, 64000)]:
        chunk = cuda_ops._forward_chunk_length(sequences, length)
        assert 1 <= chunk <= length
        assert chunk == length or chunk % cuda_ops._STATE_STRIDE == 0
        assert_half_the_target_threads(chunk, sequences, length,
                                       cuda_ops._TARGET_FORWARD_THREADS)


def test_backward_chunk_lengths_cover_the_sequence():
    stride = cuda_ops._STATE_STRIDE
    for sequences, length in [(1, 1), (6, 1031), (6144, 4097), (49152, 197),
                              (24576, 1025), (10**6, 5000)]:
        chunk = cuda_ops._backward_chunk_length(sequences, length)
        # Whole saved stretches, no chunk without positions.
        assert chunk > 0 and chunk % stride == 0
        assert chunk < length + stride
        assert_half_the_target_threads(chunk, sequences, length,
                                       cuda_ops._TARGET_BACKWARD_THREADS)


def test_backward_config_picks_the_kernel_by_layout_and_count():
    many = cuda_ops._MIN_THREADS_FOR_THREAD_BACKWARD
    max_states = cuda_ops._THREAD_BACKWARD_MAX_STATES
    # Vim-S at 224², batch 64: 49152 sequences of 197 positions, 16 states,
    # a sequence per thread.
    assert cuda_ops._backward_config(49152, 197, 16, 1) == (0, 256, 'thread')
    assert cuda_ops._backward_config(many, 5000, max_states, 1)[2] == 'thread'
    # Vim-S at 1024², batch 8: 6144 sequences of 4097 positions, in nine
    # chunks of 512.
    assert cuda_ops._backward_config(6144, 4097, 16, 1) == (0, 512, 'thread')
    # Too many states, the cross layout or too few sequences: the warp
    # kernel, and the block kernel for few sequences.
    assert cuda_ops._backward_config(many, 197, max_states + 1, 1) == (
        *cuda_ops._WARP_BACKWARD_CONFIG, 'warp')
    assert cuda_ops._backward_config(many, 197, 1, 4)[2] == 'warp'
    assert cuda_ops._backward_config(many - 1, 197, 16, 1)[2] == 'warp'
    assert cuda_ops._backward_config(6, 197, 16, 1) == (
        *cuda_ops._BLOCK_BACKWARD_CONFIGS[0][1:], 'block')
    assert cuda_ops._backward_config(6, 5000, 16, 1) == (
        *cuda_ops._LONG_SEQUENCE_CONFIG, 'block')


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
def test_thread_backward_kernel_cases(dtype, monkeypatch):
    # The thread backward kernel on every case it serves: lengths around
    # its 16-position tiles and 256-position chunks, state counts of every
    # compiled bucket (1, 2, 4, 8, 16), B/C layouts, segments of channels
    # that are not a multiple of its 64-channel blocks (70 channels: a full
    # block and one of 6; groups of 35 and of 14), reverse, and no options.
    # Every failing case is listed, so that one GPU run shows the pattern.
    force_backward_kernel('thread', monkeypatch)
    cases = [
        # (batch, dim, length, dstate, bc_layout, groups, reverse, options)
        (2, 5, 1, 16, 'shared', 1, False, True),
        (2, 5, 15, 1, 'shared', 1, True, True),
        (1, 70, 16, 2, 'grouped', 2, False, True),
        (2, 70, 17, 3, 'grouped', 5, True, False),
        (1, 6, 256, 16, 'mixed', 1, False, True),
        (2, 4, 257, 8, 'constant', 1, True, True),
        (1, 66, 600, 16, 'shared', 1, True, True),
        (1, 3, 1031, 4, 'grouped', 3, False, False),
    ]
    failures = []
    for batch, dim, length, dstate, bc_layout, groups, reverse, options in \
            cases:
        assert cuda_ops._backward_config(batch * dim, length, dstate,
                                         1)[2] == 'thread'
        inputs = selective_scan_inputs(batch, dim, length, dstate, bc_layout,
                                       groups, with_D=options,
                                       with_z=options, with_bias=options)
        if not options:
            inputs['delta'] = torch.rand_like(inputs['delta']) * 0.5 + 0.01
        errors = errors_against_reference(
            inputs, cuda_ops.selective_scan_cuda, selective_scan_reference,
            dtype, delta_softplus=options, reverse=reverse)
        bad = over_tolerance(errors, dtype)
        if bad:
            failures.append(f'batch={batch} dim={dim} length={length} '
                            f'dstate={dstate} {bc_layout}/{groups} '
                            f'reverse={reverse} options={options}: {bad}')
    assert not failures, f'{dtype}, over {TOLERANCES[dtype]}:\n' + \
        '\n'.join(failures)


@pytest.mark.cuda
def test_thread_backward_kernel_matches_warp_kernel(monkeypatch):
    # The two kernels that serve many sequences agree closely on one input
    # (a disagreement here with both close to the reference would point at
    # summation order only).
    inputs = selective_scan_inputs(3, 70, 300, 16, 'grouped', 2)
    grads = {}
    for kernel in ('warp', 'thread'):
        force_backward_kernel(kernel, monkeypatch)
        if kernel == 'warp':
            monkeypatch.setattr(cuda_ops, '_MIN_THREADS_FOR_THREAD_BACKWARD',
                                10**9)
        leaves = {k: None if v is None else v.detach().clone().requires_grad_()
                  for k, v in inputs.items()}
        out = cuda_ops.selective_scan_cuda(**leaves, delta_softplus=True)
        out.backward(torch.ones_like(out))
        grads[kernel] = {k: v.grad for k, v in leaves.items() if v is not None}
    for name, warp_grad in grads['warp'].items():
        error = relative_error(grads['thread'][name], warp_grad)
        assert error < 1e-5, f'd{name}: thread vs warp kernel {error}'


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('chunk_length', [256, 512, 1280])
def test_thread_backward_chunks_match_reference(dtype, chunk_length,
                                                monkeypatch):
    # Backward chunks of one, two and five saved stretches over 1031
    # positions (the last chunk partial), joined by their adjoints; grouped
    # B/C, the z gate, both orders.
    force_backward_kernel('thread', monkeypatch)
    monkeypatch.setattr(cuda_ops, '_backward_chunk_length',
                        lambda sequences, length: chunk_length)
    for reverse in (False, True):
        inputs = selective_scan_inputs(2, 6, 1031, 5, 'grouped', groups=3,
                                       with_z=True)
        errors = errors_against_reference(
            inputs, cuda_ops.selective_scan_cuda, selective_scan_reference,
            dtype, delta_softplus=True, reverse=reverse)
        assert_close(errors, dtype)


@pytest.mark.cuda
@needs_sanitizer
@pytest.mark.parametrize('tool', ['memcheck', 'racecheck'])
def test_thread_backward_kernel_sanitizer_clean(tool):
    # Two blocks per segment (70 channels), two saved stretches with a
    # partial last tile (300 positions) in one backward chunk and in two,
    # variable and constant B/C, both orders.
    script = (
        'import torch\n'
        'from mmssm.ops import cuda_ops\n'
        'cuda_ops._MIN_THREADS_FOR_THREAD_BACKWARD = 1\n'
        'for dt, target in ((torch.float32, 1), (torch.bfloat16, 10**6)):\n'
        '    cuda_ops._TARGET_BACKWARD_THREADS = target\n'
        '    u = torch.randn(2, 70, 300, device="cuda", dtype=dt)\n'
        '    u.requires_grad_()\n'
        '    A = -torch.rand(70, 5, device="cuda", requires_grad=True)\n'
        '    B = torch.randn(2, 5, 300, device="cuda", dtype=dt)\n'
        '    C = torch.randn(70, 5, device="cuda")\n'
        '    for reverse in (False, True):\n'
        '        cuda_ops.selective_scan_cuda(u, u, A, B, B, A[:, 0], u,\n'
        '            A[:, 1], True, reverse=reverse).sum().backward()\n'
        '        cuda_ops.selective_scan_cuda(u, u, A, B, C, None, None,\n'
        '            None, True, reverse=reverse).sum().backward()\n'
        'torch.cuda.synchronize()\n')
    assert_sanitizer_clean(tool, script)


def test_kernel_op_calls_eagerly_and_registers_the_op():
    # A _KernelOp runs its eager autograd function in eager mode with
    # gradients and its function without, and torch.compile traces the
    # registered op with its fake implementation and formula.
    traced = []

    def scale(x: Tensor, factor: float) -> tuple[Tensor, Tensor]:
        traced.append(type(x))
        return x * factor, x.new_zeros(1)

    op = cuda_ops._KernelOp('mmssm_test::scale', scale)
    op.register_fake(lambda x, factor: (torch.empty_like(x), x.new_empty(1)))

    def setup_context(ctx, inputs, output):
        ctx.factor = inputs[1]
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, grad, grad_state):
        return grad * ctx.factor, None

    eager_calls = []

    def eager(x, factor):
        eager_calls.append(factor)
        return x * factor, x.new_zeros(1)

    op.register_autograd(backward, setup_context, eager)
    x = torch.randn(5, requires_grad=True)
    out, _ = op(x, 3.0)
    assert eager_calls == [3.0] and traced == []
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((5, ), 3.0))
    with torch.no_grad():
        assert op(x, 2.0)[0].grad_fn is None
    assert traced == [Tensor] and eager_calls == [3.0]
    x.grad = None
    compiled = torch.compile(lambda t: op(t, 4.0)[0], fullgraph=True,
                             backend='aot_eager')
    compiled(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((5, ), 4.0))
    assert eager_calls == [3.0]
    torch.testing.assert_close(torch.ops.mmssm_test.scale(x, 2.0)[0], 2 * x)
