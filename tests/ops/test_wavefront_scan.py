"""Tests of mmssm/ops/wavefront_scan.py against the naive reference."""
import math
from typing import Dict, Optional

import pytest
import torch
from torch import Tensor

from mmssm.ops import wavefront_scan_2d
from mmssm.ops.reference import wavefront_scan_2d_reference

F64 = torch.float64


def make_inputs(batch: int, height: int, width: int, channels: int,
                state_size: int, with_d: bool,
                with_bias: bool) -> Dict[str, Optional[Tensor]]:
    grid = (batch, height, width)
    return dict(
        x=torch.randn(*grid, channels, dtype=F64),
        delta_t=torch.randn(*grid, channels, dtype=F64),
        delta_l=torch.randn(*grid, channels, dtype=F64),
        A_t=-torch.rand(channels, state_size, dtype=F64) * 2 - 0.1,
        A_l=-torch.rand(channels, state_size, dtype=F64) * 2 - 0.1,
        B_t=torch.randn(*grid, state_size, dtype=F64),
        B_l=torch.randn(*grid, state_size, dtype=F64),
        C=torch.randn(*grid, state_size, dtype=F64),
        D=torch.randn(channels, dtype=F64) if with_d else None,
        delta_bias_t=torch.randn(channels, dtype=F64) if with_bias else None,
        delta_bias_l=torch.randn(channels, dtype=F64) if with_bias else None)


@pytest.mark.parametrize('origin', ['tl', 'br'])
@pytest.mark.parametrize('height,width,with_d,with_bias,softplus',
                         [(3, 4, True, True, True), (1, 5, False, True, True),
                          (5, 1, True, False, True), (1, 1, True, True, True),
                          (4, 35, True, True, False)])
def test_matches_reference_outputs_and_gradients(origin, height, width,
                                                 with_d, with_bias, softplus):
    inputs = make_inputs(2, height, width, 3, 2, with_d, with_bias)
    if not softplus:
        for name in ('delta_t', 'delta_l'):
            inputs[name] = inputs[name].abs() + 0.05
    leaves = {
        k: v.requires_grad_()
        for k, v in inputs.items() if v is not None
    }
    out = wavefront_scan_2d(**inputs, delta_softplus=softplus, origin=origin)
    expected = wavefront_scan_2d_reference(
        **inputs, delta_softplus=softplus, origin=origin)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    weight = torch.randn_like(out)
    # On a 1 x W or H x 1 grid one path is unused: its gradients are zero.
    grads = torch.autograd.grad((out * weight).sum(),
                                list(leaves.values()),
                                materialize_grads=True)
    grads_ref = torch.autograd.grad((expected * weight).sum(),
                                    list(leaves.values()),
                                    materialize_grads=True)
    for name, grad, grad_ref in zip(leaves, grads, grads_ref):
        torch.testing.assert_close(
            grad, grad_ref, rtol=1e-9, atol=1e-9, msg=f'gradient of {name}')


def hand_inputs() -> Dict[str, Tensor]:
    """2x2 grid, E = N = 1: a_L = 1/2, a_T = 1/4, u_L = x, u_T = 2x."""
    ones = torch.ones(1, 2, 2, 1, dtype=F64)
    return dict(
        x=torch.tensor([[[[1.0], [2.0]], [[3.0], [4.0]]]], dtype=F64),
        delta_t=ones,
        delta_l=ones,
        A_t=torch.tensor([[-math.log(4.0)]], dtype=F64),
        A_l=torch.tensor([[-math.log(2.0)]], dtype=F64),
        B_t=2 * ones,
        B_l=ones,
        C=ones,
        D=torch.tensor([0.5], dtype=F64))


def test_hand_computed_two_by_two_top_left():
    # h00 = u_L = 1; h01 = 0.5*1 + 2 = 2.5; h10 = 0.25*1 + 6 = 6.25;
    # h11 = 0.5*(0.5*6.25 + 4 + 0.25*2.5 + 8) = 7.875; y = h + 0.5 x.
    out = wavefront_scan_2d(**hand_inputs(), origin='tl')
    expected = torch.tensor([[[[1.5], [3.5]], [[7.75], [9.875]]]], dtype=F64)
    torch.testing.assert_close(out, expected)


