"""The causal conv1d kernels (causal_conv1d_kernel.cuh), run on the CPU by
the CUDA emulator, against the float64 reference (a zero-padded grouped
``F.conv1d``): forward and every gradient, on every machine."""
from functools import partial
from typing import Optional

import pytest
import torch
from torch import Tensor

import cuda_testing
from cuda_emulation import EmulatedCausalConv1d, build_emulated_library
from test_causal_conv1d import conv_inputs, conv_reference


# The backward kernel with the SiLU derivative dropped (dy passed on).
BROKEN_SILU = {
    'return dy * sig * (acc_t(1) + pre * (acc_t(1) - sig));': 'return dy;'
}


@pytest.fixture(scope='module')
def library(tmp_path_factory):
    return build_emulated_library('causal_conv1d_driver.cpp',
                                  tmp_path_factory.mktemp('emulator'))


def emulated_conv(library, x: Tensor, weight: Tensor,
                  bias: Optional[Tensor] = None, reverse: bool = False,
                  activation: Optional[str] = None) -> Tensor:
    return EmulatedCausalConv1d.apply(library, x, weight, bias, reverse,
                                      activation == 'silu')


def conv_errors(library, batch: int, channels: int, length: int, kernel: int,
                dtype: torch.dtype, reverse: bool,
                activation: Optional[str] = 'silu',
                with_bias: bool = True) -> dict:
    inputs = conv_inputs(batch, channels, length, kernel, with_bias)
    return cuda_testing.errors_against_reference(
        inputs, partial(emulated_conv, library), conv_reference, dtype,
        lambda name, value: name in ('weight', 'bias'), reverse=reverse,
        activation=activation)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize(
    'batch,channels,length,kernel',
    [
        (3, 5, 70, 4),  # odd channels, rows over three chunks of 32
        (4, 3, 1, 4),  # rows of one position, shorter than the kernel
        (2, 3, 3, 7),
        # Three groups of 8 batch elements, the last partial, and K = 1 (no
        # taps from other lanes) over whole chunks.
        (19, 2, 64, 1),
        (9, 2, 33, 8),  # a chunk and one position, the largest kernel
    ])
def test_emulated_conv_matches_reference(library, dtype, reverse, batch,
                                         channels, length, kernel):
    errors = conv_errors(library, batch, channels, length, kernel, dtype,
                         reverse)
    cuda_testing.assert_close(errors, dtype)


@pytest.mark.parametrize('with_bias,activation', [(False, None),
                                                  (True, None),
                                                  (False, 'silu')])
def test_emulated_conv_options(library, with_bias, activation):
    errors = conv_errors(library, 2, 3, 40, 3, torch.float64, True,
                         activation, with_bias)
    cuda_testing.assert_close(errors, torch.float64)


def test_emulator_sees_a_broken_conv_kernel(tmp_path):
    # The comparison must fail, or it could not fail at all.
    library = build_emulated_library('causal_conv1d_driver.cpp', tmp_path,
                                     BROKEN_SILU)
    errors = conv_errors(library, 2, 3, 40, 3, torch.float64, False)
    with pytest.raises(AssertionError):
        cuda_testing.assert_close(errors, torch.float64)
