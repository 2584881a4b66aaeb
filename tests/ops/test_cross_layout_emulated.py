"""The selective-scan kernels in their cross layout (num_dirs 4, VMamba's
four directions read at their pixels and summed into one map: what cuda_ops
takes for many sequences or more than 4 states), run on the CPU by the CUDA
emulator against the float64 reference of the cross scan: the block forward
kernel and the block and warp backward kernels, on every machine."""
from functools import partial
from typing import Optional

import pytest
import torch
from torch import Tensor

from mmssm.ops import cuda_ops
from mmssm.ops.reference import cross_selective_scan_reference

import cuda_testing
from cuda_emulation import EmulatedCrossLayoutScan, build_emulated_library
from test_cross_tiled_emulated import tiled_inputs as cross_inputs

WEIGHT_NAMES = ('A', 'D', 'delta_bias')


def emulated_scan(library, forward: tuple, backward: tuple, u: Tensor,
                  delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Optional[Tensor] = None,
                  delta_bias: Optional[Tensor] = None,
                  delta_softplus: bool = False) -> Tensor:
    return EmulatedCrossLayoutScan.apply(library, forward, backward, u, delta,
                                         A, B, C, D, delta_bias,
                                         delta_softplus)


def default_launch(length: int, dstate: int) -> tuple:
    """The block forward and block backward kernels as mmssm.ops.cuda_ops
    configures them for one direction of ``length`` positions."""
    threads, items, _ = cuda_ops._backward_config(1, length, dstate, 4)
    return cuda_ops._forward_config(length), ('block', threads, items)


def assert_matches_reference(library, inputs, forward: tuple,
                             backward: tuple,
                             dtype: torch.dtype = torch.float64) -> None:
    errors = cuda_testing.errors_against_reference(
        inputs, partial(emulated_scan, library, forward, backward),
        cross_selective_scan_reference, dtype,
        lambda name, value: name in WEIGHT_NAMES, delta_softplus=True)
    cuda_testing.assert_close(errors, dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('height,width', [(5, 7), (1, 9), (9, 1), (6, 6)])
def test_emulated_cross_layout_matches_reference(emulated_scan_library,
                                                 dtype, height, width):
    # Non-square maps, lines of one pixel, two channels (float32 needs them:
    # D's gradient over one channel cancels), 5 states.
    inputs = cross_inputs(2, 2, height, width, 5)
    assert_matches_reference(emulated_scan_library, inputs,
                             *default_launch(height * width, 5), dtype)


def test_emulated_cross_layout_over_several_chunks(emulated_scan_library):
    # 400 positions in chunks of 256 (64 threads x 4 positions), forward and
    # backward: the second chunk of every direction starts from a carried
    # state and adjoint.
    inputs = cross_inputs(1, 2, 20, 20, 2)
    assert_matches_reference(emulated_scan_library, inputs, (64, 4),
                             ('block', 64, 4))


@pytest.mark.parametrize('dstate', [1, 16])
def test_emulated_cross_layout_warp_backward(emulated_scan_library, dstate):
    # The warp backward: blocks of 8 channels of one direction (10 channels:
    # a partial second block), B and C gradients summed over them.
    inputs = cross_inputs(1, 10, 6, 7, dstate)
    assert_matches_reference(emulated_scan_library, inputs,
                             default_launch(42, dstate)[0], ('warp', 256, 8))


def test_emulator_sees_a_broken_cross_layout(tmp_path):
    # Directions 2 and 3 read forwards instead of from the last pixel: the
    # comparison must fail, or it could not fail at all.
    library = build_emulated_library(
        'selective_scan_driver.cpp', tmp_path,
        {'if (direction >= 2) t = length - 1 - t;':
         'if (direction >= 4) t = length - 1 - t;'})
    with pytest.raises(AssertionError, match='relative errors over'):
        assert_matches_reference(library, cross_inputs(1, 2, 3, 5, 1),
                                 *default_launch(15, 1))
