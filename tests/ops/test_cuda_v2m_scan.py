"""Tests of the compiled V2M corner scan (mmssm/ops/cuda_ops.py,
csrc/common/cuda/v2m_corner_scan_kernel.cuh and, for one state without a
gate, v2m_plane_kernel.cuh).

The output and every input gradient are compared with the float64 naive
loop reference ``v2m_corner_scan_reference`` on fresh random inputs.
"""
from typing import Dict, Optional, Sequence, Union

import pytest
import torch
from torch import Tensor

from mmssm.ops import backend, compiled_ops_available, cuda_ops
from mmssm.ops.v2m_scan import v2m_corner_scan, v2m_corner_scan_reference
import cuda_testing
from cuda_testing import (ALL_DTYPES, assert_close, assert_sanitizer_clean,
                          needs_sanitizer, relative_error, sample,
                          weight_dtype)

WEIGHT_NAMES = ('A', 'D', 'delta_bias')
ALL_CORNERS = ('tl', 'tr', 'bl', 'br')


def corner_inputs(
        batch: int,
        dim: int,
        height: int,
        width: int,
        dstate: int,
        corners: Sequence[str],
        variable: str,
        shared_u: bool,
        with_options: bool = True,
        contiguous: bool = True,
        shared_z: Optional[bool] = None) -> Dict[str, Optional[Tensor]]:
    """Inputs of one pass; ``variable``: which of B and C is per pixel
    ('B': the row pass of the V2M mixer, 'C': its column pass, 'both',
    'none'); z is shared like u unless ``shared_z`` says otherwise."""
    k = len(corners)
    spatial = (height, width)
    u_shape = (batch, dim, *spatial) if shared_u else (batch, k, dim,
                                                       *spatial)
    shared_z = shared_u if shared_z is None else shared_z
    z_shape = (batch, dim, *spatial) if shared_z else (batch, k, dim,
                                                       *spatial)

    def matrix(per_pixel: bool) -> Tensor:
        if per_pixel:
            return sample((batch, k, dstate, *spatial), contiguous=contiguous)
        return sample((k * dim, dstate))

    return {
        'u': sample(u_shape, contiguous=contiguous),
        'delta': sample((batch, k, dim, *spatial), 0.5, -1.0),
        'A': -torch.exp(sample((k * dim, dstate), 0.5)),
        'B': matrix(variable in ('B', 'both')),
        'C': matrix(variable in ('C', 'both')),
        'D': sample((k * dim, )) if with_options else None,
        'z': sample(z_shape) if with_options else None,
        'delta_bias': sample((k * dim, ), 0.3) if with_options else None,
    }


def errors_against_reference(inputs: Dict[str, Optional[Tensor]],
                             dtype: torch.dtype,
                             **kwargs) -> Dict[str, Union[float, str]]:
    """:func:`cuda_testing.errors_against_reference` of the corner scan;
    A, D, delta_bias and constant (2-D) B/C are the weights."""
    return cuda_testing.errors_against_reference(
        inputs, cuda_ops.v2m_corner_scan_cuda, v2m_corner_scan_reference,
        dtype, lambda name, value: name in WEIGHT_NAMES or value.dim() == 2,
        **kwargs)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('height,width,axis', [(1, 1, 'row'), (1, 9, 'col'),
                                               (7, 1, 'row'), (5, 3, 'col'),
                                               (11, 37, 'row'),
                                               (19, 6, 'col')])
def test_v2m_scan_matches_reference(dtype, height, width, axis):
    # As the V2M mixer: shared u and per-pixel B in the row pass,
    # per-corner u and per-pixel C in the column pass. Lines of 37 and 19
    # positions span several saved chunks.
    row = axis == 'row'
    inputs = corner_inputs(2, 5, height, width, 16, ALL_CORNERS,
                           'B' if row else 'C', shared_u=row)
    errors = errors_against_reference(inputs, dtype, delta_softplus=True,
                                      axis=axis, corners=ALL_CORNERS)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('axis', ['row', 'col'])
