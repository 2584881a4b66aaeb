"""The V2M corner-scan kernels (v2m_corner_scan_kernel.cuh and the plane
kernels of v2m_plane_kernel.cuh), run on the CPU by the CUDA emulator,
against the float64 reference: the kernels' logic (row and column passes,
corner walks, per-pixel and constant B/C, gates, merged corners, chunks,
one state and many, line resets, row bands) on every machine."""
from typing import Dict, Optional, Sequence

import pytest
import torch
from torch import Tensor

from mmssm.ops.cuda_ops import _backwards_mask
from mmssm.ops.v2m_scan import v2m_corner_scan_reference

import cuda_testing
from cuda_emulation import (SMALL_PLANE_BUDGET, EmulatedV2MCornerScan,
                            build_emulated_library)

WEIGHT_NAMES = ('A', 'D', 'delta_bias')
ALL_CORNERS = ('tl', 'tr', 'bl', 'br')


@pytest.fixture(scope='module')
def library(tmp_path_factory):
    return build_emulated_library('v2m_scan_driver.cpp',
                                  tmp_path_factory.mktemp('emulator'))


def corner_inputs(batch: int, dim: int, height: int, width: int, dstate: int,
                  corners: Sequence[str], variable: str,
                  shared_u: bool) -> Dict[str, Optional[Tensor]]:
    """Inputs of one pass on the CPU; ``variable``: which of B and C is per
    pixel ('B', 'C', 'both')."""
    k = len(corners)
    u_shape = ((batch, dim, height, width) if shared_u else
               (batch, k, dim, height, width))

    def matrix(per_pixel: bool) -> Tensor:
        if per_pixel:
            return torch.randn(batch, k, dstate, height, width)
        return torch.randn(k * dim, dstate)

    return {
        'u': torch.randn(u_shape),
        'delta': torch.randn(batch, k, dim, height, width) * 0.5 - 1.0,
        'A': -torch.exp(torch.randn(k * dim, dstate) * 0.5),
        'B': matrix(variable in ('B', 'both')),
        'C': matrix(variable in ('C', 'both')),
        'D': torch.randn(k * dim),
        'z': torch.randn(u_shape),
        'delta_bias': torch.randn(k * dim) * 0.3,
    }


