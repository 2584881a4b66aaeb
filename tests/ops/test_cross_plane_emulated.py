"""The plane kernels of VMamba's cross scan (cross_plane_kernel.cuh), run on
the CPU by the CUDA emulator, against the float64 reference: the kernels'
logic is checked on every machine, their GPU behaviour by the CUDA tests."""
from functools import partial
from typing import Dict, Optional

import pytest
import torch
from torch import Tensor

from mmssm.ops.reference import cross_selective_scan_reference

import cuda_testing
from cuda_emulation import EmulatedCrossPlaneScan, build_emulated_library

WEIGHT_NAMES = ('A', 'D', 'delta_bias')
H100_SHARED_MEMORY = 232448


def emulated_scan(library, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                  C: Tensor, D: Optional[Tensor] = None,
                  delta_bias: Optional[Tensor] = None,
                  delta_softplus: bool = False) -> Tensor:
    return EmulatedCrossPlaneScan.apply(library, H100_SHARED_MEMORY, u, delta,
                                        A, B, C, D, delta_bias,
                                        delta_softplus)


def plane_inputs(batch: int, dim: int, height: int, width: int,
                 delta_softplus: bool,
                 with_options: bool = True) -> Dict[str, Optional[Tensor]]:
    # Without softplus the step sizes (delta + delta_bias) must be positive.
    if delta_softplus:
        delta = torch.randn(batch, 4, dim, height, width) * 0.5 - 1.0
        delta_bias = torch.randn(4 * dim) * 0.3
    else:
        delta = torch.rand(batch, 4, dim, height, width) * 0.5 + 0.01
        delta_bias = torch.rand(4 * dim) * 0.1
    return {
        'u': torch.randn(batch, dim, height, width),
        'delta': delta,
        'A': -torch.exp(torch.randn(4 * dim, 1) * 0.5),
        'B': torch.randn(batch, 4, 1, height, width),
        'C': torch.randn(batch, 4, 1, height, width),
        'D': torch.randn(4 * dim) if with_options else None,
        'delta_bias': delta_bias if with_options else None,
    }


def errors_against_reference(library, inputs: Dict[str, Optional[Tensor]],
                             dtype: torch.dtype,
                             delta_softplus: bool) -> Dict[str, object]:
    """Errors of the emulated kernels of ``library`` against the float64
    reference (see cuda_testing.errors_against_reference)."""
    return cuda_testing.errors_against_reference(
        inputs, partial(emulated_scan, library),
        cross_selective_scan_reference, dtype,
        lambda name, value: name in WEIGHT_NAMES,
        delta_softplus=delta_softplus)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('delta_softplus', [True, False])
@pytest.mark.parametrize('height,width', [(7, 9), (1, 13), (11, 1),
                                          (8, 6), (9, 40)])
def test_emulated_plane_kernels_match_reference(emulated_cross_library, dtype,
                                                delta_softplus, height,
                                                width):
    # A partial warp (7 x 9), one-pixel lines, vector runs (8 x 6, 9 x 40:
    # multiples of 8 pixels) and two warps (9 x 40).
    inputs = plane_inputs(2, 2, height, width, delta_softplus)
    errors = errors_against_reference(emulated_cross_library, inputs, dtype,
                                      delta_softplus)
    cuda_testing.assert_close(errors, dtype)


def test_emulated_plane_kernels_without_options(emulated_cross_library):
    inputs = plane_inputs(1, 3, 5, 7, False, with_options=False)
    errors = errors_against_reference(emulated_cross_library, inputs,
                                      torch.float64, False)
    cuda_testing.assert_close(errors, torch.float64)


def test_emulator_sees_a_broken_kernel(tmp_path):
    # The same kernels with the states dropped from the outputs: the
    # comparison must fail, or it could not fail at all.
    library = build_emulated_library(
        'cross_scan_driver.cpp', tmp_path,
        {'out_map[slot[i]] += C_map[slot[i]] * h;':
         'out_map[slot[i]] += C_map[slot[i]];'})
    inputs = plane_inputs(1, 1, 5, 6, True)
    errors = errors_against_reference(library, inputs, torch.float64, True)
    assert cuda_testing.over_tolerance(errors, torch.float64)
