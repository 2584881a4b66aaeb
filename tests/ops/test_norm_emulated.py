"""The LayerNorm / RMSNorm kernels (norm_kernel.cuh), run on the CPU by the
CUDA emulator, against the float64 reference: channel-last rows at every
register width, channels-first tiles, the backward pass over fewer blocks
than rows (blocks walking several rows, adding their gradient sums with
atomics), forward and every gradient, on every machine."""
from functools import partial
from typing import Optional

import pytest
import torch
from torch import Tensor

import cuda_testing
from cuda_emulation import EmulatedNorm, build_emulated_library
from test_norm import norm_inputs, norm_reference

# The block's bias-gradient sums never added to dbias.
BROKEN_DBIAS = {
    'if (p.dbias) atomicAdd(static_cast<acc_t *>(p.dbias) + c, dbias[c]);':
    'if (false) atomicAdd(static_cast<acc_t *>(p.dbias) + c, dbias[c]);'
}


@pytest.fixture(scope='module')
def library(tmp_path_factory):
    return build_emulated_library('norm_driver.cpp',
                                  tmp_path_factory.mktemp('emulator'))


def emulated_norm(library, grid: int, rms: bool, x: Tensor,
                  weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, eps: float = 1e-5,
                  channels_first: bool = False) -> Tensor:
    return EmulatedNorm.apply(library, x, weight, bias, eps, rms,
                              channels_first, grid)


def norm_errors(library, shape, dtype: torch.dtype, rms: bool,
                channels_first: bool = False, grid: int = 2,
                with_weight: bool = True, with_bias: bool = True) -> dict:
    channels = shape[1] if channels_first else shape[-1]
    inputs = norm_inputs(shape, channels, with_weight, with_bias and not rms)
    if rms:
        del inputs['bias']

    def reference(**kwargs):
        return norm_reference(**kwargs, rms=rms)

    return cuda_testing.errors_against_reference(
        inputs, partial(emulated_norm, library, grid, rms), reference, dtype,
        lambda name, value: name in ('weight', 'bias'), eps=1e-5,
        channels_first=channels_first)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('rms', [False, True])
@pytest.mark.parametrize(
    'shape',
    [
        (2, 7, 96),  # 4 channels a lane
        (3, 5),  # few channels
        (5, 127),
        (3, 513),  # 32 channels a lane
        (2, 1100),  # 64 channels a lane
        (40, 24),  # 5 blocks of rows, backward on 2
    ])
def test_emulated_rows_match_reference(library, dtype, rms, shape):
    cuda_testing.assert_close(norm_errors(library, shape, dtype, rms), dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('rms', [False, True])
@pytest.mark.parametrize(
    'shape',
    [
        (2, 96, 7, 9),  # two tiles of positions, the second partial
        (1, 5, 1, 1),
        (3, 33, 5, 13),  # channels past a 32-channel chunk
        (2, 8, 100),  # 8 tiles, backward on 2 blocks
    ])
def test_emulated_channels_first_matches_reference(library, dtype, rms,
                                                   shape):
    errors = norm_errors(library, shape, dtype, rms, channels_first=True)
    cuda_testing.assert_close(errors, dtype)


@pytest.mark.parametrize('channels_first', [False, True])
@pytest.mark.parametrize('with_weight,with_bias', [(True, False),
                                                   (False, False)])
def test_emulated_norm_options(library, channels_first, with_weight,
                               with_bias):
    shape = (2, 6, 5, 7) if channels_first else (3, 4, 40)
    errors = norm_errors(library, shape, torch.float64, False,
                         channels_first, with_weight=with_weight,
                         with_bias=with_bias)
    cuda_testing.assert_close(errors, torch.float64)


@pytest.mark.parametrize('channels_first', [False, True])
def test_emulator_sees_a_broken_norm_kernel(tmp_path, channels_first):
    # The comparison must fail, or it could not fail at all.
    library = build_emulated_library('norm_driver.cpp', tmp_path,
                                     BROKEN_DBIAS)
    shape = (2, 6, 5, 7) if channels_first else (3, 4, 40)
    errors = norm_errors(library, shape, torch.float64, False,
                         channels_first)
    with pytest.raises(AssertionError):
        cuda_testing.assert_close(errors, torch.float64)
