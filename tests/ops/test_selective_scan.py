"""Tests of mmssm/ops/selective_scan.py against the naive reference."""
import math
from typing import Dict, Optional, Tuple

import pytest
import torch
from torch import Tensor

from mmssm.ops import linear_recurrence, selective_scan
from mmssm.ops.reference import selective_scan_reference

F64 = torch.float64


def make_inputs(batch: int, dim: int, state_size: int, length: int,
                layout_b: str, layout_c: str, with_d: bool, with_z: bool,
                with_bias: bool) -> Dict[str, Optional[Tensor]]:
    """Fresh random float64 inputs.

    B/C layouts: 'var' (batch, N, L), 'G<k>' (batch, k, N, L), 'const'
    (dim, N).
    """

    def matrix(layout: str) -> Tensor:
        if layout == 'var':
            return torch.randn(batch, state_size, length, dtype=F64)
        if layout == 'const':
            return torch.randn(dim, state_size, dtype=F64)
        groups = int(layout[1:])
        return torch.randn(batch, groups, state_size, length, dtype=F64)

    return dict(
        u=torch.randn(batch, dim, length, dtype=F64),
        delta=torch.randn(batch, dim, length, dtype=F64),
        A=-torch.rand(dim, state_size, dtype=F64) * 2 - 0.1,
        B=matrix(layout_b),
        C=matrix(layout_c),
        D=torch.randn(dim, dtype=F64) if with_d else None,
        z=torch.randn(batch, dim, length, dtype=F64) if with_z else None,
        delta_bias=torch.randn(dim, dtype=F64) if with_bias else None)


CASES = [
    # length, B layout, C layout, D, z, delta_bias, softplus
    (1, 'var', 'var', True, True, True, True),
    (2, 'const', 'var', False, False, False, False),
    (7, 'G2', 'G2', True, False, True, True),
    (31, 'G4', 'G1', False, True, False, True),
    (37, 'var', 'const', True, True, False, False),
    (67, 'G1', 'G4', True, False, True, True),
    (40, 'const', 'const', False, False, True, True),
]


def assert_same_gradients(outputs, outputs_ref, leaves) -> None:
    """Every leaf gets the same gradient (float64, 1e-9) through ``outputs``
    as through ``outputs_ref`` for one random weighting of the outputs."""
    weights = [torch.randn_like(out) for out in outputs]

    def gradients(values):
        loss = sum((value * weight).sum()
                   for value, weight in zip(values, weights))
        return torch.autograd.grad(
            loss, list(leaves.values()), materialize_grads=True)

    for name, grad, grad_ref in zip(leaves, gradients(outputs),
                                    gradients(outputs_ref)):
        torch.testing.assert_close(
            grad, grad_ref, rtol=1e-9, atol=1e-9, msg=f'gradient of {name}')


@pytest.mark.parametrize('length,layout_b,layout_c,with_d,with_z,with_bias,'
                         'softplus', CASES)