def assert_matches_reference(library, inputs: Dict[str, Optional[Tensor]],
                             dtype: torch.dtype, axis: str,
                             corners: Sequence[str],
                             merge_corners: bool = False,
                             plane: bool = False) -> None:

    def emulated(u, delta, A, B, C, D, z, delta_bias, delta_softplus, axis,
                 corners):
        return EmulatedV2MCornerScan.apply(library, u, delta, A, B, C, D, z,
                                           delta_bias, delta_softplus,
                                           axis == 'col',
                                           _backwards_mask(corners, axis),
                                           merge_corners, plane)

    def reference(delta_softplus, axis, corners, **tensors):
        out = v2m_corner_scan_reference(**tensors,
                                        delta_softplus=delta_softplus,
                                        axis=axis, corners=corners)
        return out.sum(1) if merge_corners else out

    errors = cuda_testing.errors_against_reference(
        inputs, emulated, reference, dtype,
        lambda name, value: name in WEIGHT_NAMES or value.dim() == 2,
        delta_softplus=True, axis=axis, corners=tuple(corners))
    cuda_testing.assert_close(errors, dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('height,width,axis', [(1, 9, 'col'), (7, 1, 'row'),
                                               (11, 37, 'row'),
                                               (19, 6, 'col')])
def test_emulated_v2m_passes_match_reference(library, dtype, height, width,
                                             axis):
    # As the V2M mixer: shared u and per-pixel B in the row pass,
    # per-corner u and per-pixel C in the column pass; lines of 37 and 19
    # positions span several saved chunks.
    row = axis == 'row'
    inputs = corner_inputs(2, 3, height, width, 4, ALL_CORNERS,
                           'B' if row else 'C', shared_u=row)
    assert_matches_reference(library, inputs, dtype, axis, ALL_CORNERS)


@pytest.mark.parametrize('axis', ['row', 'col'])
def test_emulated_v2m_one_state_merged_corners(library, axis):
    # The thread-per-line kernels for one state (maps over 4096 pixels), the
    # corners summed into one map (V2M-S*).
    inputs = corner_inputs(1, 5, 9, 21, 1, ALL_CORNERS,
                           'B' if axis == 'row' else 'C',
                           shared_u=axis == 'row')
    assert_matches_reference(library, inputs, torch.float64, axis,
                             ALL_CORNERS, merge_corners=True)


def test_emulated_v2m_corner_subsets_both_matrices(library):
    corners = ('br', 'tl', 'br')
    inputs = corner_inputs(1, 4, 13, 18, 3, corners, 'both', shared_u=False)
    assert_matches_reference(library, inputs, torch.float64, 'col', corners)


def test_emulator_sees_a_broken_v2m_kernel(tmp_path):
    # The many-state forward kernel without its decay: the comparison must
    # fail, or it could not fail at all.
    library = build_emulated_library(
        'v2m_scan_driver.cpp', tmp_path, {
            'h = v2m_decay(dt[s] * A_n) * h + tile_u[row + s] * b;':
            'h = h + tile_u[row + s] * b;'
        })
    inputs = corner_inputs(1, 2, 5, 6, 2, ALL_CORNERS, 'B', shared_u=True)
    with pytest.raises(AssertionError, match='relative errors over'):
        assert_matches_reference(library, inputs, torch.float64, 'row',
                                 ALL_CORNERS)


def without(inputs: Dict[str, Optional[Tensor]],
            *names: str) -> Dict[str, Optional[Tensor]]:
    """The inputs with ``names`` left out (None)."""
    return {**inputs, **{name: None for name in names}}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('axis', ['row', 'col'])
@pytest.mark.parametrize('merge_corners', [False, True])
@pytest.mark.parametrize('height,width', [(8, 12), (9, 21), (1, 13),
                                          (11, 1)])
def test_emulated_v2m_planes_match_reference(library, dtype, axis,
                                             merge_corners, height, width):
    # The plane kernels as the V2M-S* mixer calls them: shared u and
    # per-pixel B in the row pass, per-corner u and per-pixel C with D in
    # the column pass. 8 x 12 takes vector runs, 9 x 21 single accesses
    # with lines that start inside a thread's run; lines of one pixel
    # reset at every step.
    row = axis == 'row'
    inputs = corner_inputs(2, 3, height, width, 1, ALL_CORNERS,
                           'B' if row else 'C', shared_u=row)
    inputs = without(inputs, 'z', *(('D', ) if row else ()))
    assert_matches_reference(library, inputs, dtype, axis, ALL_CORNERS,
                             merge_corners=merge_corners, plane=True)


@pytest.mark.parametrize('variable', ['B', 'C', 'both', 'neither'])
@pytest.mark.parametrize('shared_u', [False, True])
def test_emulated_v2m_planes_matrices_and_corner_subsets(
        library, variable, shared_u):
    # Constant B or C (their gradients are weight sums), a corner walked
    # twice and corners out of order, no delta bias.
    corners = ('br', 'tl', 'br')
    inputs = corner_inputs(1, 4, 7, 10, 1, corners, variable,
                           shared_u=shared_u)
    inputs = without(inputs, 'z', 'delta_bias')
    assert_matches_reference(library, inputs, torch.float64, 'col', corners,
                             plane=True)


def test_emulated_v2m_planes_on_the_largest_map(library):
    # 64 x 64 pixels, the most a block holds: 512 threads, whose 16 warps
    # join their totals in a warp scan.
    inputs = without(
        corner_inputs(1, 1, 64, 64, 1, ('tr', 'bl'), 'B', shared_u=True),
        'z')
    assert_matches_reference(library, inputs, torch.float64, 'row',
                             ('tr', 'bl'), merge_corners=True, plane=True)


@pytest.fixture(scope='module')
def small_band_library(tmp_path_factory):
    # Bands of at most 256 pixels, so that small maps take many bands.
    return build_emulated_library('v2m_scan_driver.cpp',
                                  tmp_path_factory.mktemp('v2m_bands'),
                                  SMALL_PLANE_BUDGET)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('merge_corners', [False, True])
@pytest.mark.parametrize(
    'height,width',
    [
        (17, 19),  # bands of 13 and 4 rows, single accesses
        (16, 40),  # vector runs: bands of 6, 6 and 4 rows
        (24, 20),  # vector runs spanning two rows: bands of 12 rows
        (60, 6),  # bands of 42 (252 pixels) and 18 rows, single accesses
        (2, 200),  # bands of one row
        (200, 2),  # bands of 128 and 72 rows of 2 pixels
    ])
def test_emulated_v2m_row_pass_in_bands(small_band_library, dtype,
                                        merge_corners, height, width):
    # Bands of whole rows hold whole lines of the row pass, so each is
    # walked on its own.
    inputs = without(
        corner_inputs(2, 2, height, width, 1, ALL_CORNERS, 'B',
                      shared_u=True), 'z', 'D')
    assert_matches_reference(small_band_library, inputs, dtype, 'row',
                             ALL_CORNERS, merge_corners=merge_corners,
                             plane=True)


@pytest.mark.parametrize('variable', ['both', 'neither'])
def test_emulated_v2m_bands_matrices_and_corner_subsets(small_band_library,
                                                        variable):
    corners = ('br', 'tl', 'br')
    inputs = without(
        corner_inputs(1, 3, 21, 23, 1, corners, variable, shared_u=False),
        'z')
    assert_matches_reference(small_band_library, inputs, torch.float64,
                             'row', corners, plane=True)


def test_emulator_sees_a_plane_kernel_without_line_resets(tmp_path):
    # States running on from one line into the next, as in the cross scan:
    # the comparison must fail.
    library = build_emulated_library(
        'v2m_scan_driver.cpp', tmp_path, {
            'decay[i] = (starts >> i) & 1 ? acc_t(0) : exp_acc(dt * w.A);':
            'decay[i] = exp_acc(dt * w.A);'
        })
    inputs = without(
        corner_inputs(1, 2, 5, 6, 1, ALL_CORNERS, 'B', shared_u=True), 'z')
    with pytest.raises(AssertionError, match='relative errors over'):
        assert_matches_reference(library, inputs, torch.float64, 'row',
                                 ALL_CORNERS, plane=True)
