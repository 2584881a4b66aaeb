"""The plane kernels of VMamba's cross scan in bands (cross_band_kernel.cuh),
run on the CPU by the CUDA emulator, against the float64 reference. Most
cases build the kernels with a band budget of 256 pixels instead of 4096, so
that small maps take many bands of every shape."""
import pytest
import torch

import cuda_testing
from cuda_emulation import SMALL_PLANE_BUDGET, build_emulated_library
from test_cross_plane_emulated import errors_against_reference, plane_inputs


@pytest.fixture(scope='module')
def small_band_library(tmp_path_factory):
    return build_emulated_library('cross_scan_driver.cpp',
                                  tmp_path_factory.mktemp('bands'),
                                  SMALL_PLANE_BUDGET)


def slowly_decaying(inputs):
    """Inputs without softplus whose step sizes (about 0.005) keep a band's
    decay far from zero, so that the state carried across bands shows in
    every output (with steps near 0.3 it fades within a few dozen steps)."""
    inputs['delta'] = inputs['delta'] * 0.02
    inputs['delta_bias'] = inputs['delta_bias'] * 0.02
    return inputs


def assert_matches_reference(library, inputs, dtype, delta_softplus):
    errors = errors_against_reference(library, inputs, dtype, delta_softplus)
    cuda_testing.assert_close(errors, dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('delta_softplus', [True, False])
@pytest.mark.parametrize(
    'height,width',
    [
        (17, 19),  # row bands of 13 rows, column bands of 8, 8 and 3
        (16, 40),  # vector runs: row bands of 6 rows, column bands of 16
        (24, 20),  # vector row bands of 12 rows (runs span two rows),
        # column bands of 8, 8 and 4 columns, single accesses
        (60, 6),  # row bands of 42 (252 pixels) and 18 rows, single accesses
        (40, 8),  # column bands of 6 and 2 columns, single accesses
        (2, 200),  # bands of one row; column bands of 128 and 72, vector
        (200, 2),  # bands of one column
    ])
def test_emulated_bands_match_reference(small_band_library, dtype,
                                        delta_softplus, height, width):
    # Without softplus, the steps past a band's pixels (which carry the
    # adjoint entering the band) must not give the bias a gradient.
    inputs = plane_inputs(2, 2, height, width, delta_softplus)
    assert_matches_reference(small_band_library, inputs, dtype,
                             delta_softplus)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('height,width', [(17, 19), (16, 40)])
def test_emulated_bands_carry_slowly_decaying_states(small_band_library,
                                                     dtype, height, width):
    inputs = slowly_decaying(plane_inputs(2, 2, height, width, False))
    assert_matches_reference(small_band_library, inputs, dtype, False)


def test_emulated_bands_without_options(small_band_library):
    inputs = plane_inputs(1, 3, 19, 17, False, with_options=False)
    assert_matches_reference(small_band_library, inputs, torch.float64, False)


def test_emulated_bands_of_the_real_budget(emulated_cross_library):
    # 70 x 64 with 4096-pixel bands: row bands of 64 and 6 rows, column
    # bands of 56 and 8 columns, 512-thread blocks.
    inputs = plane_inputs(1, 2, 70, 64, True)
    assert_matches_reference(emulated_cross_library, inputs, torch.float64,
                             True)


@pytest.mark.parametrize('edit', [
    # The carry without the band's decay: every entering state is wrong.
    {'value = totals[band].a * value + totals[band].b;':
     'value = totals[band].b;'},
    # The column bands start from zero instead of the row bands' sums.
    {'  if constexpr (View::kAddsSum) {': '  if constexpr (false) {'},
])
def test_emulator_sees_a_broken_band_kernel(tmp_path, edit):
    library = build_emulated_library('cross_scan_driver.cpp', tmp_path,
                                     {**SMALL_PLANE_BUDGET, **edit})
    inputs = slowly_decaying(plane_inputs(1, 1, 17, 19, False))
    errors = errors_against_reference(library, inputs, torch.float64, False)
    with pytest.raises(AssertionError):
        cuda_testing.assert_close(errors, torch.float64)
