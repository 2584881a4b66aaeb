"""Mamba2D's wavefront-scan kernels (wavefront_scan_kernel.cuh), run on the
CPU by the CUDA emulator, against the float64 reference: the kernels' logic
(tiles and their boundary states, both origins, padded state lanes) on every
machine."""
from functools import partial
from typing import Dict, Optional

import pytest
import torch
from torch import Tensor

from mmssm.ops.reference import wavefront_scan_2d_reference

import cuda_testing
from cuda_emulation import EmulatedWavefrontScan, build_emulated_library

WEIGHT_NAMES = ('A_t', 'A_l', 'D', 'delta_bias_t', 'delta_bias_l')


@pytest.fixture(scope='module')
def library(tmp_path_factory):
    return build_emulated_library('wavefront_scan_driver.cpp',
                                  tmp_path_factory.mktemp('emulator'))


def emulated_scan(library, tile_width: int, num_slots: Optional[int],
                  x: Tensor, delta_t: Tensor,
                  delta_l: Tensor, A_t: Tensor, A_l: Tensor, B_t: Tensor,
                  B_l: Tensor, C: Tensor, D: Optional[Tensor] = None,
                  delta_bias_t: Optional[Tensor] = None,
                  delta_bias_l: Optional[Tensor] = None,
                  delta_softplus: bool = False,
                  origin: str = 'tl') -> Tensor:
    return EmulatedWavefrontScan.apply(library, tile_width, num_slots, x,
                                       delta_t,
                                       delta_l, A_t, A_l, B_t, B_l, C, D,
                                       delta_bias_t, delta_bias_l,
                                       delta_softplus, origin == 'br')


def wavefront_inputs(batch: int, height: int, width: int, channels: int,
                     dstate: int) -> Dict[str, Optional[Tensor]]:
    grid = (batch, height, width)
    return {
        'x': torch.randn(*grid, channels),
        'delta_t': torch.randn(*grid, channels) * 0.5 - 1.0,
        'delta_l': torch.randn(*grid, channels) * 0.5 - 1.0,
        'A_t': -torch.exp(torch.randn(channels, dstate) * 0.5),
        'A_l': -torch.exp(torch.randn(channels, dstate) * 0.5),
        'B_t': torch.randn(*grid, dstate),
        'B_l': torch.randn(*grid, dstate),
        'C': torch.randn(*grid, dstate),
        'D': torch.randn(channels),
        'delta_bias_t': torch.randn(channels) * 0.3,
        'delta_bias_l': torch.randn(channels) * 0.3,
    }


def wavefront_errors(library, inputs: Dict[str, Optional[Tensor]],
                     dtype: torch.dtype, tile_width: int, origin: str,
                     num_slots: Optional[int] = None):
    return cuda_testing.errors_against_reference(
        inputs, partial(emulated_scan, library, tile_width, num_slots),
        wavefront_scan_2d_reference, dtype,
        lambda name, value: name in WEIGHT_NAMES, delta_softplus=True,
        origin=origin)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('height,width,origin,tile_width', [
    (1, 7, 'br', 32),  # one row, one tile
    (9, 1, 'tl', 32),  # one column
    (6, 13, 'tl', 4),  # four tiles, the last one partial
    (5, 9, 'br', 4),
    # Wide tiles (over kWavefrontNarrowTileWidth), whose forward kernel
    # loads each step's inputs at the step before: three tiles.
    (7, 53, 'tl', 24),
    (4, 41, 'br', 20),
])
def test_emulated_wavefront_matches_reference(library, dtype, height, width,
                                              origin, tile_width):
    # 3 channels of 8 states (4 per warp: the fourth is padding).
    inputs = wavefront_inputs(2, height, width, 3, 8)
    errors = wavefront_errors(library, inputs, dtype, tile_width, origin)
    cuda_testing.assert_close(errors, dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('height,width,origin,tile_width,num_slots', [
    (6, 13, 'tl', 4, 100),  # a slot for every tile of every sequence
    (19, 9, 'br', 2, 3),  # fewer slots than tiles: slots reused
    # Progress published every kWavefrontProgressRows = 8 rows: heights
    # past, at and under a multiple of it, and one row.
    (17, 11, 'tl', 3, 5),
    (16, 7, 'br', 4, 1),
    (1, 9, 'tl', 2, 2),
    (7, 53, 'br', 24, 4),  # wide tiles (the forward loads ahead)
])
def test_emulated_wavefront_tiles_in_flight(library, dtype, height, width,
                                            origin, tile_width, num_slots):
    # One block per tile, in the order of their tickets.
    inputs = wavefront_inputs(2, height, width, 3, 8)
    errors = wavefront_errors(library, inputs, dtype, tile_width, origin,
                              num_slots)
    cuda_testing.assert_close(errors, dtype)


@pytest.mark.parametrize('dstate', [1, 3])
def test_emulated_wavefront_state_sizes(library, dstate):
    # One state (32 channels a warp) and three (lanes padded to four).
    inputs = wavefront_inputs(1, 5, 11, 3, dstate)
    errors = wavefront_errors(library, inputs, torch.float64, 4, 'tl')
    cuda_testing.assert_close(errors, torch.float64)


def test_emulator_sees_a_broken_tile_boundary(tmp_path):
    # The forward pass handing zeros, not the states, to the next tile: the
    # comparison must fail, or it could not fail at all.
    stored = ('static_cast<acc_t *>(p.boundary)[boundary_index(p, lane, '
              'tile, i)] =\n              h;')
    library = build_emulated_library('wavefront_scan_driver.cpp', tmp_path,
                                     {stored: stored.replace(' h;', ' 0;')})
    inputs = wavefront_inputs(1, 4, 9, 2, 2)
    errors = wavefront_errors(library, inputs, torch.float64, 4, 'tl')
    assert cuda_testing.over_tolerance(errors, torch.float64)
