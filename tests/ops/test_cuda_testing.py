"""Tests, on the CPU, of the comparison the CUDA kernel tests share
(tests/ops/cuda_testing.py)."""
import pytest
import torch
from cuda_testing import (assert_close, errors_against_reference,
                          over_tolerance)


def _scaled_sum(x, w, unused=None):
    return (x * w).sum(-1)


def _scaled_sum_wrong_grad(x, w, unused=None):
    # The same output; the gradient reaching x is doubled. Like a kernel,
    # it gives `unused` a (zero) gradient, which the reference does not.
    return ((x * w).sum(-1) + (x * w.detach()).sum(-1) -
            (x * w).detach().sum(-1) + 0 * unused.sum())


def _is_weight(name, value):
    return name == 'w'


def _inputs():
    return dict(x=torch.randn(3, 5), w=torch.randn(5), unused=torch.randn(2))


def test_matching_ops_pass_with_dtypes_and_missing_gradients():
    inputs = _inputs()
    seen = {}

    def compiled(x, w, unused=None):
        seen.update(x=x.dtype, w=w.dtype)
        # Uses `unused` with a zero gradient; the reference leaves it None.
        return _scaled_sum(x, w) + 0 * unused.sum()

    errors = errors_against_reference(inputs, compiled, _scaled_sum,
                                      torch.float32, _is_weight)
    assert seen == dict(x=torch.float32, w=torch.float32)
    assert set(errors) == {'out', 'dx', 'dw', 'dunused'}
    assert_close(errors, torch.float32)
    seen.clear()
    errors = errors_against_reference(inputs, compiled, _scaled_sum,
                                      torch.float64, _is_weight)
    assert seen == dict(x=torch.float64, w=torch.float64)
    assert_close(errors, torch.float64)


def test_a_wrong_gradient_fails_and_names_its_worst_element():
    errors = errors_against_reference(_inputs(), _scaled_sum_wrong_grad,
                                      _scaled_sum, torch.float32, _is_weight)
    bad = over_tolerance(errors, torch.float32)
    assert set(bad) == {'dx', 'worst dx'}
    assert ' vs ' in bad['worst dx']
    with pytest.raises(AssertionError, match='worst dx'):
        assert_close(errors, torch.float32)
