"""The tiled kernels of VMamba's cross scan (cross_scan_kernel.cuh), run on
the CPU by the CUDA emulator, against the float64 reference: every line
group, chunk and carry path of the kernels' logic, on every machine."""
from functools import partial
from typing import Dict, Optional

import pytest
import torch
from torch import Tensor

from mmssm.ops.reference import cross_selective_scan_reference

import cuda_testing
from cuda_emulation import EmulatedCrossTiledScan, build_emulated_library

WEIGHT_NAMES = ('A', 'D', 'delta_bias')


def emulated_scan(library, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                  C: Tensor, D: Optional[Tensor] = None,
                  delta_bias: Optional[Tensor] = None,
                  delta_softplus: bool = False) -> Tensor:
    return EmulatedCrossTiledScan.apply(library, u, delta, A, B, C, D,
                                        delta_bias, delta_softplus)


def tiled_inputs(batch: int, dim: int, height: int, width: int,
                 dstate: int) -> Dict[str, Optional[Tensor]]:
    return {
        'u': torch.randn(batch, dim, height, width),
        'delta': torch.randn(batch, 4, dim, height, width) * 0.5 - 1.0,
        'A': -torch.exp(torch.randn(4 * dim, dstate) * 0.5),
        'B': torch.randn(batch, 4, dstate, height, width),
        'C': torch.randn(batch, 4, dstate, height, width),
        'D': torch.randn(4 * dim),
        'delta_bias': torch.randn(4 * dim) * 0.3,
    }


def assert_matches_reference(library, inputs: Dict[str, Optional[Tensor]],
                             dtype: torch.dtype) -> None:
    errors = cuda_testing.errors_against_reference(
        inputs, partial(emulated_scan, library),
        cross_selective_scan_reference, dtype,
        lambda name, value: name in WEIGHT_NAMES, delta_softplus=True)
    cuda_testing.assert_close(errors, dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('dstate', [1, 3])
@pytest.mark.parametrize('batch,dim,height,width', [
    (1, 5, 37, 40),  # two line groups, a partial channel group
    (2, 4, 1, 70),  # one long row: chunks of 16, columns of one pixel
])
def test_emulated_tiled_kernels_match_reference(emulated_cross_library,
                                                dtype, dstate, batch, dim,
                                                height, width):
    assert_matches_reference(emulated_cross_library,
                             tiled_inputs(batch, dim, height, width, dstate),
                             dtype)


@pytest.mark.parametrize('dstate', [1, 3])
def test_emulated_tiled_kernels_on_one_channel(emulated_cross_library,
                                               dstate):
    # Partial chunks and a channel group of one. In float64: with one
    # channel, D's gradient is one sum of dy u, whose float32 products may
    # cancel below the float32 tolerance.
    assert_matches_reference(emulated_cross_library,
                             tiled_inputs(1, 1, 35, 2, dstate), torch.float64)


def test_emulated_tiled_kernels_with_four_states(emulated_cross_library):
    assert_matches_reference(emulated_cross_library,
                             tiled_inputs(1, 2, 9, 21, 4), torch.float64)


def test_emulated_tiled_kernels_refuse_five_states(emulated_cross_library):
    inputs = tiled_inputs(1, 1, 3, 3, 5)
    with pytest.raises(RuntimeError, match='hold 1 to 4 states, got 5'):
        emulated_scan(emulated_cross_library, **inputs, delta_softplus=True)


def test_emulator_sees_a_broken_carry(tmp_path):
    # The lines' carry pass without the decay of the carried state: the
    # comparison must fail, or it could not fail at all.
    library = build_emulated_library(
        'cross_scan_driver.cpp', tmp_path, {
            'carry = own[q] + exp_acc(A * decay[q]) * carry;':
            'carry = own[q] + carry;'
        })
    inputs = tiled_inputs(1, 2, 5, 6, 1)
    errors = cuda_testing.errors_against_reference(
        inputs, partial(emulated_scan, library),
        cross_selective_scan_reference, torch.float64,
        lambda name, value: name in WEIGHT_NAMES, delta_softplus=True)
    assert cuda_testing.over_tolerance(errors, torch.float64)
