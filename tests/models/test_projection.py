"""Tests of project_channels (one stride-0 bmm per channel projection)."""
import pytest
import torch

from mmssm.models.layers.projection import project_channels


def test_matches_matmul_on_a_channel_slice_with_gradients():
    weight = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    # A slice of channels: rows contiguous, batch stride of the whole map.
    full = torch.randn(3, 9, 11, dtype=torch.float64, requires_grad=True)
    x = full[:, 2:7]
    out = project_channels(weight, x)
    assert out.shape == (3, 7, 11) and out.is_contiguous()
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (weight, full), grad)
    expected_out = torch.matmul(weight, x)
    expected = torch.autograd.grad(expected_out, (weight, full), grad)
    torch.testing.assert_close(out, expected_out)
    for actual, wanted in zip(got, expected):
        torch.testing.assert_close(actual, wanted)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_casts_the_weight_and_returns_the_autocast_dtype(dtype):
    weight = torch.randn(4, 6, requires_grad=True)
    x = torch.randn(2, 6, 8)
    with torch.autocast('cpu', dtype=dtype):
        out = project_channels(weight, x)
        expected = torch.matmul(weight, x)
    assert out.dtype == expected.dtype == dtype
    torch.testing.assert_close(out, expected)
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32
    torch.testing.assert_close(weight.grad, x.sum(0).sum(-1).expand(4, 6),
                               rtol=2e-2, atol=2e-2)
