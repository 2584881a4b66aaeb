"""Tests of mmssm/ops/cross_scan.py."""
from typing import Dict, Optional

import pytest
import torch
from torch import Tensor

from mmssm.ops import (cross_merge, cross_scan, cross_selective_scan,
                       selective_scan)
from mmssm.ops.reference import (cross_merge_reference, cross_scan_reference,
                                 cross_selective_scan_reference)

F64 = torch.float64
GRIDS = [(3, 5), (4, 4), (1, 6), (5, 1), (1, 1)]


@pytest.mark.parametrize('height,width', GRIDS)
def test_cross_scan_and_merge_match_reference(height, width):
    x = torch.randn(2, 3, height, width, dtype=F64)
    y = torch.randn(2, 4, 3, height, width, dtype=F64)
    torch.testing.assert_close(cross_scan(x), cross_scan_reference(x))
    torch.testing.assert_close(cross_merge(y), cross_merge_reference(y))


def test_cross_scan_hand_computed_orders():
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])
    expected = torch.tensor([[[[1.0, 2, 3, 4, 5, 6]], [[1.0, 4, 2, 5, 3, 6]],
                              [[6.0, 5, 4, 3, 2, 1]], [[6.0, 3, 5, 2, 4, 1]]]])
    torch.testing.assert_close(cross_scan(x), expected)


@pytest.mark.parametrize('height,width', GRIDS)
def test_merge_is_adjoint_of_scan(height, width):
    x = torch.randn(2, 3, height, width, dtype=F64, requires_grad=True)
    y = torch.randn(2, 4, 3, height, width, dtype=F64, requires_grad=True)
    scanned_dot = (cross_scan(x) * y.flatten(3)).sum()
    merged_dot = (x.flatten(2) * cross_merge(y)).sum()
    torch.testing.assert_close(scanned_dot, merged_dot)
    # Each backward is the other op.
    (grad_x, ) = torch.autograd.grad(scanned_dot, x)
    torch.testing.assert_close(grad_x.flatten(2), cross_merge(y.detach()))
    (grad_y, ) = torch.autograd.grad(merged_dot, y)
    torch.testing.assert_close(grad_y.flatten(3), cross_scan(x.detach()))


def make_inputs(batch: int, dim: int, state_size: int, height: int,
                width: int, with_d: bool,
                with_bias: bool) -> Dict[str, Optional[Tensor]]:
    return dict(
        u=torch.randn(batch, dim, height, width, dtype=F64),
        delta=torch.randn(batch, 4, dim, height, width, dtype=F64),
        A=-torch.rand(4 * dim, state_size, dtype=F64) * 2 - 0.1,
        B=torch.randn(batch, 4, state_size, height, width, dtype=F64),
        C=torch.randn(batch, 4, state_size, height, width, dtype=F64),
        D=torch.randn(4 * dim, dtype=F64) if with_d else None,
        delta_bias=torch.randn(4 * dim, dtype=F64) if with_bias else None)


@pytest.mark.parametrize('height,width,with_d,with_bias',
                         [(3, 5, True, True), (6, 1, False, True),
                          (1, 7, True, False), (4, 4, False, False)])
def test_cross_selective_scan_matches_reference(height, width, with_d,
                                                with_bias):
    inputs = make_inputs(2, 3, 2, height, width, with_d, with_bias)
    leaves = {
        k: v.requires_grad_()
        for k, v in inputs.items() if v is not None
    }
    out = cross_selective_scan(**inputs, delta_softplus=True)
    expected = cross_selective_scan_reference(**inputs, delta_softplus=True)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), list(leaves.values()))
    grads_ref = torch.autograd.grad((expected * weight).sum(),
                                    list(leaves.values()))
    for name, grad, grad_ref in zip(leaves, grads, grads_ref):
        torch.testing.assert_close(
            grad, grad_ref, rtol=1e-9, atol=1e-9, msg=f'gradient of {name}')


def test_cross_selective_scan_equals_composition():
    batch, dim, state_size, height, width = 2, 3, 2, 4, 5
    inputs = make_inputs(batch, dim, state_size, height, width, True, True)
    out = cross_selective_scan(**inputs, delta_softplus=True)
    # Path k's own inputs are read along path k: the k-th entry of
    # cross_scan applied to the k-th per-path map.
    def along_paths(per_path: Tensor) -> Tensor:
        return torch.stack(
            [cross_scan(per_path[:, k])[:, k] for k in range(4)], dim=1)

    y = selective_scan(
        cross_scan(inputs['u']).reshape(batch, 4 * dim, -1),
        along_paths(inputs['delta']).reshape(batch, 4 * dim, -1),
        inputs['A'],
        along_paths(inputs['B']),
        along_paths(inputs['C']),
        D=inputs['D'],
        delta_bias=inputs['delta_bias'],
        delta_softplus=True)
    composed = cross_merge(y.reshape(batch, 4, dim, height, width))
    torch.testing.assert_close(out, composed.reshape(out.shape))


def test_cross_selective_scan_autocast_bf16_finite():
    inputs = make_inputs(1, 4, 2, 6, 6, True, True)
    inputs = {k: v.float().requires_grad_() for k, v in inputs.items()}
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = cross_selective_scan(
            **dict(inputs, u=inputs['u'].bfloat16()), delta_softplus=True)
    assert out.dtype == torch.bfloat16 and out.isfinite().all()
    out.float().sum().backward()
    assert all(t.grad.isfinite().all() for t in inputs.values())


@pytest.mark.parametrize('name,value,message', [
    ('u', torch.randn(2, 3, 4), 'u must have shape'),
    ('delta', torch.randn(2, 3, 3, 4, 5), 'delta must have shape'),
    ('A', torch.randn(3, 2), 'A must have shape'),
    ('B', torch.randn(2, 4, 3, 4, 5), 'B must have shape'),
    ('C', torch.randn(2, 4, 2, 5, 4), 'C must have shape'),
    ('D', torch.randn(3), 'D must have shape'),
    ('delta_bias', torch.randn(12, 1), 'delta_bias must have shape'),
])
def test_cross_selective_scan_bad_arguments(name, value, message):
    inputs = make_inputs(2, 3, 2, 4, 5, True, True)
    inputs[name] = value.to(F64)
    with pytest.raises(ValueError, match=message):
        cross_selective_scan(**inputs)


def test_cross_scan_and_merge_bad_shapes():
    with pytest.raises(ValueError, match=r'x must have shape \(B, C, H, W\)'):
        cross_scan(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r'y must have shape \(B, 4, C, H'):
        cross_merge(torch.randn(2, 3, 3, 4, 4))