def test_hand_computed_two_by_two_bottom_right():
    # h11 = u_L = 4; h10 = 0.5*4 + 3 = 5; h01 = 0.25*4 + 4 = 5;
    # h00 = 0.5*(0.5*5 + 1 + 0.25*5 + 2) = 3.375; y = h + 0.5 x.
    out = wavefront_scan_2d(**hand_inputs(), origin='br')
    expected = torch.tensor([[[[3.875], [6.0]], [[6.5], [6.0]]]], dtype=F64)
    torch.testing.assert_close(out, expected)


def test_bottom_right_equals_flipped_top_left():
    inputs = make_inputs(2, 4, 6, 3, 2, True, True)
    flipped = {
        k: v.flip(1, 2) if v is not None and v.dim() == 4 else v
        for k, v in inputs.items()
    }
    out = wavefront_scan_2d(**inputs, delta_softplus=True, origin='br')
    expected = wavefront_scan_2d(
        **flipped, delta_softplus=True, origin='tl').flip(1, 2)
    torch.testing.assert_close(out, expected)


def test_gradcheck_tiny():
    inputs = make_inputs(1, 2, 2, 1, 1, True, True)
    names = list(inputs)
    tensors = tuple(inputs[k].requires_grad_() for k in names)

    def function(*args: Tensor) -> Tensor:
        return wavefront_scan_2d(
            **dict(zip(names, args)), delta_softplus=True, origin='br')

    assert torch.autograd.gradcheck(function, tensors)


def test_autocast_bf16_is_finite():
    inputs = make_inputs(1, 6, 7, 4, 3, True, True)
    inputs = {k: v.float().requires_grad_() for k, v in inputs.items()}
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = wavefront_scan_2d(
            **dict(inputs, x=inputs['x'].bfloat16()), delta_softplus=True)
    assert out.dtype == torch.bfloat16 and out.isfinite().all()
    out.float().sum().backward()
    assert all(t.grad.isfinite().all() for t in inputs.values())


def test_large_steps_are_finite():
    inputs = make_inputs(1, 6, 40, 4, 3, True, False)
    inputs = {
        k: v.float()
        for k, v in inputs.items() if v is not None
    }
    # Steps ~20 with A ~ -16: every gate underflows to exp(-320) = 0.
    for name in ('delta_t', 'delta_l'):
        inputs[name] = 20 + torch.rand_like(inputs[name])
    for name in ('A_t', 'A_l'):
        inputs[name] = -16 * torch.rand_like(inputs[name]) - 0.01
    leaves = [t.requires_grad_() for t in inputs.values()]
    out = wavefront_scan_2d(**inputs)
    out.sum().backward()
    assert out.isfinite().all()
    assert all(t.grad.isfinite().all() for t in leaves)
    with torch.no_grad():
        expected = wavefront_scan_2d_reference(
            **{k: v.double()
               for k, v in inputs.items()})
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name,value,message', [
    ('x', torch.randn(2, 3, 4), 'x must have shape'),
    ('delta_l', torch.randn(2, 3, 4, 4), 'delta_l must have shape'),
    ('A_l', torch.randn(3, 3), 'A_l must have shape'),
    ('B_t', torch.randn(2, 4, 3, 2), 'B_t must have shape'),
    ('C', torch.randn(2, 3, 4, 3), 'C must have shape'),
    ('D', torch.randn(2), 'D must have shape'),
    ('delta_bias_t', torch.randn(3, 1), 'delta_bias_t must have shape'),
])
def test_bad_arguments_raise_clear_errors(name, value, message):
    inputs = make_inputs(2, 3, 4, 3, 2, True, True)
    inputs[name] = value.to(F64)
    with pytest.raises(ValueError, match=message):
        wavefront_scan_2d(**inputs)


def test_bad_origin():
    with pytest.raises(ValueError, match="origin must be one of"):
        wavefront_scan_2d(
            **make_inputs(1, 2, 2, 1, 1, False, False), origin='tr')