def test_matches_reference_outputs_and_gradients(length, layout_b, layout_c,
                                                 with_d, with_z, with_bias,
                                                 softplus):
    inputs = make_inputs(2, 4, 3, length, layout_b, layout_c, with_d, with_z,
                         with_bias)
    if not softplus:
        # Without softplus, keep step sizes positive like a real model.
        inputs['delta'] = inputs['delta'].abs() + 0.05
    leaves = {
        k: v.requires_grad_()
        for k, v in inputs.items() if v is not None
    }
    y, last = selective_scan(
        **inputs, delta_softplus=softplus, return_last_state=True)
    y_ref, last_ref = selective_scan_reference(
        **inputs, delta_softplus=softplus, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    # With L = 1 the decay never acts: A's gradient is zero.
    assert_same_gradients((y, last), (y_ref, last_ref), leaves)


def test_gradcheck_tiny():
    inputs = make_inputs(1, 2, 2, 5, 'G2', 'var', True, True, True)
    names = list(inputs)
    tensors = tuple(inputs[k].requires_grad_() for k in names)

    def function(*args: Tensor) -> Tensor:
        return selective_scan(**dict(zip(names, args)), delta_softplus=True)

    assert torch.autograd.gradcheck(function, tensors)


def hand_inputs() -> Dict[str, Tensor]:
    """Length-3 case with decay exp(1 * -ln 2) = 1/2 at every step."""
    return dict(
        u=torch.tensor([[[1.0, 2.0, -1.0]]], dtype=F64),
        delta=torch.ones(1, 1, 3, dtype=F64),
        A=torch.tensor([[-math.log(2.0)]], dtype=F64),
        B=torch.tensor([[[2.0, 1.0, 1.0]]], dtype=F64),
        C=torch.tensor([[[1.0, 2.0, 3.0]]], dtype=F64),
        D=torch.tensor([0.5], dtype=F64))


def test_hand_computed_length_three():
    # h0 = 2*1 = 2, y0 = 1*2 + 0.5*1 = 2.5
    # h1 = 0.5*2 + 1*2 = 3, y1 = 2*3 + 0.5*2 = 7
    # h2 = 0.5*3 + 1*(-1) = 0.5, y2 = 3*0.5 + 0.5*(-1) = 1
    y, last = selective_scan(**hand_inputs(), return_last_state=True)
    torch.testing.assert_close(
        y, torch.tensor([[[2.5, 7.0, 1.0]]], dtype=F64))
    torch.testing.assert_close(last, torch.tensor([[[0.5]]], dtype=F64))


def test_hand_computed_bias_softplus_and_gate():
    inputs = hand_inputs()
    # softplus(0 + log(e - 1)) = 1 reproduces the unit step size.
    inputs['delta'] = torch.zeros(1, 1, 3, dtype=F64)
    inputs['delta_bias'] = torch.tensor([math.log(math.e - 1)], dtype=F64)
    inputs['z'] = torch.tensor([[[0.0, 1.0, -2.0]]], dtype=F64)
    y = selective_scan(**inputs, delta_softplus=True)
    silu = [0.0, 1 / (1 + math.exp(-1)), -2 / (1 + math.exp(2))]
    expected = torch.tensor([[[2.5 * silu[0], 7.0 * silu[1], 1.0 * silu[2]]]],
                            dtype=F64)
    torch.testing.assert_close(y, expected)


def test_output_dtypes():
    inputs = make_inputs(1, 2, 2, 4, 'var', 'var', True, False, False)
    inputs = {k: v.float() for k, v in inputs.items() if v is not None}
    y, last = selective_scan(**inputs, return_last_state=True)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    half_u = dict(inputs, u=inputs['u'].bfloat16())
    y, last = selective_scan(**half_u, return_last_state=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32


def test_autocast_bf16_is_finite_and_close():
    inputs = make_inputs(2, 8, 4, 50, 'var', 'var', True, True, True)
    inputs = {k: v.float().requires_grad_() for k, v in inputs.items()}
    expected = selective_scan(**inputs, delta_softplus=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        u = torch.nn.functional.linear(inputs['u'].transpose(1, 2),
                                       torch.eye(8)).transpose(1, 2)
        assert u.dtype == torch.bfloat16
        y = selective_scan(**dict(inputs, u=u), delta_softplus=True)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(t.grad.isfinite().all() for t in inputs.values())
    torch.testing.assert_close(y.float(), expected, rtol=0.05, atol=0.05)


def test_large_steps_long_sequence_are_finite_and_correct():
    length = 4096
    # Steps alternate between ~20 (decay exp(-320)) and tiny ones.
    delta = torch.where(
        torch.rand(1, 2, length) < 0.5, torch.full((1, 2, length), 20.0),
        torch.full((1, 2, length), 1e-4))
    inputs = dict(
        u=torch.randn(1, 2, length),
        delta=delta,
        A=-16 * torch.rand(2, 4) - 0.01,
        B=torch.randn(1, 4, length),
        C=torch.randn(1, 4, length))
    leaves = [v.requires_grad_() for v in inputs.values()]
    y = selective_scan(**inputs)
    y.sum().backward()
    assert y.isfinite().all()
    assert all(t.grad.isfinite().all() for t in leaves)
    with torch.no_grad():
        y_ref = selective_scan_reference(
            **{k: v.double()
               for k, v in inputs.items()})
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('length', [1, 2, 11, 32, 45])
def test_linear_recurrence_matches_loop(length, reverse):
    log_decay = -torch.rand(3, length, dtype=F64) * 3
    log_decay[0, length // 2] = 0.3  # a growing step is computed exactly too
    inputs = torch.randn(3, length, dtype=F64)
    initial = torch.randn(3, dtype=F64)
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for start in (None, initial):
        state = torch.zeros(3, dtype=F64) if start is None else start
        expected = torch.empty(3, length, dtype=F64)
        for t in steps:
            state = log_decay[:, t].exp() * state + inputs[:, t]
            expected[:, t] = state
        torch.testing.assert_close(
            linear_recurrence(log_decay, inputs, start, reverse=reverse),
            expected)


def test_linear_recurrence_bad_arguments():
    with pytest.raises(ValueError, match='same shape'):
        linear_recurrence(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError,
                       match=r'initial_state must have shape \(2,\)'):
        linear_recurrence(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


def bad_argument_cases() -> Tuple:
    good = make_inputs(2, 4, 3, 5, 'var', 'var', False, False, False)
    return (
        (dict(good, u=good['u'][0]), 'u must have shape'),
        (dict(good, delta=good['delta'][:, :, :4]), 'delta must have shape'),
        (dict(good, A=good['A'][:3]), 'A must have shape'),
        (dict(good, B=good['B'][:, :, :4]), 'B must have shape'),
        (dict(good, C=torch.randn(2, 3, 3, 5, dtype=F64)), 'C has G=3'),
        (dict(good, C=torch.randn(4, 2, dtype=F64)), 'C must have shape'),
        (dict(good, D=torch.randn(3, dtype=F64)), 'D must have shape'),
        (dict(good, z=good['u'][:1]), 'z must have shape'),
        (dict(good, delta_bias=torch.randn(4, 1, dtype=F64)),
         'delta_bias must have shape'),
        (dict(good, A=good['A'].to('meta')), 'A is on meta'),
    )


@pytest.mark.parametrize('inputs,message', bad_argument_cases())
def test_bad_arguments_raise_clear_errors(inputs, message):
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)


def test_integer_input_is_rejected():
    inputs = make_inputs(1, 2, 2, 3, 'var', 'var', False, False, False)
    with pytest.raises(TypeError, match='delta must be a real floating'):
        selective_scan(**dict(inputs, delta=inputs['delta'].long()))


def flipped(inputs: Dict[str, Optional[Tensor]]) -> Dict[str, Optional[Tensor]]:
    """Every per-position input reversed along L; weights unchanged."""
    per_position = ('u', 'delta', 'z')
    result = {}
    for name, value in inputs.items():
        is_sequence = value is not None and (
            name in per_position or (name in ('B', 'C') and value.dim() > 2))
        result[name] = value.flip(-1) if is_sequence else value
    return result


@pytest.mark.parametrize('length,layout_b,layout_c,with_z', [
    (1, 'var', 'var', True),
    (6, 'G2', 'const', False),
    (13, 'var', 'G4', True),
])
def test_reverse_equals_scan_of_flipped_inputs(length, layout_b, layout_c,
                                               with_z):
    inputs = make_inputs(2, 4, 3, length, layout_b, layout_c, True, with_z,
                         True)
    leaves = {
        k: v.requires_grad_()
        for k, v in inputs.items() if v is not None
    }
    y, last = selective_scan(
        **inputs, delta_softplus=True, return_last_state=True, reverse=True)
    y_ref, last_ref = selective_scan_reference(
        **flipped(inputs), delta_softplus=True, return_last_state=True)
    y_ref = y_ref.flip(-1)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    # The reference's own reverse walk agrees with its flipped forward walk.
    y_walk, last_walk = selective_scan_reference(
        **inputs, delta_softplus=True, return_last_state=True, reverse=True)
    torch.testing.assert_close(y_walk, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last_walk, last_ref, rtol=1e-12, atol=1e-12)
    assert_same_gradients((y, last), (y_ref, last_ref), leaves)


def test_reverse_differs_from_forward():
    # Guards against a reverse flag that is silently ignored.
    inputs = make_inputs(1, 2, 2, 9, 'var', 'var', False, False, False)
    forward = selective_scan(**inputs)
    backward = selective_scan(**inputs, reverse=True)
    assert (forward - backward).abs().max() > 1e-3