@pytest.mark.parametrize('dstate,dim', [(1, 40), (3, 7)])
def test_v2m_scan_state_sizes_corner_subsets(axis, dstate, dim):
    # d_state 1 puts 32 channels in a warp (40 channels: two warps, the
    # second mostly idle); 3 states pad their lanes to 4. Corner subsets and
    # repeats, both B and C per pixel, no options, non-contiguous inputs.
    corners = ('br', 'tl', 'br')
    inputs = corner_inputs(1, dim, 13, 18, dstate, corners, 'both',
                           shared_u=False, with_options=False,
                           contiguous=False)
    inputs['delta'] = torch.rand_like(inputs['delta']) * 0.5 + 0.01
    errors = errors_against_reference(inputs, torch.float32,
                                      delta_softplus=False, axis=axis,
                                      corners=corners)
    assert_close(errors, torch.float32)


@pytest.mark.cuda
def test_v2m_scan_shared_gate():
    inputs = corner_inputs(2, 4, 6, 17, 2, ('tr', 'bl'), 'C', shared_u=True)
    errors = errors_against_reference(inputs, torch.float32,
                                      delta_softplus=True, axis='row',
                                      corners=('tr', 'bl'))
    assert_close(errors, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize(
    'dstate,dim,height,width,axis,variable,dtype',
    [
        # A block owns at most 16 lines and 128 threads, stages 16
        # positions at a time and 4 states' B/C at a time. 35 lines: 3 line
        # tiles of 12; 37 positions: 3 chunks; 9 states: groups of 4, 4, 1;
        # 20 channels of 12 lines: tiles of 10 channels.
        (9, 20, 35, 37, 'row', 'both', torch.float32),
        (5, 20, 37, 35, 'col', 'both', torch.float32),
        # Constant B and C: their gradients are summed in shared memory.
        (6, 11, 17, 33, 'col', 'none', torch.float32),
        (6, 11, 33, 17, 'row', 'none', torch.float64),
        # Large state sizes: the most shared memory per block (in float64
        # the launcher gives a block fewer channels to fit).
        (32, 9, 18, 20, 'row', 'B', torch.float64),
        (32, 9, 20, 18, 'col', 'C', torch.bfloat16),
        (64, 10, 17, 16, 'col', 'both', torch.float32),
        (64, 10, 16, 17, 'row', 'none', torch.float64),
        # One channel: a block of one channel row.
        (1, 1, 23, 40, 'col', 'both', torch.float16),
    ])
def test_v2m_scan_tiles_chunks_and_state_groups(dstate, dim, height, width,
                                                axis, variable, dtype):
    corners = ('bl', 'tr', 'br')
    inputs = corner_inputs(2, dim, height, width, dstate, corners, variable,
                           shared_u=axis == 'row', shared_z=axis == 'col')
    errors = errors_against_reference(inputs, dtype, delta_softplus=True,
                                      axis=axis, corners=corners)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('axis', ['row', 'col'])
@pytest.mark.parametrize('lines,length', [(2, 16), (3, 32), (13, 17),
                                          (16, 15), (17, 48), (31, 31),
                                          (47, 33)])
def test_v2m_scan_line_tiles_and_chunk_edges(axis, lines, length):
    # The kernels split element indices by the block's line count with a
    # multiply-high (tiles of 2, 3, 13, 16, 9 and 16 lines here) and
    # keep tiles in walk order, a short last chunk's columns wrapping past
    # its size for backwards corners: lengths on, just past and just short
    # of chunk edges (16 positions) for all four corners.
    height, width = (lines, length) if axis == 'row' else (length, lines)
    inputs = corner_inputs(1, 3, height, width, 2, ALL_CORNERS, 'both',
                           shared_u=axis == 'row')
    errors = errors_against_reference(inputs, torch.float32,
                                      delta_softplus=True, axis=axis,
                                      corners=ALL_CORNERS)
    assert_close(errors, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize('dim,side,dstate,variable,axis', [
    (96, 56, 1, 'B', 'row'),
    (96, 56, 1, 'C', 'col'),
    (768, 14, 16, 'B', 'row'),
    (768, 14, 16, 'C', 'col'),
])
def test_v2m_scan_model_shapes(dim, side, dstate, variable, axis):
    # The passes of V2M-S* stage 1 (56 x 56: 4 line tiles of 14, 4
    # chunks) and of V2M-S plain (14 x 14, N = 16), batch 1, in bfloat16.
    inputs = corner_inputs(1, dim, side, side, dstate, ALL_CORNERS, variable,
                           shared_u=axis == 'row')
    errors = errors_against_reference(inputs, torch.bfloat16,
                                      delta_softplus=True, axis=axis,
                                      corners=ALL_CORNERS)
    assert_close(errors, torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize('axis', ['row', 'col'])
@pytest.mark.parametrize(
    'lines,length,variable,shared_z,dtype',
    [
        # One state has its own kernels (register-carried state, dB
        # written over dout in shared memory). Constant B and C: weight
        # gradients summed over lines; float64 at the tightest tolerance.
        (5, 33, 'none', False, torch.float64),
        # Per-pixel B with a per-corner gate, per-pixel C with a shared
        # one; chunk edges and line tiles (13, 16 and 16 lines).
        (13, 17, 'B', False, torch.float32),
        (31, 31, 'C', True, torch.float32),
        (17, 48, 'both', True, torch.float16),
        # 9 channels of 14 lines per block, as V2M-S* stage 1.
        (56, 20, 'B', True, torch.bfloat16),
    ])
def test_v2m_scan_one_state(axis, lines, length, variable, shared_z, dtype):
    height, width = (lines, length) if axis == 'row' else (length, lines)
    inputs = corner_inputs(2, 11, height, width, 1, ALL_CORNERS, variable,
                           shared_u=axis == 'row', shared_z=shared_z)
    errors = errors_against_reference(inputs, dtype, delta_softplus=True,
                                      axis=axis, corners=ALL_CORNERS)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize(
    'dstate,axis,corners,shared_u,with_gate',
    [
        # The column pass of V2M-S* (one state, per-corner u, no gate) and
        # of plain V2M (16 states, a gate shared by the corners): 19 x 37
        # spans chunks and line tiles.
        (1, 'col', ALL_CORNERS, False, False),
        (16, 'col', ALL_CORNERS, False, True),
        # Rows, a corner twice (its two copies add into the same pixels),
        # shared u whose gradient the corners also add up.
        (1, 'row', ('br', 'tl', 'br'), True, True),
        (3, 'row', ('br', 'tl', 'br'), True, True),
    ])
def test_v2m_scan_merged_corners(dtype, dstate, axis, corners, shared_u,
                                 with_gate):
    # The corners add into one map in the accumulation dtype, and their
    # backward passes read its gradient.
    inputs = corner_inputs(2, 7, 19, 37, dstate, corners, 'C',
                           shared_u=shared_u, contiguous=False)
    if not with_gate:
        inputs['z'] = None
    errors = errors_against_reference(
        inputs, dtype, out_dtype=weight_dtype(dtype), delta_softplus=True,
        axis=axis, corners=corners, merge_corners=True)
    assert_close(errors, dtype)


def mixer_pass_inputs(batch: int, dim: int, height: int, width: int,
                      axis: str, contiguous: bool = True
                      ) -> Dict[str, Optional[Tensor]]:
    """A pass as V2M-S*'s mixer makes it (one state, no gate): rows read u
    shared by the corners with per-pixel B and no skip; columns read each
    corner's rows with per-pixel C and a skip."""
    row = axis == 'row'
    inputs = corner_inputs(batch, dim, height, width, 1, ALL_CORNERS,
                           'B' if row else 'C', shared_u=row,
                           contiguous=contiguous)
    inputs['z'] = None
    if row:
        inputs['D'] = None
    return inputs


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('height,width', [(56, 56), (14, 14), (7, 7),
                                          (1, 1), (1, 61), (61, 1),
                                          (64, 64), (23, 41)])
@pytest.mark.parametrize('axis', ['row', 'col'])
def test_v2m_planes_match_reference(dtype, height, width, axis):
    # The plane kernels (one block per map, all corners, lines reset inside
    # one block scan): vector runs at 56 x 56 and 64 x 64 (512 threads,
    # the largest map), single accesses at 14 x 14, 7 x 7 and 23 x 41,
    # lines of one pixel. The column pass merges its corners, as the mixer.
    assert cuda_ops._v2m_uses_planes(height, width, axis == 'col', 1, False,
                                     dtype, torch.device('cuda'))
    inputs = mixer_pass_inputs(2, 3, height, width, axis)
    merge = axis == 'col'
    errors = errors_against_reference(
        inputs, dtype, out_dtype=weight_dtype(dtype) if merge else None,
        delta_softplus=True, axis=axis, corners=ALL_CORNERS,
        merge_corners=merge)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('variable', ['B', 'C', 'both', 'none'])
@pytest.mark.parametrize('merge_corners', [False, True])
def test_v2m_planes_options(variable, merge_corners):
    # Per-pixel and constant B and C, corners out of order and one twice,
    # strided inputs, no softplus, float32 at its tolerance.
    corners = ('br', 'tl', 'br')
    inputs = corner_inputs(3, 5, 16, 24, 1, corners, variable,
                           shared_u=variable == 'B', contiguous=False)
    inputs['z'] = None
    # Without softplus the steps are the raw deltas: positive ones, as
    # negative steps grow the states by e^|ΔA| a position (to ~1e15 over a
    # column), where dA's float32 sums lose digits by cancellation.
    inputs['delta'] = inputs['delta'].abs()
    errors = errors_against_reference(
        inputs, torch.float32,
        out_dtype=torch.float32 if merge_corners else None,
        delta_softplus=False, axis='col', corners=corners,
        merge_corners=merge_corners)
    assert_close(errors, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ALL_DTYPES)
@pytest.mark.parametrize('height,width', [(67, 71), (200, 320), (200, 334)])
def test_v2m_row_pass_in_bands_matches_reference(dtype, height, width):
    # The row pass on maps of over 4096 pixels in bands of whole rows: 57
    # rows (67 x 71, single accesses), 12 rows of 320 (V2M-S* stage 1 at
    # 1280 x 800) and of 334 (1333 x 800: vector runs that span two rows).
    assert cuda_ops._v2m_uses_planes(height, width, False, 1, False, dtype,
                                     torch.device('cuda'))
    inputs = mixer_pass_inputs(1, 3, height, width, 'row')
    errors = errors_against_reference(inputs, dtype, delta_softplus=True,
                                      axis='row', corners=ALL_CORNERS)
    assert_close(errors, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('height,width,axis', [(3, 4099, 'row'),
                                               (67, 71, 'col'),
                                               (200, 320, 'col')])
def test_v2m_one_state_beyond_planes(height, width, axis):
    # A row of over 4096 pixels does not fit in a band, and the column pass
    # takes the plane kernels on whole maps only: one state keeps the
    # thread-per-line kernels there.
    assert not cuda_ops._v2m_uses_planes(height, width, axis == 'col', 1,
                                         False, torch.float32,
                                         torch.device('cuda'))
    inputs = mixer_pass_inputs(1, 2, height, width, axis)
    merge = axis == 'col'
    errors = errors_against_reference(
        inputs, torch.float32, out_dtype=torch.float32 if merge else None,
        delta_softplus=True, axis=axis, corners=ALL_CORNERS,
        merge_corners=merge)
    assert_close(errors, torch.float32)


@pytest.mark.cuda
def test_v2m_planes_save_nothing_and_give_du_in_u_dtype():
    # The forward pass of the plane kernels saves no chunk states; the
    # backward pass writes du in u's dtype. The fake implementations give
    # the same shapes and dtypes (opcheck).
    inputs = mixer_pass_inputs(2, 3, 20, 5, 'col')
    inputs = {
        name: (None if value is None else
               value if value.dim() <= 2 else value.half())
        for name, value in inputs.items()
    }
    options = (True, True, 0b1100)
    out, chunk_states = torch.ops.mmssm.v2m_corner_scan_fwd(
        *inputs.values(), *options, True)
    assert chunk_states.shape == (2, 4, 0, 1, 3, 5)
    assert out.shape == (2, 3, 20, 5) and out.dtype == torch.float32
    grads = torch.ops.mmssm.v2m_corner_scan_bwd(
        *inputs.values(), torch.randn_like(out), chunk_states, *options,
        True)
    assert grads[0].dtype == torch.float16
    torch.library.opcheck(
        torch.ops.mmssm.v2m_corner_scan_bwd.default,
        tuple(inputs.values()) + (torch.randn_like(out), chunk_states) +
        options + (True, ))
    for merge_corners in (False, True):
        args = tuple(inputs.values()) + options + (merge_corners, )
        torch.library.opcheck(torch.ops.mmssm.v2m_corner_scan_fwd.default,
                              args)


@pytest.mark.cuda
def test_v2m_public_op_dispatches_to_kernel():
    assert compiled_ops_available()
    assert backend('v2m_corner_scan') == 'cuda'
    inputs = corner_inputs(1, 3, 4, 5, 2, ALL_CORNERS, 'B', shared_u=True)
    torch.testing.assert_close(
        v2m_corner_scan(**inputs, delta_softplus=True, axis='col'),
        cuda_ops.v2m_corner_scan_cuda(**inputs, delta_softplus=True,
                                      axis='col'),
        rtol=0, atol=0)


@pytest.mark.cuda
def test_v2m_passes_opcheck():
    # Schema, fake (meta) implementation and autograd registration agree
    # with the kernel (a line of 20 positions saves one chunk state).
    inputs = corner_inputs(2, 3, 20, 5, 4, ALL_CORNERS, 'B', shared_u=True)
    for merge_corners in (False, True):
        args = tuple(inputs.values()) + (True, True, 0b1100, merge_corners)
        torch.library.opcheck(torch.ops.mmssm.v2m_corner_scan_fwd.default,
                              args)


@pytest.mark.cuda
def test_v2m_torch_compile_full_graph():
    inputs = corner_inputs(2, 3, 6, 5, 2, ALL_CORNERS, 'B', shared_u=True)
    for value in inputs.values():
        value.requires_grad_()

    def loss_fn(scan_inputs):
        rows = cuda_ops.v2m_corner_scan_cuda(**scan_inputs,
                                             delta_softplus=True, axis='row')
        merged = cuda_ops.v2m_corner_scan_cuda(**scan_inputs,
                                               delta_softplus=True,
                                               axis='col', merge_corners=True)
        return (rows**2).sum() + (merged**2).sum()

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
def test_v2m_sanitizer_clean(tool):
    # Blocks stage tiles in shared memory between barriers: 19 positions
    # make two chunks, 17 lines two line tiles, 5 states two state groups;
    # per-pixel B with a constant C, then a constant B with per-pixel C and
    # a gate of one corner each; then both again with one state (its own
    # kernels); then merged corners with five states and with one; then
    # the plane kernels (one state, no gate) with vector runs (16 x 16) and
    # single accesses (17 x 17), corners apart and merged; then 72 x 64 and
    # 72 x 67 maps, whose row pass runs in bands of rows.
    script = (
        'import torch\n'
        'from mmssm.ops import cuda_ops\n'
        'for dt, axis in ((torch.float32, "row"), (torch.bfloat16, "col")):\n'
        '    u = torch.randn(1, 3, 17, 19, device="cuda", dtype=dt)\n'
        '    u.requires_grad_()\n'
        '    d = torch.randn(1, 4, 3, 17, 19, device="cuda", dtype=dt)\n'
        '    b = torch.randn(1, 4, 5, 17, 19, device="cuda", dtype=dt)\n'
        '    A = -torch.rand(12, 5, device="cuda", requires_grad=True)\n'
        '    c = torch.ones(12, 5, device="cuda", requires_grad=True)\n'
        '    cuda_ops.v2m_corner_scan_cuda(u, d, A, b, c, c[:, 0], u,\n'
        '        c[:, 1], True, axis).sum().backward()\n'
        '    z = torch.randn(1, 4, 3, 17, 19, device="cuda", dtype=dt)\n'
        '    cuda_ops.v2m_corner_scan_cuda(u, d, A, c, b, None, z,\n'
        '        None, False, axis).sum().backward()\n'
        '    cuda_ops.v2m_corner_scan_cuda(u, d, A[:, :1], b[:, :, :1],\n'
        '        c[:, :1], c[:, 0], z, c[:, 1], True, axis).sum().backward()\n'
        '    cuda_ops.v2m_corner_scan_cuda(u, d, A[:, :1], c[:, :1],\n'
        '        b[:, :, :1], None, u, None, False, axis).sum().backward()\n'
        '    for n in (5, 1):\n'
        '        cuda_ops.v2m_corner_scan_cuda(u, d, A[:, :n], c[:, :n],\n'
        '            b[:, :, :n], c[:, 0], u, c[:, 1], True, axis,\n'
        '            merge_corners=True).sum().backward()\n'
        '    for merge in (False, True):\n'
        '        for side in (16, 17):\n'
        '            x = u[..., :side, :side]\n'
        '            cuda_ops.v2m_corner_scan_cuda(x, d[..., :side, :side],\n'
        '                A[:, :1], b[:, :, :1, :side, :side], c[:, :1],\n'
        '                c[:, 0], None, c[:, 1], True, axis,\n'
        '                merge_corners=merge).sum().backward()\n'
        'for axis in ("row", "col"):\n'
        '    u = torch.randn(1, 2, 72, 64, device="cuda", dtype=torch.half)\n'
        '    d = torch.randn(1, 4, 2, 72, 64, device="cuda",\n'
        '                    dtype=torch.half)\n'
        '    b = torch.randn(1, 4, 1, 72, 64, device="cuda",\n'
        '                    dtype=torch.half)\n'
        '    A = -torch.rand(8, 1, device="cuda", requires_grad=True)\n'
        '    c = torch.ones(8, 1, device="cuda", requires_grad=True)\n'
        '    for x in (u, u[..., :67]):\n'
        '        w = x.shape[-1]\n'
        '        cuda_ops.v2m_corner_scan_cuda(x, d[..., :w], A,\n'
        '            b[..., :w], c, c[:, 0], None, c[:, 0], True, axis,\n'
        '            merge_corners=axis == "col").sum().backward()\n'
        'torch.cuda.synchronize()\n')
    assert_sanitizer_clean(tool, script)


def test_v2m_refuses_cpu_input_and_bad_axis():
    u = torch.randn(1, 2, 3, 4)
    args = (u, torch.randn(1, 4, 2, 3, 4), -torch.ones(8, 1),
            torch.ones(8, 1), torch.ones(8, 1))
    with pytest.raises(ValueError, match='u must be a CUDA tensor'):
        cuda_ops.v2m_corner_scan_cuda(*args)
    with pytest.raises(ValueError, match="axis must be 'row' or 'col'"):
        cuda_ops.v2m_corner_scan_cuda(*args, axis='diagonal')


def test_backwards_mask_follows_the_walk_rule():
    # Right corners walk rows backwards, bottom corners walk columns
    # backwards (bit k for corner k).
    assert cuda_ops._backwards_mask(ALL_CORNERS, 'row') == 0b1010
    assert cuda_ops._backwards_mask(ALL_CORNERS, 'col') == 0b1100
    assert cuda_ops._backwards_mask(('br', 'tl'), 'row') == 0b01
    with pytest.raises(ValueError, match="corners entry 'xx'"):
        cuda_ops._backwards_mask(('xx', ), 'row')
